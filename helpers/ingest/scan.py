"""Build the product catalogue from a Cdiscount BSON dump: the pass and its entry points.

One streaming pass writes, under ``out_dir``:

- ``catalogue.parquet``: one row per product (id, category id and its three
  level names, its pictures -- ``n_images`` counts all, ``bad_images`` lists the
  indexes of those left out -- byte offset and length of the document);
- ``rejects.csv``: every document, product or image left out, with its offset,
  product id, reason code and detail;
- ``catalogue.json``: what made it (source file, parameters) and the counts, the exact
  duplicate pictures' among them (``summary.duplicates``);
- ``duplicates.parquet``: the groups of pictures with the same bytes in more than one
  product (`helpers.ingest.duplicates`, from the hashes the scan takes of every picture).

The pass checkpoints every ``checkpoint_every`` documents to ``out_dir/_work``;
a killed run called again resumes there and ends with the same catalogue.

Holds `build_catalogue` (one process per byte range -- or one Dask task, through a
`checkpoint.RangeScanner` -- then the ranges joined: duplicate ids, first wins, and the
category names), its parameters and summary, and the readers
of what it wrote (`load_catalogue`, `load_meta`, `load_rejects`). It is built from
`helpers.ingest.products` (per-document checks, reject reasons), `helpers.ingest.checkpoint`
(plan, ranges scanned resumably into part files), `helpers.ingest.categories`,
`helpers.ingest.export` (JPEGs), `helpers.ingest.duplicates` (exact duplicate pictures) and
`helpers.ingest.errors`; the public names of all but
checkpoint are re-exported here (``__all__``).
Imports pandas, pyarrow, `helpers.core.artifacts`, those rooms and bson_store, jpeg, schema;
nothing in helpers.ingest imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from helpers.core import artifacts
from helpers.ingest.bson_store import MAX_DOC, check_is_bson
from helpers.ingest.categories import LEVELS, categories_of, category_counts, load_categories
from helpers.ingest.checkpoint import RangeScanner, plan_run, read_parts, scan_range
from helpers.ingest.duplicates import DuplicateCounts, exact_duplicates
from helpers.ingest.errors import CatalogueError, NoProductsError
from helpers.ingest.export import export_jpegs, iter_images
from helpers.ingest.jpeg import MAX_SIDE
from helpers.ingest.products import MAX_IMAGES, REJECT_COLUMNS, SCHEMA
from helpers.ingest.schema import FORMAT_VERSION, catalogue_fingerprint, usable_counts

__all__ = [
    "CATALOGUE", "DUPLICATES", "FORMAT_VERSION", "LEVELS", "MAX_IMAGES", "META", "REBUILD",
    "REJECTS", "REJECT_COLUMNS", "SCHEMA", "WORK", "CatalogueError", "CatalogueSummary",
    "DuplicateCounts", "NoProductsError", "build_catalogue", "catalogue_params",
    "catalogue_settings", "categories_of", "category_counts", "check_format", "export_jpegs",
    "iter_images", "load_catalogue", "load_categories", "load_duplicates", "load_meta",
    "load_rejects", "require_products",
]

CATALOGUE = "catalogue.parquet"
REJECTS = "rejects.csv"
META = "catalogue.json"
DUPLICATES = "duplicates.parquet"
WORK = "_work"
# What rebuilds a catalogue (named when an old one is refused).
REBUILD = ("build_catalogue(...) again (it rebuilds an older format), or for a run's "
           "artifacts `make demo` / `python run_all.py --only 01`")


def require_products(summary: CatalogueSummary) -> None:
    """NoProductsError, saying plainly why, unless the catalogue has products (an empty
    file is a valid dump of zero products, but every later step needs one)."""
    if summary.products_kept > 0:
        return
    if summary.documents == 0:
        raise NoProductsError(f"{summary.source} holds no products: no BSON document in the "
                              "file (or in the skip/limit slice asked for)")
    why = ", ".join(f"{k} {v}" for k, v in sorted(summary.rejects_by_reason.items()))
    raise NoProductsError(f"{summary.source} holds no usable products: all "
                          f"{summary.documents:,} documents were rejected ({why}); "
                          "see rejects.csv")


@dataclass
class CatalogueSummary:
    """Counts of one build: ``documents == products_kept + products_rejected``."""

    source: str
    documents: int = 0
    products_kept: int = 0
    products_rejected: int = 0
    images_in: int = 0
    images_kept: int = 0
    bad_images: int = 0
    categories: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    bytes_read: int = 0
    duplicates: dict[str, int] | None = None  # DuplicateCounts; None: counted before them

    def __str__(self) -> str:
        lines = [
            f"source: {self.source}",
            f"documents read: {self.documents:,} = kept {self.products_kept:,}"
            f" + rejected {self.products_rejected:,}",
            f"images: {self.images_in:,} in products read, {self.images_kept:,} usable,"
            f" {self.bad_images:,} bad pictures",
            f"categories: {self.categories:,}",
        ]
        if self.rejects_by_reason:
            why = ", ".join(f"{k} {v}" for k, v in sorted(self.rejects_by_reason.items()))
            lines.append(f"rejects by reason: {why}")
        if self.duplicates is not None:
            lines.append(str(DuplicateCounts(**self.duplicates)))
        if self.seconds:
            mb = self.bytes_read / 1e6
            lines.append(
                f"time: {self.seconds:.1f} s ({mb / self.seconds:,.0f} MB/s,"
                f" {self.documents / self.seconds:,.0f} products/s)"
            )
        return "\n".join(lines)


def _source_id(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}


def catalogue_params(categories: str | os.PathLike | None = None, *, skip: int = 0,
                     limit: int | None = None, verify_images: str = "magic",
                     max_doc_bytes: int = MAX_DOC, max_image_side: int = MAX_SIDE) -> dict:
    """The parameters that make a catalogue what it is (with the source file's identity)."""
    params = {
        "skip": skip,
        "limit": limit,
        "verify_images": verify_images,
        "categories": str(Path(categories).resolve()) if categories else None,
    }
    # Limits join the parameters only when set: catalogues made before they existed
    # keep matching.
    if max_doc_bytes != MAX_DOC:
        params["max_doc_bytes"] = max_doc_bytes
    if max_image_side != MAX_SIDE:
        params["max_image_side"] = max_image_side
    return params


def catalogue_settings(bson_path: str | os.PathLike, categories: str | os.PathLike | None = None,
                       **params) -> dict:
    """What a catalogue's manifest records as its settings: source file + parameters."""
    return {"source": _source_id(Path(bson_path)), "params": catalogue_params(categories, **params)}


# A full disk (or quota, or file size limit) while writing.


@artifacts.disk_full_is_one_error(CatalogueError, "the catalogue", 1,
                                  "it resumes from its last checkpoint")
def build_catalogue(
    bson_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    categories: str | os.PathLike | None = None,
    *,
    skip: int = 0,
    limit: int | None = None,
    verify_images: str = "magic",
    workers: int | None = 1,
    checkpoint_every: int = 50_000,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    force: bool = False,
    max_doc_bytes: int = MAX_DOC,
    max_image_side: int = MAX_SIDE,
    scanner: RangeScanner | None = None,
) -> CatalogueSummary:
    """Scan ``bson_path`` and write the catalogue under ``out_dir``.

    skip, limit: take documents ``[skip, skip + limit)`` of the file.
    verify_images: ``"magic"`` (default) checks each picture's JPEG start/end
        markers, at disk speed; ``"decode"`` fully decodes every picture.
    workers: processes scanning byte ranges of the file in parallel (None: one per
        core). Whole files over 64 MB only; with skip/limit the scan is sequential.
        The catalogue is the same either way.
    checkpoint_every: documents between checkpoints (the unit of lost work).
    resume: continue an interrupted run found in ``out_dir`` (default True).
    stop_after: stop after this many checkpoints (per range), leaving the run to
        resume -- what a kill does; used by tests and demos of resuming.
    force: rebuild even if ``out_dir`` holds a finished catalogue of the same
        file and parameters (by default it is reused: no second 58 GB pass).
    max_doc_bytes: a document whose length prefix claims more is rejected
        (``document_too_large``) without being read; 16 MiB, BSON's own limit.
    max_image_side: a picture whose JPEG header declares more pixels a side is
        rejected (``image_too_large``) undecoded; 4096 (Cdiscount's are 180).
    scanner: runs the byte ranges elsewhere, cut as it says (``helpers.scale.distributed``:
        Dask tasks); ``workers`` is then unused. Checks, limits, rejects, resume and the
        final catalogue are this function's either way.
    """
    if verify_images not in ("magic", "decode"):
        raise ValueError(f"verify_images must be 'magic' or 'decode', not {verify_images!r}")
    if skip < 0 or (limit is not None and limit < 0):
        raise ValueError("skip and limit must be >= 0")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    bson_path, out_dir = Path(bson_path), Path(out_dir)
    check_is_bson(bson_path)
    cats = load_categories(categories) if categories is not None else None

    params = catalogue_params(categories, skip=skip, limit=limit, verify_images=verify_images,
                              max_doc_bytes=max_doc_bytes, max_image_side=max_image_side)
    source = _source_id(bson_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not force and (out_dir / META).exists():
        meta = load_meta(out_dir)
        # An older format is rebuilt, and so is one made before duplicates were counted.
        if meta["source"] == source and meta["params"] == params and \
                meta.get("format_version") == FORMAT_VERSION and \
                meta["summary"].get("duplicates") is not None:
            return CatalogueSummary(**meta["summary"])
    t0 = time.perf_counter()
    work = out_dir / WORK
    parts = scanner.parts(source["size"]) if scanner else workers
    plan = plan_run(work, bson_path, source, params, parts, resume, split_small=bool(scanner))
    jobs = [(str(bson_path), str(work / f"range-{i:02d}"), a, b, limit, params["categories"],
             verify_images, checkpoint_every, stop_after, progress, i, max_doc_bytes,
             max_image_side)
            for i, (a, b) in enumerate(plan["ranges"])]
    if scanner is not None:
        states = scanner(jobs)
    elif len(jobs) == 1:
        states = [scan_range(*jobs[0])]  # in-process: simplest to debug and to test
    else:
        with ProcessPoolExecutor(min(workers, len(jobs)), initializer=_die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            states = list(pool.map(scan_range, *zip(*jobs, strict=True)))
    plan["seconds"] += time.perf_counter() - t0
    artifacts.write_json(work / "plan.json", plan)
    if not all(st["done"] for st in states):
        return CatalogueSummary(source=str(bson_path),
                                documents=sum(st["documents"] for st in states))
    return _finalize(out_dir, plan, states, cats)


def _die_with_parent(parent: int) -> None:
    """Worker initializer: a worker dies with its build process (Linux's parent-death
    signal). Without it, a build SIGKILLed alone leaves its workers blocked for ever,
    and a resumed run could find one still writing the same range's files."""
    with contextlib.suppress(OSError, AttributeError):  # no prctl: not Linux
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the build died before the guard was set
        os._exit(1)


def _finalize(out_dir: Path, plan: dict, states: list[dict],
              cats: pd.DataFrame | None) -> CatalogueSummary:
    """Join the parts in file order: drop duplicate ids (first wins), join names, write."""
    table, rej = read_parts(out_dir / WORK, states)
    # The hashes become the duplicates file, not a catalogue column (part files of a run
    # interrupted before hashes existed have none: null lists).
    hashes = table.column("picture_hashes") if "picture_hashes" in table.column_names \
        else pa.nulls(table.num_rows, pa.list_(pa.uint64()))
    df = table.drop_columns(["picture_hashes"]).to_pandas() \
        if "picture_hashes" in table.column_names else table.to_pandas()
    df["category_id"] = df["category_id"].astype("Int64")
    dup = df["product_id"].duplicated(keep="first")
    if dup.any():
        first = df.drop_duplicates("product_id").set_index("product_id")["offset"]
        d = df[dup]
        rej = pd.concat([rej, pd.DataFrame({
            "kind": "product", "offset": d["offset"], "length": d["length"],
            "product_id": d["product_id"], "image_index": None, "reason": "duplicate_id",
            "detail": [f"_id already at offset {first[p]}" for p in d["product_id"]],
        })], ignore_index=True)
        df = df[~dup]
        hashes = hashes.filter(pa.array(~dup.to_numpy()))
    groups, counts = exact_duplicates(df["product_id"], df["category_id"], hashes)
    if cats is not None:
        df = df.merge(cats, on="category_id", how="left", validate="many_to_one")
    else:
        for col in LEVELS:
            df[col] = pd.array([pd.NA] * len(df), dtype="string")
    df = df.reset_index(drop=True)
    rej = rej.astype({"offset": "int64", "length": "int64", "product_id": "Int64",
                      "image_index": "Int64"}).sort_values(["offset", "image_index"],
                                                          kind="stable", ignore_index=True)
    product_rejects = rej[rej["kind"] != "image"]
    summary = CatalogueSummary(
        source=plan["source"]["path"],
        documents=sum(st["documents"] for st in states),
        products_kept=len(df),
        products_rejected=len(product_rejects),
        images_in=sum(st["images_in"] for st in states),
        images_kept=int(usable_counts(df).sum()),
        bad_images=int((rej["kind"] == "image").sum()),
        categories=int(df["category_id"].nunique()),
        rejects_by_reason={k: int(v) for k, v in rej["reason"].value_counts().items()},
        seconds=plan["seconds"],
        bytes_read=sum(st["next_offset"] - st["start"] for st in states),
        duplicates=counts.as_dict(),
    )
    if summary.documents != summary.products_kept + summary.products_rejected:
        raise AssertionError(f"lost products: {summary}")  # an invariant, never expected
    artifacts.atomic_write(out_dir / CATALOGUE, lambda t: df.to_parquet(t, index=False))
    artifacts.atomic_write(out_dir / REJECTS, lambda t: rej.to_csv(t, index=False))
    artifacts.atomic_write(out_dir / DUPLICATES, lambda t: groups.to_parquet(t, index=False))
    manifest = artifacts.make_manifest(
        "catalogue", {"source": plan["source"], "params": plan["params"]})
    manifest["fingerprint"] = catalogue_fingerprint(df)  # what vector stores name as input
    artifacts.write_manifest(out_dir, manifest)
    meta = {"format_version": FORMAT_VERSION, "source": plan["source"],
            "params": plan["params"], "summary": asdict(summary)}
    artifacts.write_json(out_dir / META, meta)  # last: its presence means "finished"
    shutil.rmtree(out_dir / WORK)
    return summary


# ---------------------------------------------------------------- reading back


def load_catalogue(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The catalogue written by ``build_catalogue`` (checks it is complete and of this
    version's format)."""
    out_dir = Path(out_dir)
    if not (out_dir / META).exists():
        raise CatalogueError(f"no finished catalogue in {out_dir} (run build_catalogue first)")
    check_format(out_dir)
    return pd.read_parquet(out_dir / CATALOGUE)


def check_format(out_dir: str | os.PathLike) -> None:
    """CatalogueError, naming the rebuild command, for a catalogue of another format: read
    as this version's, its picture counts would be wrong, not refused."""
    version = load_meta(out_dir).get("format_version")
    if version != FORMAT_VERSION:
        raise CatalogueError(
            f"{out_dir} holds a catalogue of format {version}; this version reads format "
            f"{FORMAT_VERSION} (n_images now counts every picture, bad ones included). "
            f"Rebuild it: {REBUILD}")


def load_duplicates(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The exact duplicate groups of a finished catalogue (`helpers.ingest.duplicates`);
    CatalogueError naming the rebuild for one built before they were found."""
    path = Path(out_dir) / DUPLICATES
    if not path.exists():
        raise CatalogueError(f"{out_dir} has no {DUPLICATES} (built before exact duplicates "
                             f"were found). Rebuild it: {REBUILD}")
    return pd.read_parquet(path)


def load_meta(out_dir: str | os.PathLike) -> dict:
    return artifacts.read_json(Path(out_dir) / META)


def load_rejects(out_dir: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(Path(out_dir) / REJECTS, dtype={"product_id": "Int64",
                                                       "image_index": "Int64"})
