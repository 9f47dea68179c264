"""Simulated full-scale data with the real Cdiscount category skew.

    python bench/simulate.py bson --size-gb 3          # bench/data/scale.bson
    python bench/simulate.py vectors --n 1000000       # bench/data/vectors-1000000/
    python bench/simulate.py catalogue --n 7069896     # bench/data/catalogue-7069896/

``category_image_counts_level3.csv`` holds the real full-train picture count of each of
the 5,263 level-3 categories (12,371,293 pictures). Both generators draw categories
with those weights:

- ``bson``: real documents (the 82-product Kaggle sample and the 1,000-product built-in
  sample) replicated with new ids and a category drawn from the real skew: real JPEGs,
  real document sizes, Cdiscount's exact format, for partitioned scan and embedding runs.
- ``vectors``: 1280-d vectors shaped like MobileNetV2 features (non-negative, the
  eigenvalue spectrum of real MobileNetV2 vectors of the two samples), one Gaussian
  cluster per category sized by the real skew, so IVF list imbalance follows it;
  written as a sharded vector store (``helpers.vectors.sharded``), the layout Dask embedding writes.
- ``catalogue``: a finished catalogue folder (what ``build_catalogue`` writes) of N products,
  each in a category drawn from the real skew with its real names, pointing at a document
  of the built-in sample (its offset, length and pictures): the apps serve it whole, real
  pictures included, at the full catalogue's size.

Everything goes under bench/data/ (git-ignored); delete multi-GB files after use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import bson
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from helpers.catalogue.protocol import ParquetCatalogue
from helpers.core import artifacts
from helpers.core.paths import CDISCOUNT_DIR, SAMPLE_BSON
from helpers.ingest import scan
from helpers.ingest.bson_store import iter_records
from helpers.ingest.schema import catalogue_fingerprint
from helpers.vectors.sharded import SHARDS, ShardedVectorStore, write_manifest
from helpers.vectors.store import VectorWriter

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def category_skew(cdiscount_dir: Path = CDISCOUNT_DIR) -> pd.DataFrame:
    """``category_id``, ``images`` (real full-train count), ``p`` (share of pictures)."""
    counts = pd.read_csv(cdiscount_dir / "category_image_counts_level3.csv")
    names = pd.read_csv(cdiscount_dir / "category_names.csv")
    key = "category_level3"
    counts[key] = counts[key].str.strip().str.upper()
    names[key] = names[key].str.strip().str.upper()
    # A few level-3 names repeat under other level-1/2 names: the first id takes the count.
    df = counts.merge(names.drop_duplicates(key)[[key, "category_id"]], on=key, how="inner")
    df = df[["category_id", "images"]].reset_index(drop=True)
    df["p"] = df["images"] / df["images"].sum()
    return df


def imbalance(sizes: np.ndarray) -> float:
    """FAISS's imbalance factor: n * sum(size^2) / total^2 (1 = perfectly even lists)."""
    sizes = np.asarray(sizes, np.float64)
    return float(len(sizes) * (sizes**2).sum() / sizes.sum() ** 2)


# ---------------------------------------------------------------- BSON


def source_documents() -> list[dict]:
    docs = [r.doc for r in iter_records(CDISCOUNT_DIR / "train_example.bson")]
    return docs + [r.doc for r in iter_records(SAMPLE_BSON)]


def make_bson(dst: Path, size_gb: float | None = None, seed: int = 0,
              kaggle_only: bool = False, n_pictures: int | None = None) -> Path:
    """A Cdiscount-format file of ``size_gb`` GB, or of ``n_pictures`` pictures, from real
    documents (an existing file of that size is kept).

    kaggle_only: the 82 Kaggle documents only (real Cdiscount photos: what embedding
    speed depends on), not the built-in sample's small Fashion-MNIST JPEGs too.
    """
    if (size_gb is None) == (n_pictures is None):
        raise ValueError("give size_gb or n_pictures")
    done = dst.with_suffix(".json")
    want = {"size_gb": size_gb, "n_pictures": n_pictures, "seed": seed,
            "kaggle_only": kaggle_only}
    if dst.exists() and done.exists() and json.loads(done.read_text()) == want:
        return dst
    docs, skew = source_documents(), category_skew()
    docs = docs[:82] if kaggle_only else docs
    rng = np.random.default_rng(seed)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    written, pictures, next_id = 0, 0, 10_000_000

    def more() -> bool:
        return written < size_gb * 1e9 if n_pictures is None else pictures < n_pictures

    with open(tmp, "wb", buffering=16 << 20) as f:
        while more():
            order = rng.permutation(len(docs))
            cats = rng.choice(skew["category_id"].to_numpy(), len(docs), p=skew["p"].to_numpy())
            for i, c in zip(order, cats, strict=True):
                raw = bson.encode({"_id": next_id, "imgs": docs[i]["imgs"],
                                   "category_id": int(c)})
                f.write(raw)
                written += len(raw)
                pictures += len(docs[i]["imgs"])
                next_id += 1
                if not more():
                    break
    tmp.replace(dst)
    done.write_text(json.dumps(want))
    return dst


# ---------------------------------------------------------------- catalogue


def make_catalogue(n: int, folder: Path, seed: int = 0) -> Path:
    """A finished catalogue folder of ``n`` products (kept if one of that size is there).

    Ids increase with gaps of 1-4 (train.bson's ids increase too); categories follow the
    real skew, with their names from ``category_names.csv``; product ``i`` points at
    document ``i mod 1000`` of the built-in sample, so its pictures are real JPEGs.
    """
    meta_path = folder / scan.META
    if meta_path.is_file() and scan.load_meta(folder).get("summary", {}).get(
            "products_kept") == n:
        return folder
    rng = np.random.default_rng(seed)
    skew = category_skew()
    names = pd.read_csv(CDISCOUNT_DIR / "category_names.csv").drop_duplicates("category_id")
    skew = skew.merge(names, on="category_id", how="left")
    which = rng.choice(len(skew), n, p=skew["p"].to_numpy())
    docs = np.array([(r.offset, r.length, len(r.doc["imgs"]))
                     for r in iter_records(SAMPLE_BSON)], np.int64)
    offset, length, n_images = docs[np.arange(n) % len(docs)].T
    pids = 1_000_000 + np.cumsum(rng.integers(1, 5, n))
    empty = pa.ListArray.from_arrays(np.zeros(n + 1, np.int32), pa.array([], pa.int16()))
    columns = {
        "product_id": pa.array(pids, pa.int64()),
        "category_id": pa.array(skew["category_id"].to_numpy()[which], pa.int64()),
        "n_images": pa.array(n_images, pa.int16()),
        "bad_images": empty,
        "offset": pa.array(offset, pa.int64()),
        "length": pa.array(length, pa.int32()),
    }
    for level in scan.LEVELS:  # one string a product, as the category join writes them
        dictionary = pa.array(skew[level].astype(object).to_numpy(), pa.string())
        columns[level] = pa.DictionaryArray.from_arrays(
            pa.array(which.astype(np.int32)), dictionary).cast(pa.string())
    table = pa.table(columns)
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write(folder / scan.CATALOGUE, lambda t: pq.write_table(table, t))
    source = {"path": str(SAMPLE_BSON), "simulated": True}
    params = {"simulated_products": n, "seed": seed}
    manifest = artifacts.make_manifest("catalogue", {"source": source, "params": params})
    manifest["fingerprint"] = catalogue_fingerprint(
        pd.DataFrame({"product_id": pids, "offset": offset}))
    artifacts.write_manifest(folder, manifest)
    artifacts.write_json(meta_path, {
        "format_version": scan.FORMAT_VERSION, "source": source, "params": params,
        "summary": {"products_kept": n, "categories": int(len(np.unique(which)))}})
    return folder


# ---------------------------------------------------------------- vectors


def real_spectrum(image_size: int = 180) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, principal axes and variances of real MobileNetV2 vectors of both samples."""
    from helpers.ingest import scan as cat
    from helpers.models import load_extractor
    from helpers.vectors.embed import embed_catalogue

    cache = DATA / "spectrum.npz"
    if cache.exists():
        z = np.load(cache)
        return z["mean"], z["axes"], z["var"]
    ex = load_extractor("mobilenet_v2", "onnx")
    vecs = []
    for name, path in (("real", CDISCOUNT_DIR / "train_example.bson"), ("sample", SAMPLE_BSON)):
        out = DATA / "spectrum" / name
        cat.build_catalogue(path, out / "catalogue", progress=False)
        store = embed_catalogue(ParquetCatalogue(cat.load_catalogue(out / "catalogue")), path, ex,
                                out / "vectors", image_size=image_size, level="image",
                                progress=False)
        vecs.append(np.asarray(store.vectors))
    x = np.concatenate(vecs).astype(np.float64)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / (len(x) - 1)
    np.savez(cache, mean=mean, axes=vt, var=var)
    return mean, vt, var


class VectorSimulator:
    """Draws 1280-d vectors shaped like MobileNetV2 features for given categories: one
    Gaussian cluster per level-3 category (the real skew's), the real eigen-spectrum.

    within: share of the real variance that lies inside a category (the rest separates
    category centres). A category id outside the real list gets a centre of its own.
    """

    def __init__(self, within: float = 0.5, seed: int = 0) -> None:
        self.skew = category_skew()
        self.rng = np.random.default_rng(seed)
        mean, axes, var = real_spectrum()
        r = len(var)
        self.mean, self.r = mean.astype(np.float32), r
        self.centres = ((self.rng.standard_normal((len(self.skew), r))
                         * np.sqrt(var * (1 - within))) @ axes).astype(np.float32)
        self.spread = (np.sqrt(var * within)[:, None] * axes).astype(np.float32)
        # Variance the real sample cannot resolve (rank <= its size): a small isotropic floor.
        self.floor = np.float32(np.sqrt(var[-1]))
        self.ids = self.skew["category_id"].to_numpy(np.int64)
        self.order = np.argsort(self.ids)

    def draw_categories(self, n: int) -> np.ndarray:
        """``n`` category ids drawn with the real picture shares."""
        return self.ids[self.rng.choice(len(self.ids), n, p=self.skew["p"].to_numpy())]

    def vectors(self, category_ids: np.ndarray) -> np.ndarray:
        """One vector per category id, float32 [n, 1280]."""
        c = np.asarray(category_ids, np.int64)
        pos = np.searchsorted(self.ids, c, sorter=self.order).clip(0, len(self.ids) - 1)
        known = self.ids[self.order[pos]] == c
        k = np.where(known, self.order[pos], np.abs(c) % len(self.ids))
        x = self.rng.standard_normal((len(c), self.r), dtype=np.float32) @ self.spread
        x += self.mean + self.centres[k]
        x += self.floor * self.rng.standard_normal(x.shape, dtype=np.float32)
        np.maximum(x, 0, out=x)  # ReLU6 features: never negative
        return x


def make_vectors(n: int, folder: Path, shards: int = 8, within: float = 0.5, seed: int = 0,
                 chunk: int = 65536) -> tuple[ShardedVectorStore, np.ndarray]:
    """``n`` simulated image vectors as a sharded store; returns it and their categories.

    Product ids are the row numbers.
    """
    sim = VectorSimulator(within, seed)
    cats = sim.draw_categories(n)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    metas = []
    for s in range(shards):
        d = folder / SHARDS / f"part-{s:05d}"
        w = VectorWriter(d, 1280, {"model": "simulated-mobilenet_v2", "level": "image"},
                         resume=False)
        for a in range(bounds[s], bounds[s + 1], chunk):
            b = min(a + chunk, bounds[s + 1])
            w.append(sim.vectors(cats[a:b]), np.arange(a, b), np.full(b - a, -1), b)
        w.close()
        metas.append({"path": f"{SHARDS}/part-{s:05d}", "count": int(bounds[s + 1] - bounds[s]),
                      "range": [int(bounds[s]), int(bounds[s + 1])]})
    write_manifest(folder, dim=1280, made_by={"model": "simulated-mobilenet_v2",
                                              "level": "image", "within": within, "seed": seed},
                   shards=metas)
    np.save(folder / "categories.npy", cats)
    return ShardedVectorStore(folder), cats


def simulate_embedding(catalogue_dir: Path, bson_path: Path, out_dir: Path,
                       extractor_meta: dict, *, image_size: int, level: str,
                       workers: int | None = None, seed: int = 0) -> int:
    """Write, in ``out_dir``, the shards a Dask embedding of this catalogue would write
    (helpers.scale.distributed: same byte ranges, ids, rows and settings), filled with
    simulated vectors of each picture's category instead of the model's. A later
    ``embed_catalogue`` of the same settings finds every shard finished and only merges
    them, so the notebooks' commands run unchanged. Every shard and the merged store
    say ``"simulated": "bench/simulate.py"`` in their ``made_by``. Returns the vectors
    written."""
    from helpers.catalogue.protocol import ParquetCatalogue
    from helpers.core import artifacts
    from helpers.ingest import scan as cat
    from helpers.ingest.schema import usable_counts
    from helpers.scale.distributed import PLAN, shard_plan, shard_rows

    settings, counts = shard_plan(catalogue_dir, bson_path, image_size, level, workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(out_dir / PLAN, settings)
    sim, total = VectorSimulator(seed=seed), 0
    for i, (a, b) in enumerate(settings["ranges"]):
        if not counts[i]:
            continue
        rows = shard_rows(catalogue_dir / cat.CATALOGUE, a, b)
        catalogue = ParquetCatalogue(rows)
        made_by = {**extractor_meta, "image_size": image_size, "level": level,
                   "source": str(Path(bson_path).resolve()), "catalogue_rows": len(rows),
                   "catalogue_sha256": catalogue.fingerprint,
                   "simulated": "bench/simulate.py"}
        w = VectorWriter(out_dir / SHARDS / f"part-{i:05d}", 1280, made_by, resume=False)
        pids = rows["product_id"].to_numpy(np.int64)
        if level == "product":
            x, index = sim.vectors(rows["category_id"].to_numpy()), np.full(len(rows), -1)
        else:
            n = usable_counts(rows)
            pids = np.repeat(pids, n)
            bad = rows["bad_images"].map(lambda v: set(v) if v is not None else set())
            index = np.array([j for m, skip in zip(rows["n_images"], bad, strict=True)
                              for j in range(m) if j not in skip], np.int64)
            x = sim.vectors(np.repeat(rows["category_id"].to_numpy(), n))
        w.append(x, pids, index, len(rows), images=len(x), failed_images=0)
        w.close(seconds=0)
        total += len(x)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("bson")
    b.add_argument("--size-gb", type=float, default=3.0)
    b.add_argument("--out", type=Path, default=DATA / "scale.bson")
    v = sub.add_parser("vectors")
    v.add_argument("--n", type=int, default=1_000_000)
    v.add_argument("--out", type=Path)
    c = sub.add_parser("catalogue")
    c.add_argument("--n", type=int, default=7_069_896)
    c.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.what == "bson":
        print(make_bson(args.out, args.size_gb))
    elif args.what == "catalogue":
        print(make_catalogue(args.n, args.out or DATA / f"catalogue-{args.n}"))
    else:
        store, _ = make_vectors(args.n, args.out or DATA / f"vectors-{args.n}")
        print(store)


if __name__ == "__main__":
    main()
