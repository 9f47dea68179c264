"""Which method finds related products best, and at what cost: the logic of ``06_compare``.

A *method* is an embedding and an index, written ``"<embedding>/<index>"``:

- embeddings: ``style-180`` (VGG16 Gram style vectors at 180 px), ``<backend>-<size>``
  for MobileNetV2 from any backend in ``helpers.models.BACKENDS`` (``onnx-224``,
  ``onnx-180``, ``openvino-224`` when that backend exists);
- indexes: ``exact`` (numpy), ``flat`` / ``ivf`` / ``hnsw`` / ``ivfpq`` (FAISS),
  ``annoy``, ``elasticsearch`` (when registered in ``helpers.index.METHODS`` and a node
  answers). IVF lists and PQ codes are sized from the number of vectors.

Every method is measured on the same products and pictures:

- quality: category precision@k (leaf and level 1, beside the chance rate), same-product
  retrieval at image level (hit@1, hit@5, MRR over the top 10; single-picture products are
  not queries),
  recall@k against exact search on the same vectors;
- cost: build time, size on disk, resident memory of a process that loads the index,
  latency p50/p99 one query at a time, QPS of a batch.

A method that cannot run here (an unknown backend, a missing optional package, no
Elasticsearch node) is *skipped* with its reason; the others are still compared. Any other
error in a method is a bug: it propagates, and the notebook fails.

    run = compare(ws, catalogue, ws.images(bson_path), methods=DEFAULT_METHODS)
    run.table            # one row per method: compare.csv
    run.save(out_dir)    # compare.csv, compare.json
    print(advice(run.table, run.settings))

Plots and galleries of a comparison: `helpers.compare_plots`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import ids as item_ids
from .metrics import (
    category_precision,
    drop_self,
    latency_ms,
    measure_qps,
    multi_item_products,
    recall_at_k,
    same_product_retrieval,
)
from .services import MethodUnavailable, ServiceUnavailable

log = logging.getLogger(__name__)

DEFAULT_METHODS = (
    "style-180/exact",
    "onnx-224/exact",
    "onnx-180/exact",
    "onnx-224/flat",
    "onnx-224/ivf",
    "onnx-224/hnsw",
    "onnx-224/ivfpq",
    "onnx-224/annoy",
    "onnx-224/elasticsearch",
)
# Backends that compute the very same MobileNetV2 vectors as ONNX (TF: within 1e-5): not
# worth a row of their own. Any other backend of helpers.models joins the defaults.
SAME_AS_ONNX = {"onnx", "tf"}
INDEXES = ("exact", "flat", "ivf", "hnsw", "ivfpq", "annoy", "elasticsearch")


def default_methods() -> list[str]:
    """DEFAULT_METHODS, plus exact search on every extra embedding backend registered in
    ``helpers.models.BACKENDS`` (e.g. "openvino-224/exact"), at 224 and 180 px."""
    from . import models

    extra = [f"{b}-{size}/exact" for b in models.BACKENDS if b not in SAME_AS_ONNX
             for size in (224, 180)]
    return [*DEFAULT_METHODS, *extra]
# The search knob each index trades speed for recall with (swept for the recall-vs-QPS plot).
KNOBS = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch", "annoy": "search_k",
         "elasticsearch": "num_candidates"}
TIE_SLACK = 5  # results asked beyond k, so that ties across the cut are seen
RECALL_TARGET = 0.95
MRR_DEPTH = 10  # same-product MRR: reciprocal rank within the first 10 results, else 0


class MethodError(ValueError):
    """A method string that does not parse."""


@dataclass(frozen=True)
class Method:
    name: str  # as given: "onnx-224/hnsw"
    embedding: str  # "onnx-224"
    model: str  # "style" or an extractor backend
    image_size: int
    index: str  # one of INDEXES


def parse_method(spec: str) -> Method:
    """``"onnx-224/hnsw"`` -> Method(embedding "onnx-224", index "hnsw")."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)-(\d+)\s*/\s*([a-z]+)\s*", spec)
    if not m:
        raise MethodError(f"method {spec!r}: expected '<model>-<size>/<index>', e.g. "
                          "'onnx-224/hnsw' or 'style-180/exact'")
    model, size, index = m.group(1), int(m.group(2)), m.group(3)
    if index not in INDEXES:
        raise MethodError(f"method {spec!r}: index {index!r} is not one of {INDEXES}")
    return Method(f"{model}-{size}/{index}", f"{model}-{size}", model, size, index)


# -- vectors ------------------------------------------------------------------------------------


@dataclass
class Vectors:
    """One embedding's vectors at both levels, from one image-level store."""

    embedding: str
    image_ids: np.ndarray  # item ids (helpers.ids, level "image")
    image_vectors: np.ndarray
    product_ids: np.ndarray
    product_vectors: np.ndarray  # mean of the product's unit picture vectors
    made_by: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.image_vectors.shape[1])


def product_means(image_ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(product ids, mean of each product's L2-normalised picture vectors): what the
    embedding pipeline stores at product level, derived here from the image level so
    that each picture is embedded once."""
    pids, _ = item_ids.decode(image_ids, "image")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    uniq, inverse = np.unique(pids, return_inverse=True)
    sums = np.zeros((len(uniq), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, unit)
    counts = np.bincount(inverse, minlength=len(uniq))
    return uniq, (sums / counts[:, None]).astype(np.float32)


def load_embedder(model: str) -> Any:
    """The extractor of an embedding's model: "style" (VGG16) or a MobileNetV2 backend."""
    from . import models

    if model == "style":
        return models.load_style_extractor()
    if model not in models.BACKENDS:
        raise MethodUnavailable(f"no extractor backend {model!r} in helpers.models.BACKENDS "
                                f"({', '.join(models.BACKENDS)})")
    return models.load_extractor(model)


def embed(ws: Any, catalogue: Any, images: Any, method: Method, **kw: Any) -> Vectors:
    """The embedding's vectors of the run (built once by the workspace, then reused).

    images: the pictures (``ws.images(bson_path)``, an ImageSource, or the BSON path)."""
    extractor = load_embedder(method.model)
    store = ws.vectors(catalogue, images, extractor, image_size=method.image_size,
                       level="image", **kw)
    image_ids = np.asarray(store.item_ids, np.int64)
    vectors = np.asarray(store.vectors, np.float32)
    pids, pvec = product_means(image_ids, vectors)
    return Vectors(method.embedding, image_ids, vectors, pids, pvec, dict(store.made_by))


# -- categories ---------------------------------------------------------------------------------


def category_frame(catalogue: Any, product_ids: np.ndarray) -> pd.DataFrame:
    """category_id and level-1 name of each product (a DataFrame catalogue or a
    ``helpers.products.Catalogue``)."""
    pids = np.asarray(product_ids, np.int64)
    if isinstance(catalogue, pd.DataFrame):
        df = catalogue.set_index("product_id").loc[pids]
        leaf = df["category_id"].to_numpy(np.int64)
        level1 = (df["category_level1"].astype("string").fillna("?").to_numpy(object)
                  if "category_level1" in df else np.full(len(pids), "?", object))
        leaf_name = (df["category_level3"].astype("string").fillna("?").to_numpy(object)
                     if "category_level3" in df else leaf.astype(str).astype(object))
    else:  # the Catalogue protocol
        leaf = np.asarray(catalogue.category_ids(pids), np.int64)
        paths = {int(c): catalogue.category_path(int(c)) for c in np.unique(leaf)}
        level1 = np.array([(paths[int(c)] or ("?",))[0] for c in leaf], object)
        leaf_name = np.array([(paths[int(c)] or ("?", "?", str(c)))[-1] for c in leaf], object)
    return pd.DataFrame({"product_id": pids, "category_id": leaf, "level1": level1,
                         "category": leaf_name})


# -- indexes ------------------------------------------------------------------------------------


def index_spec(index: str, n: int, dim: int, k: int = 10,
               es_params: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(helpers.index method, build parameters) of an index kind for n vectors of dim."""
    nlist = max(1, min(int(math.sqrt(n)), n // 39))  # FAISS wants >= 39 points per list
    if index == "exact":
        return "exact", {}
    if index == "flat":
        return "faiss", {"factory": "Flat"}
    if index == "ivf":
        return "faiss", {"factory": f"IVF{nlist},Flat", "nprobe": max(1, nlist // 4)}
    if index == "hnsw":
        return "faiss", {"factory": "HNSW32"}
    if index == "ivfpq":
        # A code book of 2^nbits centroids per sub-vector wants >= 39 training points per
        # centroid (FAISS k-means): 8 bits from 10k vectors, fewer on small samples.
        nbits = int(np.clip(np.floor(np.log2(max(n, 1) / 39)), 1, 8))
        # Sub-vectors of >= 4 dimensions (1280 -> 64 bytes a vector, 80x smaller).
        m = next(m for m in (64, 48, 32, 24, 16, 8, 4, 2, 1) if dim % m == 0 and dim // m >= 4
                 or m == 1)
        return "faiss", {"factory": f"IVF{nlist},PQ{m}x{nbits}", "nprobe": max(1, nlist // 4)}
    if index == "annoy":
        return "annoy", {"n_trees": 50}
    if index == "elasticsearch":
        return "elasticsearch", dict(es_params or {})
    raise MethodError(f"unknown index {index!r}")


def build(kind: str, vectors: np.ndarray, ids: np.ndarray, categories: np.ndarray | None,
          es_params: Mapping[str, Any] | None = None, **extra: Any) -> tuple[Any, float]:
    """Build one index of a kind in INDEXES; (index, seconds). extra: engine parameters
    (those of ``es_params`` / ``index_spec`` win). MethodUnavailable if its engine is not
    registered."""
    from .index import METHODS, build_index

    method, params = index_spec(kind, len(ids), vectors.shape[1], es_params=es_params)
    if method not in METHODS:
        raise MethodUnavailable(
            f"index method {method!r} is not registered in helpers.index.METHODS")
    t = time.perf_counter()
    built = build_index(method, vectors, ids, categories, **{**extra, **params})
    return built, time.perf_counter() - t


OUR_PACKAGES = {"helpers", "apps"}


def _unavailable(exc: BaseException) -> bool:
    """A method that cannot run here: no server answers, or an optional package or backend
    is missing. Only these are skipped: a KeyError in a measurement is a bug, not an absent
    engine, so no LookupError (nor an import error of our own code) qualifies."""
    if isinstance(exc, ServiceUnavailable | MethodUnavailable | ConnectionError):
        return True
    if isinstance(exc, ImportError):  # a third-party package, not a broken import of ours
        return bool(exc.name) and exc.name.split(".")[0] not in OUR_PACKAGES
    # The Elasticsearch client's own connection errors (not builtin subclasses).
    return bool({c.__name__ for c in type(exc).__mro__} & {"ConnectionError", "ConnectionTimeout"})


def current_version(path: str | os.PathLike) -> Path:
    """A saved index folder's current version (``path/current``), or ``path`` itself."""
    cur = Path(path) / "current"
    return cur.resolve() if cur.exists() else Path(path)


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files of a saved index (its current version only)."""
    return sum(f.stat().st_size for f in current_version(path).rglob("*") if f.is_file())


_RSS_CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from helpers.index import METHODS, load_index
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
q = np.load(sys.argv[2])
try:  # the engine's library (faiss, annoy) is loaded before the clock: not the index
    METHODS[json.loads((Path(sys.argv[3]) / "meta.json").read_text())["method"]]
except (OSError, KeyError, ValueError):
    pass
before = rss()
index = load_index(sys.argv[1])
index.search(q, int(sys.argv[4]))
print(rss() - before)
"""


def resident_bytes(index_dir: Path, queries: np.ndarray, k: int) -> float:
    """Memory a fresh process holds for the index: RSS after loading it and searching a
    batch, minus RSS before loading (the engine library already imported: its code is
    not the index's). A memory-mapped index (Annoy) counts
    the pages the batch touched; they live in the page cache, shared by processes."""
    if not Path("/proc/self/status").exists():
        return float("nan")
    qfile = Path(index_dir).parent / f".{Path(index_dir).name}.queries.npy"
    np.save(qfile, np.ascontiguousarray(queries, np.float32))
    try:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(index_dir), str(qfile),
                               str(current_version(index_dir)), str(k)],
                              capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).resolve().parents[1], env=env)
        if proc.returncode:
            log.warning("memory of %s not measured: %s", index_dir, proc.stderr[-500:])
            return float("nan")
        return float(proc.stdout.strip().splitlines()[-1])
    finally:
        qfile.unlink(missing_ok=True)


def batch_qps(search: Callable[[np.ndarray], Any], queries: np.ndarray,
              budget_s: float = 0.3) -> float:
    """QPS of one batch, best of as many runs as fill ``budget_s`` (3 to 50): a batch of a
    few hundred queries takes well under a millisecond, so one run measures the
    scheduler of a busy machine rather than the index."""
    t = time.perf_counter()
    search(queries)  # also the warm-up
    once = time.perf_counter() - t
    repeat = int(min(50, max(3, budget_s / max(once, 1e-6))))
    return measure_qps(search, queries, repeat=repeat, warmup=0)


def search_rows(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k + slack of each query (capped at the index size), as float64 scores."""
    res = index.search(queries, min(len(index), k + TIE_SLACK))
    return np.asarray(res.ids, np.int64), np.asarray(res.scores, np.float64)


def sweep(index: Any, kind: str, queries: np.ndarray, query_ids: np.ndarray,
          truth: np.ndarray, k: int) -> pd.DataFrame:
    """recall@k (each query's own id dropped) and batch QPS for each value of the index's
    speed knob; empty if it has none."""
    knob = KNOBS.get(kind)
    if knob is None or knob not in getattr(index, "params", {}):
        return pd.DataFrame(columns=["knob", "value", "recall", "qps"])
    if kind in ("ivf", "ivfpq"):
        nlist = int(re.search(r"IVF(\d+)", index.build_params["factory"]).group(1))
        values = sorted({v for v in (1, 2, 4, 8, 16, 32, 64, 128, nlist) if v <= nlist})
    elif kind == "hnsw":
        values = [8, 16, 32, 64, 128, 256]
    elif kind == "annoy":
        trees = index.build_params.get("n_trees", 50)
        values = [max(1, int(k * trees * f)) for f in (0.125, 0.25, 0.5, 1, 4, 16)]
    else:
        values = [v for v in (k, 2 * k, 5 * k, 10 * k, 50 * k) if v <= max(len(index), k)]
    before = index.params[knob]
    rows = []
    try:
        for v in values:
            index.params[knob] = int(v)
            got, _ = search_rows(index, queries, k)
            got, _ = drop_self(got, np.zeros(got.shape), query_ids)
            rows.append({"knob": knob, "value": int(v),
                         "recall": recall_at_k(got[:, :k], truth, k),
                         "qps": batch_qps(lambda q: index.search(q, k), queries)})
    finally:
        index.params[knob] = before
    return pd.DataFrame(rows)


# -- the comparison -----------------------------------------------------------------------------


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per method (compare.csv)
    per_category: pd.DataFrame  # category x method precision@k (leaf)
    sweeps: dict[str, pd.DataFrame]  # method -> knob sweep (recall, qps)
    settings: dict[str, Any]
    results: dict[str, tuple[np.ndarray, np.ndarray]]  # method -> product-level top k
    categories: pd.DataFrame  # product_id, category_id, level1, category
    query_ids: np.ndarray  # the query products, row i of every results[method]

    def save(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """compare.csv (the table) and compare.json (everything, to diff two runs)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv, js = out / "compare.csv", out / "compare.json"
        self.table.to_csv(csv, index=False, float_format="%.6g")
        doc = {
            "settings": self.settings,
            "methods": _records(self.table),
            "per_category": _records(self.per_category.reset_index()),
            "sweeps": {m: _records(t) for m, t in self.sweeps.items()},
            "advice": advice(self.table, self.settings),
        }
        js.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
        return csv, js


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records", double_precision=6))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    return str(o)


def compare(
    ws: Any,
    catalogue: Any,
    images: Any,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    ks: Sequence[int] = (5, 10),
    n_queries: int = 1000,
    n_latency: int = 200,
    es_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    measure_memory: bool = True,
    embed_kw: Mapping[str, Any] | None = None,
    vectors_of: Callable[[Method], Vectors] | None = None,
    say: Callable[[str], None] = print,
) -> Comparison:
    """Measure every method on the same products and pictures; see the module docstring.

    ks: cut-offs of category precision (the largest is also recall@k's). n_queries: at
    most this many query products, and query pictures (a seeded sample when there are
    more). n_latency: queries timed one at a time. vectors_of: method -> Vectors (default:
    `embed` through the workspace, from ``images``). say: where progress lines go.
    """
    if vectors_of is None:
        def vectors_of(m: Method) -> Vectors:
            return embed(ws, catalogue, images, m, **(embed_kw or {}))

    parsed = [parse_method(m) for m in methods]
    k = max(ks)
    rng = np.random.default_rng(seed)
    vecs: dict[str, Vectors | str] = {}
    rows, sweeps, results, per_cat = [], {}, {}, {}
    cats_df: pd.DataFrame | None = None
    queries_p = queries_i = None
    exact_cache: dict[tuple[str, str], np.ndarray] = {}

    for m in parsed:
        row: dict[str, Any] = {"method": m.name, "embedding": m.embedding, "index": m.index,
                               "status": "ok", "reason": ""}
        try:
            if m.embedding not in vecs:
                try:
                    vecs[m.embedding] = vectors_of(m)
                except Exception as e:
                    if not _unavailable(e):
                        raise
                    vecs[m.embedding] = f"embedding {m.embedding} unavailable: {e}"
            v = vecs[m.embedding]
            if isinstance(v, str):
                raise MethodUnavailable(v)
            if cats_df is None:
                cats_df = category_frame(catalogue, v.product_ids)
                queries_p = _sample(v.product_ids, n_queries, rng)
                multi = multi_item_products(v.image_ids, "image")
                pics = v.image_ids[np.isin(item_ids.decode(v.image_ids, "image")[0], multi)]
                queries_i = _sample(pics, n_queries, rng)
            row.update(_measure(m, v, cats_df, queries_p, queries_i, ks, n_latency, ws,
                                es_params, measure_memory, exact_cache, sweeps, results,
                                per_cat))
            say(f"{m.name:<26} p@{k} {row[f'p@{k}']:.3f}  hit@1 {row['hit@1']:.3f}  "
                f"recall@{k} {row[f'recall@{k}']:.3f}  {row['qps']:,.0f} q/s")
        except Exception as e:  # noqa: BLE001 - one method's failure must not stop the rest
            if not _unavailable(e):
                raise
            row.update(status="skipped", reason=(str(e).splitlines() or [type(e).__name__])[0])
            say(f"{m.name:<26} skipped: {row['reason']}")
        rows.append(row)

    table = pd.DataFrame(rows)
    settings = {"methods": list(methods), "ks": list(ks), "k": k, "n_queries": n_queries,
                "seed": seed, "images": str(getattr(images, "path", images)),
                "n_products": int(len(cats_df)) if cats_df is not None else 0,
                "n_pictures": int(max((len(v.image_ids) for v in vecs.values()
                                       if isinstance(v, Vectors)), default=0)),
                "same_product_queries": int(len(queries_i)) if queries_i is not None else 0,
                "cpus": os.cpu_count()}
    per_category = _per_category(per_cat, cats_df, k)
    if cats_df is None:
        cats_df = pd.DataFrame(columns=["product_id", "category_id", "level1", "category"])
    qp = queries_p if queries_p is not None else np.zeros(0, np.int64)
    return Comparison(table, per_category, sweeps, settings, results, cats_df, qp)


def _sample(ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(ids) <= n:
        return np.asarray(ids, np.int64)
    return np.sort(rng.choice(ids, n, replace=False)).astype(np.int64)


def _rows_of(all_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    order = np.argsort(all_ids)
    return order[np.searchsorted(all_ids[order], wanted)]


def _measure(m: Method, v: Vectors, cats_df: pd.DataFrame, queries_p: np.ndarray,
             queries_i: np.ndarray, ks: Sequence[int], n_latency: int, ws: Any,
             es_params: Mapping[str, Any] | None, measure_memory: bool,
             exact_cache: dict, sweeps: dict, results: dict, per_cat: dict) -> dict[str, Any]:
    k = max(ks)
    out: dict[str, Any] = {"dim": v.dim, "n_products": len(v.product_ids),
                           "n_pictures": len(v.image_ids)}
    # Categories in this embedding's product order (a product whose pictures all failed
    # to decode in one embedding is missing from it).
    by_id = cats_df.set_index("product_id").reindex(v.product_ids)
    leaf = by_id["category_id"].fillna(-1).to_numpy(np.int64)
    level1 = pd.factorize(by_id["level1"].fillna("?"))[0].astype(np.int64)
    pvec = v.product_vectors
    qrows = _rows_of(v.product_ids, queries_p)
    qv = pvec[qrows]

    # product level: categories, recall, cost
    index, build_s = build(m.index, pvec, v.product_ids, leaf, es_params=es_params,
                           **_engine_kw(m, "product"))
    ids_, scores = search_rows(index, qv, k)
    ids_, scores = drop_self(ids_, scores, queries_p)
    results[m.name] = (ids_[:, :k], scores[:, :k])
    for kk in ks:
        t = category_precision(ids_, scores, queries_p, v.product_ids, leaf, kk)
        out[f"p@{kk}"] = float(t["precision"].mean())
        out[f"chance@{kk}"] = float(t["chance"].mean())
        out[f"ceiling@{kk}"] = float(t["ceiling"].mean())
        if kk == k:
            per_cat[m.name] = t
        t1 = category_precision(ids_, scores, queries_p, v.product_ids, level1, kk)
        out[f"l1_p@{kk}"] = float(t1["precision"].mean()) if len(t1) else float("nan")
        out[f"l1_chance@{kk}"] = float(t1["chance"].mean()) if len(t1) else float("nan")
    key = (m.embedding, "product")
    if key not in exact_cache:
        exact, _ = build("exact", pvec, v.product_ids, None)
        e_ids, e_sc = search_rows(exact, qv, k)
        exact_cache[key] = drop_self(e_ids, e_sc, queries_p)[0][:, :k]
    truth = exact_cache[key]
    out[f"recall@{k}"] = recall_at_k(ids_[:, :k], truth, k)
    out["build_s"] = build_s
    path = None
    if m.index == "elasticsearch":  # the vectors live on the node: its store, no local file
        out["disk_mb"] = _server_bytes(index) / 1e6
    else:
        path = index.save(ws.index_dir(f"compare-{m.embedding}-{m.index}"))
        out["disk_mb"] = disk_bytes(path) / 1e6
    lat_q = qv[: max(1, min(n_latency, len(qv)))]
    out["memory_mb"] = (resident_bytes(path, qv, k) / 1e6
                        if measure_memory and path is not None else float("nan"))
    lat = latency_ms(lambda q: index.search(q, k), lat_q)
    out["p50_ms"], out["p99_ms"] = lat["p50"], lat["p99"]
    out["qps"] = batch_qps(lambda q: index.search(q, k), qv)
    sw = sweep(index, m.index, qv, queries_p, truth, k)
    if len(sw):
        sweeps[m.name] = sw
    _close(index)

    # image level: find the same product again
    if len(queries_i):
        index_i, _ = build(m.index, v.image_vectors, v.image_ids, None, es_params=es_params,
                           **_engine_kw(m, "image"))
        qi = v.image_vectors[_rows_of(v.image_ids, queries_i)]
        ids_i, sc_i = search_rows(index_i, qi, MRR_DEPTH)
        ids_i, sc_i = drop_self(ids_i, sc_i, queries_i)
        # MRR over the first MRR_DEPTH results: a product found further down counts 0.
        ids_i, sc_i = ids_i[:, :MRR_DEPTH], sc_i[:, :MRR_DEPTH]
        sp = same_product_retrieval(ids_i, sc_i, queries_i, v.image_ids, "image", (1, 5))
        out["hit@1"], out["hit@5"] = float(sp["hit@1"].mean()), float(sp["hit@5"].mean())
        out["mrr"] = float(sp["rr"].mean())
        _close(index_i)
    else:
        out["hit@1"] = out["hit@5"] = out["mrr"] = float("nan")
    out["same_product_queries"] = len(queries_i)
    return out


def _engine_kw(m: Method, level: str) -> dict[str, Any]:
    """Elasticsearch: an index of its own per embedding and level, rebuilt each run."""
    if m.index != "elasticsearch":
        return {}
    return {"index": f"vps-compare-{m.embedding}-{level}".lower(), "level": level,
            "recreate": True}


def _server_bytes(index: Any) -> float:
    """Store size of a server-side index (Elasticsearch primaries), NaN if unknown."""
    try:
        stats = index.client.indices.stats(index=index.index, metric="store")
        return float(stats["_all"]["primaries"]["store"]["size_in_bytes"])
    except Exception as e:  # noqa: BLE001 - a size we cannot read is not a failure
        log.warning("size of %s unknown: %s", getattr(index, "index", index), e)
        return float("nan")


def _close(index: Any) -> None:
    """Free what an index holds outside this process (an Elasticsearch index: dropped)."""
    for name in ("drop", "close"):
        fn = getattr(index, name, None)
        if callable(fn):
            fn()
            return


def _per_category(per_cat: dict[str, pd.DataFrame], cats_df: pd.DataFrame | None,
                  k: int) -> pd.DataFrame:
    """category x method precision@k, with the category's size, chance and ceiling."""
    if not per_cat or cats_df is None:
        return pd.DataFrame()
    names = cats_df.drop_duplicates("category_id").set_index("category_id")
    first = next(iter(per_cat.values()))
    base = first.groupby("category").agg(queries=("query_id", "size"),
                                         chance=("chance", "mean"),
                                         ceiling=("ceiling", "mean"))
    for name, t in per_cat.items():
        base[f"{name} p@{k}"] = t.groupby("category")["precision"].mean()
    base.insert(0, "name", names.reindex(base.index)["category"].to_numpy())
    base.insert(1, "level1", names.reindex(base.index)["level1"].to_numpy())
    base.index.name = "category_id"
    return base


# -- reading the results ------------------------------------------------------------------------


def best_method(table: pd.DataFrame, column: str, exact_only: bool = True) -> str | None:
    """The method with the highest ``column``. exact_only: among exact searches (exact,
    Flat): quality is the embedding's, an approximate index can only lose some of it, and
    one that scores a hair above its exact search does so by luck."""
    if column not in table:
        return None
    ok = table[(table["status"] == "ok") & table[column].notna()]
    if exact_only and ok["index"].isin(["exact", "flat"]).any():
        ok = ok[ok["index"].isin(["exact", "flat"])]
    return None if len(ok) == 0 else str(ok.loc[ok[column].idxmax(), "method"])


def worst_categories(comparison: Comparison, method: str | None = None,
                     n: int = 10) -> pd.DataFrame:
    """The n categories where ``method`` (default: the best at precision@k) does worst."""
    k = comparison.settings["k"]
    method = method or best_method(comparison.table, f"p@{k}")
    col = f"{method} p@{k}"
    pc = comparison.per_category
    if method is None or col not in pc:
        return pd.DataFrame()
    cols = ["name", "level1", "queries", "chance", "ceiling", col]
    return pc[cols].sort_values([col, "queries"], ascending=[True, False]).head(n)


def advice(table: pd.DataFrame, settings: Mapping[str, Any]) -> str:
    """"Which to use when", written from this run's numbers (nothing here is hand-typed
    about a particular result: every sentence is chosen and filled by the figures)."""
    k = settings.get("k", 10)
    ok = table[table["status"] == "ok"].set_index("method")
    if ok.empty:
        return "No method ran: nothing to recommend."
    n = int(settings.get("n_products", 0))
    out = []
    best_p = best_method(table, f"p@{k}")
    b = ok.loc[best_p]
    ratio = b[f"p@{k}"] / b[f"chance@{k}"] if b[f"chance@{k}"] > 0 else float("inf")
    out.append(f"**Related products (same category):** {best_p} ranks best of the exact "
               f"searches, precision@{k} "
               f"{b[f'p@{k}']:.3f} against {b[f'chance@{k}']:.3f} by chance ({ratio:.1f}x) "
               f"and {b[f'ceiling@{k}']:.3f} at best on {n:,} products.")
    if ok["hit@1"].notna().any():
        best_h = best_method(table, "hit@1")
        h = ok.loc[best_h]
        out.append(f"**The same item again** (another picture of the query's product): "
                   f"{best_h}, hit@1 {h['hit@1']:.3f}, hit@5 {h['hit@5']:.3f}, "
                   f"MRR {h['mrr']:.3f}.")
    style = [m for m in ok.index if m.startswith("style-")]
    cnn = [m for m in ok.index if not m.startswith("style-") and m.endswith("/exact")]
    if style and cnn:
        s, c = ok.loc[style[0]], ok.loc[max(cnn, key=lambda m: ok.loc[m, f"p@{k}"])]
        if s[f"p@{k}"] < c[f"p@{k}"]:
            out.append(f"**Style vectors** (VGG16 Gram) match colour and texture, not kind: "
                       f"precision@{k} {s[f'p@{k}']:.3f} vs {c[f'p@{k}']:.3f} for "
                       f"{c.name}; use them for 'same look', not to find related products.")
        else:
            out.append(f"**Style vectors** do as well as MobileNetV2 here (precision@{k} "
                       f"{s[f'p@{k}']:.3f} vs {c[f'p@{k}']:.3f}): this catalogue's "
                       "categories are told apart by look.")
    sizes = {int(m.split("/")[0].rsplit("-", 1)[1]): m for m in cnn
             if m.split("/")[0].split("-")[0] == cnn[0].split("/")[0].split("-")[0]}
    if 180 in sizes and 224 in sizes:
        a, z = ok.loc[sizes[180]], ok.loc[sizes[224]]
        d = a[f"p@{k}"] - z[f"p@{k}"]
        verdict = ("no worse: use 180 px, the native size, 1.5x fewer pixels to embed"
                   if d >= -0.01 else "worse: keep 224 px, the size the network was trained at")
        out.append(f"**180 vs 224 px:** precision@{k} {a[f'p@{k}']:.3f} vs {z[f'p@{k}']:.3f}, "
                   f"hit@1 {a['hit@1']:.3f} vs {z['hit@1']:.3f}: 180 px is {verdict}.")
    exact = ok[ok["index"].isin(["exact", "flat"])]
    approx = ok[~ok["index"].isin(["exact", "flat"])]
    if len(exact):
        e = exact.loc[exact["qps"].idxmax()]
        good = approx[approx[f"recall@{k}"] >= RECALL_TARGET]
        if len(good):
            f = good.loc[good["qps"].idxmax()]
            same = exact[exact["embedding"] == f["embedding"]]  # same vectors, same work
            if len(same):
                e = same.loc[same["qps"].idxmax()]
            gain = f["qps"] / e["qps"]
            if gain >= 2:
                out.append(f"**Speed:** {f.name} answers {gain:.1f}x as many queries per second "
                           f"as exact search ({f['qps']:,.0f} vs {e['qps']:,.0f}) at recall@{k} "
                           f"{f[f'recall@{k}']:.3f}: use it at this size and above.")
            else:
                out.append(f"**Speed:** at {n:,} vectors exact search answers one query in "
                           f"{e['p50_ms']:.2f} ms (p50) and {e['qps']:,.0f} queries/s in a batch"
                           f"; the fastest approximate index at recall@{k} >= {RECALL_TARGET} "
                           f"({f.name}) is only {gain:.2g}x that: use exact search. "
                           "Approximate indexes pay off from about 100k vectors "
                           "(bench/bench_ann.py).")
        elif len(approx):
            out.append(f"**Speed:** no approximate index reached recall@{k} >= "
                       f"{RECALL_TARGET} at its default setting here; use exact search.")
    lossy = ok[ok["index"] == "ivfpq"]
    flat = ok[ok["index"].isin(["flat", "exact"])]
    if len(lossy) and len(flat):
        p, f = lossy.iloc[0], flat.loc[flat["disk_mb"].idxmax()]
        out.append(f"**Memory:** IVF-PQ ({p.name}) stores the vectors in "
                   f"{p['disk_mb']:.2f} MB instead of {f['disk_mb']:.2f} MB "
                   f"({f['disk_mb'] / max(p['disk_mb'], 1e-9):.0f}x smaller) at recall@{k} "
                   f"{p[f'recall@{k}']:.3f}: for catalogues that do not fit in RAM.")
    annoy = ok[ok["index"] == "annoy"]
    if len(annoy):
        a = annoy.iloc[0]
        out.append(f"**Several processes:** Annoy ({a.name}) is one memory-mapped file "
                   f"({a['disk_mb']:.2f} MB) shared by every worker, recall@{k} "
                   f"{a[f'recall@{k}']:.3f}; it cannot add or remove items: rebuild.")
    es = ok[ok["index"] == "elasticsearch"]
    if len(es):
        s = es.iloc[0]
        out.append(f"**Elasticsearch** ({s.name}): p50 {s['p50_ms']:.1f} ms a query, a "
                   f"server round trip; choose it to combine vectors with text and filters "
                   "in one query, not for speed.")
    skipped = table[table["status"] == "skipped"]
    if len(skipped):
        out.append("Not measured here: " + "; ".join(
            f"{r.method} ({str(r.reason).split('. ')[0].rstrip('.')})"
            for r in skipped.itertuples()) + ".")
    return "\n\n".join(out)
