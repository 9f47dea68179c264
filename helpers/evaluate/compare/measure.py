"""One method of a comparison, measured: its index built, searched and timed.

- quality: category precision@k (leaf and level 1, beside chance and the best possible),
  recall@k against exact search on the same vectors, same-product hit@1/hit@5/MRR at image
  level;
- cost: build time, size on disk, resident memory of a process that loads the index,
  latency p50/p99 one query at a time, QPS of a batch, and the knob sweep of an
  approximate index (``helpers.evaluate.sweep``).

Imports helpers.index (to build), helpers.evaluate (metrics, sweep, footprint, method).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.errors import MethodUnavailable
from helpers.core.ids import IdMap
from helpers.evaluate.compare.inputs import Vectors
from helpers.evaluate.footprint import disk_bytes, resident_bytes
from helpers.evaluate.method import Method, MethodError
from helpers.evaluate.metrics import (
    TIE_SLACK,
    batch_qps,
    category_precision,
    drop_self,
    latency_ms,
    recall_at_k,
    same_product_retrieval,
)
from helpers.evaluate.sweep import KNOBS, knob_sweep, knob_values
from helpers.evaluate.truth import exact_truth
from helpers.index.protocol import SearchResult

log = logging.getLogger(__name__)

MRR_DEPTH = 10  # same-product MRR: reciprocal rank within the first 10 results, else 0


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
    from helpers.index import METHODS, build_index

    method, params = index_spec(kind, len(ids), vectors.shape[1], es_params=es_params)
    if method not in METHODS:
        raise MethodUnavailable(
            f"index method {method!r} is not registered in helpers.index.METHODS")
    t = time.perf_counter()
    built = build_index(method, vectors, ids, categories, **{**extra, **params})
    return built, time.perf_counter() - t


def search_rows(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k + slack of each query (capped at the index size), as float64 scores."""
    res = index.search(queries, min(len(index), k + TIE_SLACK))
    return np.asarray(res.ids, np.int64), np.asarray(res.scores, np.float64)


@dataclass
class Measured:
    """What `measure` found for one method."""

    row: dict[str, Any]  # the method's figures: its row of the comparison's table
    results: tuple[np.ndarray, np.ndarray]  # product-level top k (ids, scores), query order
    per_category: pd.DataFrame  # precision@k per leaf query (metrics.category_precision)
    sweep: pd.DataFrame  # knob sweep (empty: the index has no knob)


def measure(m: Method, v: Vectors, cats: pd.DataFrame, queries_p: np.ndarray,
            queries_i: np.ndarray, *, ks: Sequence[int], n_latency: int,
            index_dir: str | os.PathLike, es_params: Mapping[str, Any] | None = None,
            measure_memory: bool = True,
            truth: dict[tuple[str, str], SearchResult] | None = None) -> Measured:
    """Build method m's indexes on v (products, then pictures) and measure them.

    cats: categories of the products (``inputs.category_frame``); queries_p, queries_i: the
    query products and pictures; index_dir: where the product index is saved (to measure
    its size and memory). truth: exact top k per (embedding, level), filled on first use
    and shared by the methods of one embedding.
    """
    truth = {} if truth is None else truth
    k = max(ks)
    out: dict[str, Any] = {"dim": v.dim, "n_products": len(v.product_ids),
                           "n_pictures": len(v.image_ids)}
    # Categories in this embedding's product order (a product whose pictures all failed
    # to decode in one embedding is missing from it).
    by_id = cats.set_index("product_id").reindex(v.product_ids)
    leaf = by_id["category_id"].fillna(-1).to_numpy(np.int64)
    level1 = pd.factorize(by_id["level1"].fillna("?"))[0].astype(np.int64)
    pvec = v.product_vectors
    qv = pvec[_rows_of(v.product_ids, queries_p)]

    # product level: categories, recall, cost
    index, build_s = build(m.kind, pvec, v.product_ids, leaf, es_params=es_params,
                           **_engine_kw(m, "product"))
    ids_, scores = search_rows(index, qv, k)
    ids_, scores = drop_self(ids_, scores, queries_p)
    per_cat = pd.DataFrame()
    for kk in ks:
        t = category_precision(ids_, scores, queries_p, v.product_ids, leaf, kk)
        out[f"p@{kk}"] = float(t["precision"].mean())
        out[f"chance@{kk}"] = float(t["chance"].mean())
        out[f"ceiling@{kk}"] = float(t["ceiling"].mean())
        if kk == k:
            per_cat = t
        t1 = category_precision(ids_, scores, queries_p, v.product_ids, level1, kk)
        out[f"l1_p@{kk}"] = float(t1["precision"].mean()) if len(t1) else float("nan")
        out[f"l1_chance@{kk}"] = float(t1["chance"].mean()) if len(t1) else float("nan")
    key = (m.embedding, "product")
    if key not in truth:  # each query left out of its own answers, ties seen across the cut
        truth[key] = exact_truth(pvec, v.product_ids, queries_p, k)
    out[f"recall@{k}"] = recall_at_k(ids_, truth[key], k)  # ids_: the query already dropped
    out["build_s"] = build_s
    path = None
    if m.kind == "elasticsearch":  # the vectors live on the node: its store, no local file
        out["disk_mb"] = _server_bytes(index) / 1e6
    else:
        path = index.save(index_dir)
        out["disk_mb"] = disk_bytes(path) / 1e6
    lat_q = qv[: max(1, min(n_latency, len(qv)))]
    out["memory_mb"] = (resident_bytes(path, qv, k) / 1e6
                        if measure_memory and path is not None else float("nan"))
    lat = latency_ms(lambda q: index.search(q, k), lat_q)
    out["p50_ms"], out["p99_ms"] = lat["p50"], lat["p99"]
    out["qps"] = batch_qps(lambda q: index.search(q, k), qv)
    knob = KNOBS.get(m.kind)
    sweep = pd.DataFrame(columns=["knob", "value", "recall", "qps"])
    if knob is not None and knob in getattr(index, "params", {}):
        sweep = knob_sweep(index, knob, knob_values(index, m.kind, k), qv, truth[key], k,
                           query_ids=queries_p, repeat=None)
    _close(index)

    out.update(_same_product(m, v, queries_i, es_params))
    return Measured(out, (ids_[:, :k], scores[:, :k]), per_cat, sweep)


def _same_product(m: Method, v: Vectors, queries_i: np.ndarray,
                  es_params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Image level: hit@1, hit@5 and MRR of finding another picture of the query's product."""
    out: dict[str, Any] = {}
    if len(queries_i):
        index_i, _ = build(m.kind, v.image_vectors, v.image_ids, None, es_params=es_params,
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


def _rows_of(all_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return IdMap(all_ids).rows(wanted)


def _engine_kw(m: Method, level: str) -> dict[str, Any]:
    """Elasticsearch: an index of its own per embedding and level, rebuilt each run."""
    if m.kind != "elasticsearch":
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
