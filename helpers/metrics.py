"""Search quality and speed: recall@k against exact search, precision@k by category, QPS.

exact = build_index("exact", base, ids).search(queries, 10).ids
approx = index.search(queries, 10).ids
recall_at_k(approx, exact, 10)          # share of the true top-10 found
measure_qps(lambda q: index.search(q, 10), queries)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k.

    approx_ids, exact_ids: [nq, >= k] ids, best first. -1 (no result) never counts as found;
    when exact search has fewer than k results for a query, divide by how many it has.
    """
    a, e = _top(approx_ids, k, "approx_ids"), _top(exact_ids, k, "exact_ids")
    if a.shape[0] != e.shape[0]:
        raise ValueError(f"{a.shape[0]} approximate result rows, {e.shape[0]} exact")
    if a.shape[0] == 0:
        raise ValueError("no queries")
    hits = np.empty(a.shape[0])
    for s in range(0, a.shape[0], 4096):  # bounds the [block, k, k] comparison
        ab, eb = a[s : s + 4096], e[s : s + 4096]
        found = (ab[:, :, None] == eb[:, None, :]) & (eb[:, None, :] >= 0)
        hits[s : s + 4096] = found.any(axis=1).sum(axis=1) / np.maximum((eb >= 0).sum(axis=1), 1)
    return float(hits.mean())


def precision_at_k(neighbor_categories: np.ndarray, query_categories: np.ndarray, k: int) -> float:
    """Share of the top-k neighbours whose category is the query's category.

    neighbor_categories: [nq, >= k] categories of the results (map ids to categories
    first); query_categories: [nq].
    """
    nc = _top(neighbor_categories, k, "neighbor_categories")
    qc = np.asarray(query_categories).reshape(-1)
    if qc.shape[0] != nc.shape[0]:
        raise ValueError(f"{nc.shape[0]} result rows, {qc.shape[0]} query categories")
    if qc.shape[0] == 0:
        raise ValueError("no queries")
    return float((nc == qc[:, None]).mean())


def measure_qps(
    search: Callable[[np.ndarray], Any],
    queries: np.ndarray,
    *,
    repeat: int = 3,
    warmup: int = 1,
) -> float:
    """Queries per second of `search(queries)` on the whole batch: best of `repeat` runs
    after `warmup` untimed ones (best-of filters noise from other processes)."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        search(queries)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        search(queries)
        best = min(best, time.perf_counter() - t)
    return len(queries) / max(best, 1e-9)


def _top(a: np.ndarray, k: int, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[None, :]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if a.ndim != 2 or a.shape[1] < k:
        raise ValueError(f"{what} must be [nq, >= {k}], got shape {a.shape}")
    return a[:, :k]
