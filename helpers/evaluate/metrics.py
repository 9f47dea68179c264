"""Search quality and speed: recall@k against exact search, precision@k by category, QPS.

truth = exact_truth(vectors, ids, query_ids, 10)    # helpers.evaluate.truth: itself left out
approx = index.search(queries, 11).ids
recall_at_k(approx, truth, 10, query_ids=query_ids) # share of the true top-10 found, ties too
measure_qps(lambda q: index.search(q, 10), queries)

Retrieval quality of result lists (``06_compare``), all per query so they can be broken down:

    ids, scores = drop_self(res.ids, res.scores, query_ids)   # the query is not its own answer
    category_precision(ids, scores, query_ids, item_ids, item_categories, k=10)
    same_product_retrieval(ids, scores, query_ids, item_ids, level="image")

Near-duplicate detection, as pairs of items put together (clusters) against the true ones:
``pair_scores(found_clusters, true_groups)`` (precision, recall, F1).

Ties: results with equal scores have no true order, so every metric here is the *expected*
value over the orders of tied results (a tie straddling the cut-off counts in proportion).
Ties are seen within the rows passed: pass a few more than k results to see ties across
the cut. Padding (id -1, score -inf) is never relevant.

Imports numpy, pandas and helpers.core only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.ids import IdMap, decode

# Results asked beyond k, so that ties across the cut (and the query itself, dropped by
# drop_self) are seen.
TIE_SLACK = 5
# Exact cosine scores this close are a tie: float32 rounding of equal vectors, not an order.
TIE_TOLERANCE = 1e-6


def recall_at_k(approx_ids: Any, exact: Any, k: int, *, exact_scores: Any = None,
                query_ids: Any = None) -> float:
    """Mean over queries of the share of the true top k found in the approximate top k.

    The one recall of the project (03-06, the sweeps, the benches). approx_ids: [nq, >= k]
    ids, best first; -1 (no result) never counts. exact: the exact answers, an id array
    [nq, >= k] or a result with ``.ids`` and ``.scores`` (``truth.exact_truth``).

    query_ids: each query's own id, left out of both answer lists (ask k + 1 results). A
    query searched with its stored vector finds itself at rank 1; counting that would add
    up to 1/k to every recall.

    exact_scores (or the result's scores): ties are handled. Every item whose exact score
    equals the k-th one (within TIE_TOLERANCE) is an equally right answer, so finding any
    of them counts; pass a few more than k exact columns (exact_truth gives TIE_SLACK more)
    to see ties across the cut. When exact search has fewer than k results for a query,
    divide by how many it has.
    """
    if exact_scores is None and hasattr(exact, "ids") and hasattr(exact, "scores"):
        exact, exact_scores = exact.ids, exact.scores
    _check_k(k)
    e = np.atleast_2d(np.asarray(exact, np.int64))
    a = np.atleast_2d(np.asarray(approx_ids, np.int64))
    s = None if exact_scores is None else np.atleast_2d(np.asarray(exact_scores, np.float64))
    if s is not None and s.shape != e.shape:
        raise ValueError(f"exact scores {s.shape} and exact ids {e.shape} differ")
    if query_ids is not None:
        a, _ = drop_self(a, np.zeros(a.shape), query_ids)
        e, s_ = drop_self(e, np.zeros(e.shape) if s is None else s, query_ids)
        s = None if s is None else s_
    a, e_k = _top(a, k, "approx_ids"), _top(e, k, "exact_ids")
    if a.shape[0] != e.shape[0]:
        raise ValueError(f"{a.shape[0]} approximate result rows, {e.shape[0]} exact")
    if a.shape[0] == 0:
        raise ValueError("no queries")
    want = np.maximum((e_k >= 0).sum(axis=1), 1)  # how many true answers a query has
    if s is None:
        above, tied = e_k, np.full_like(e_k, -1)
    else:
        # Answers above the k-th score must each be found; those tied with it share the
        # places left, so finding any of them counts, up to that many.
        kth = s[np.arange(len(s)), want - 1][:, None]  # the k-th (or last) exact score
        valid = e >= 0
        above = np.where(valid & (s > kth + TIE_TOLERANCE), e, -1)
        tied = np.where(valid & (np.abs(s - kth) <= TIE_TOLERANCE), e, -1)
    places = want - (above >= 0).sum(axis=1)  # left for the tied answers
    hits = np.empty(a.shape[0])  # right answers found (a duplicate in a row counts once)
    for b in range(0, a.shape[0], 4096):  # bounds the [block, k, m] comparison
        blk = slice(b, b + 4096)
        hits[blk] = (_found(a[blk], above[blk])
                     + np.minimum(_found(a[blk], tied[blk]), places[blk]))
    return float((hits / want).mean())


def _found(approx: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Per row, how many of ``wanted``'s ids (-1: none) appear in ``approx``."""
    hit = (approx[:, :, None] == wanted[:, None, :]) & (wanted[:, None, :] >= 0)
    return hit.any(axis=1).sum(axis=1)


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


def _top(a: np.ndarray, k: int, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[None, :]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if a.ndim != 2 or a.shape[1] < k:
        raise ValueError(f"{what} must be [nq, >= {k}], got shape {a.shape}")
    return a[:, :k]


# -- result lists: the query left out, ties --------------------------------------------------


def drop_self(ids: np.ndarray, scores: np.ndarray, query_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own id from its result row; the rest shift left, the row's end
    is padded (id -1, score -inf). A query searched with its own stored vector is found
    at rank 1 by any decent index: that says nothing about retrieval."""
    ids, scores = np.atleast_2d(ids), np.atleast_2d(scores).astype(np.float64)
    q = np.asarray(query_ids, np.int64).reshape(-1)
    if ids.shape != scores.shape or ids.shape[0] != q.shape[0]:
        raise ValueError(f"ids {ids.shape}, scores {scores.shape}, {q.shape[0]} query ids")
    keep = ids != q[:, None]
    # Stable sort on "dropped": kept slots move left in their order, dropped ones to the end.
    order = np.argsort(~keep, axis=1, kind="stable")
    out_ids = np.take_along_axis(np.where(keep, ids, -1), order, axis=1)
    out_scores = np.take_along_axis(np.where(keep, scores, -np.inf), order, axis=1)
    return out_ids, out_scores


def _tie_groups(scores: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of equal scores in a best-first row."""
    cut = np.flatnonzero(scores[1:] != scores[:-1]) + 1
    bounds = [0, *cut.tolist(), len(scores)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _has_ties(relevant: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rows where some relevant result ties with another result (only those need care)."""
    same_next = scores[:, 1:] == scores[:, :-1]
    touch = np.zeros_like(relevant)
    touch[:, 1:] |= same_next
    touch[:, :-1] |= same_next
    return (touch & relevant).any(axis=1)


def _check_ranked(relevant: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    r = np.atleast_2d(np.asarray(relevant, bool))
    s = np.atleast_2d(np.asarray(scores, np.float64))
    if r.shape != s.shape:
        raise ValueError(f"relevant {r.shape} and scores {s.shape} differ")
    if (s[:, 1:] > s[:, :-1]).any():
        raise ValueError("scores must be best first (non-increasing along each row)")
    return r, s


def expected_hits(relevant: Any, scores: Any, k: int) -> np.ndarray:
    """Expected number of relevant results in the top k of each row, ties in random order.

    relevant, scores: [nq, m] best first. A tie group straddling rank k counts
    relevant_in_group * slots_left / group_size.
    """
    r, s = _check_ranked(relevant, scores)
    _check_k(k)
    out = r[:, :k].sum(axis=1).astype(np.float64)
    for i in np.flatnonzero(_has_ties(r, s)):
        total = 0.0
        for a, b in _tie_groups(s[i]):
            if a >= k:
                break
            total += r[i, a:b].sum() * min(b - a, k - a) / (b - a)
        out[i] = total
    return out


def hit_rate(relevant: Any, scores: Any, k: int) -> np.ndarray:
    """Per row, the probability that a relevant result is in the top k (ties random)."""
    r, s = _check_ranked(relevant, scores)
    _check_k(k)
    out = r[:, :k].any(axis=1).astype(np.float64)
    for i in np.flatnonzero(_has_ties(r, s)):
        p = 0.0
        for a, b in _tie_groups(s[i]):
            if a >= k:
                break
            g, rel, slots = b - a, int(r[i, a:b].sum()), min(b - a, k - a)
            if rel:  # 1 - P(every slot of the group above the cut holds an irrelevant one)
                p = 1.0 - math.comb(g - rel, slots) / math.comb(g, slots)
                break
        out[i] = p
    return out


def reciprocal_rank(relevant: Any, scores: Any) -> np.ndarray:
    """Per row, expected 1 / rank of the first relevant result (0 when none is listed)."""
    r, s = _check_ranked(relevant, scores)
    first = np.argmax(r, axis=1)
    out = np.where(r.any(axis=1), 1.0 / (first + 1), 0.0)
    for i in np.flatnonzero(_has_ties(r, s)):
        rr = 0.0
        for a, b in _tie_groups(s[i]):
            g, rel = b - a, int(r[i, a:b].sum())
            if rel:  # first relevant at a + j: the j before it are irrelevant
                rr = sum(math.comb(g - j - 1, rel - 1) / math.comb(g, rel) / (a + j + 1)
                         for j in range(g - rel + 1))
                break
        out[i] = rr
    return out


# -- category precision and same-product retrieval -------------------------------------------


def _lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray, missing: int = -1):
    """values[keys == w] for each w (missing where absent; -1 padding is always missing)."""
    rows = IdMap(keys).rows(wanted, missing=-1)
    found = (rows >= 0) & (wanted >= 0)
    picked = values[rows] if len(keys) else missing  # row -1 picks junk, masked out here
    return np.where(found, picked, missing), found


def category_precision(
    ids: np.ndarray,
    scores: np.ndarray,
    query_ids: Any,
    item_ids: Any,
    item_categories: Any,
    k: int,
) -> pd.DataFrame:
    """Category precision@k of each query, beside its chance rate and its ceiling.

    ids, scores: [nq, >= k] results, best first, the query itself already dropped
    (`drop_self`). item_ids, item_categories: every indexed item and its category (the
    pool the results come from; a query is one of them).

    Per query: precision = expected share of the top k in the query's category (ties
    random; a missing result is a miss); chance = the share of the *other* items in that
    category, what k random results would score; ceiling = min(k, others in category) / k,
    the best any method can do (below 1 in a category with fewer than k other items).
    Queries alone in their category (nothing to find) are left out.
    """
    ids, scores = np.atleast_2d(ids), np.atleast_2d(scores)
    _top(ids, k, "ids")
    q = np.asarray(query_ids, np.int64).reshape(-1)
    items = np.asarray(item_ids, np.int64).reshape(-1)
    cats = np.asarray(item_categories).reshape(-1)
    if len(items) != len(cats):
        raise ValueError(f"{len(items)} item ids, {len(cats)} item categories")
    if ids.shape[0] != q.shape[0]:
        raise ValueError(f"{ids.shape[0]} result rows, {q.shape[0]} query ids")
    qcat, found = _lookup(items, cats, q, missing=-1)
    if not found.all():
        raise ValueError(f"query ids not among the items: {q[~found][:5].tolist()}")
    rcat, rfound = _lookup(items, cats, ids.ravel())
    rcat = rcat.reshape(ids.shape)
    relevant = rfound.reshape(ids.shape) & (rcat == qcat[:, None])
    uniq, counts = np.unique(cats, return_counts=True)
    others = counts[IdMap(uniq).rows(qcat)] - 1
    n = len(items)
    keep = others > 0
    prec = expected_hits(relevant[keep], scores[keep], k) / k
    return pd.DataFrame({
        "query_id": q[keep],
        "category": qcat[keep],
        "precision": prec,
        "chance": others[keep] / max(n - 1, 1),
        "ceiling": np.minimum(others[keep], k) / k,
    })


def multi_item_products(item_ids: Any, level: str = "image") -> np.ndarray:
    """Product ids with two or more items (pictures) among ``item_ids``."""
    pids, _ = decode(np.asarray(item_ids, np.int64).reshape(-1), level)
    uniq, counts = np.unique(pids[pids >= 0], return_counts=True)
    return uniq[counts >= 2]


def same_product_retrieval(
    ids: np.ndarray,
    scores: np.ndarray,
    query_ids: Any,
    item_ids: Any,
    level: str = "image",
    ks: Sequence[int] = (1, 5),
) -> pd.DataFrame:
    """"Find this item again": for each picture of a product with 2+ pictures, is another
    picture of the same product at rank 1, within the top 5, and its reciprocal rank.

    ids, scores: [nq, m] results (item ids, see helpers.core.ids), the query's own picture
    already dropped (`drop_self`). query_ids: the query pictures' item ids; item_ids:
    every indexed item. Queries whose product has a single picture among the items
    cannot be asked (nothing to find) and are left out: they stay as distractors.
    Returns one row per kept query: query_id, product_id, hit@<k> ..., rr.
    """
    ids, scores = np.atleast_2d(ids), np.atleast_2d(scores)
    q = np.asarray(query_ids, np.int64).reshape(-1)
    if ids.shape[0] != q.shape[0]:
        raise ValueError(f"{ids.shape[0]} result rows, {q.shape[0]} query ids")
    _top(ids, max(ks), "ids")
    qp, _ = decode(q, level)
    keep = np.isin(qp, multi_item_products(item_ids, level))
    rp, _ = decode(ids[keep], level)
    relevant = (rp == qp[keep, None]) & (rp >= 0)
    out = {"query_id": q[keep], "product_id": qp[keep]}
    for k in ks:
        out[f"hit@{k}"] = hit_rate(relevant, scores[keep], k)
    out["rr"] = reciprocal_rank(relevant, scores[keep])
    return pd.DataFrame(out)


# -- cost -------------------------------------------------------------------------------------


def latency_ms(
    search: Callable[[np.ndarray], Any],
    queries: np.ndarray,
    *,
    warmup: int = 5,
    percentiles: Sequence[float] = (50, 99),
) -> dict[str, float]:
    """Latency of one query at a time (an app answering one user): percentiles in ms,
    e.g. {"p50": 0.4, "p99": 1.2}, over every query of ``queries`` searched alone."""
    q = np.asarray(queries)
    if len(q) == 0:
        raise ValueError("no queries")
    for i in range(min(warmup, len(q))):
        search(q[i : i + 1])
    times = np.empty(len(q))
    for i in range(len(q)):
        t = time.perf_counter()
        search(q[i : i + 1])
        times[i] = time.perf_counter() - t
    return {f"p{p:g}": float(np.percentile(times, p) * 1e3) for p in percentiles}


def pareto_frontier(recall: Any, qps: Any) -> np.ndarray:
    """Indexes of the (recall, qps) points that no other point beats on both, by recall
    ascending: the line ann-benchmarks draws for each method."""
    r, s = np.asarray(recall, float), np.asarray(qps, float)
    order = np.lexsort((-r, -s))  # fastest first; at equal speed, better recall first
    keep, best = [], -np.inf
    for i in order:
        if r[i] > best:
            keep.append(i)
            best = r[i]
    return np.array(sorted(keep, key=lambda i: r[i]), dtype=np.int64)


def pair_scores(found: Any, truth: Any) -> dict[str, float]:
    """Precision, recall and F1 of the pairs of items that ``found`` puts together, against
    the pairs ``truth`` puts together (the pair-counting F-measure of a clustering).

    found, truth: a cluster label per item; items with the same label are together, and a
    negative label means alone. Precision with no pair found is 1 (nothing claimed wrongly),
    recall with no true pair is 1; F1 is 0 when both precision and recall are.
    """
    f, t = np.asarray(found, np.int64).ravel(), np.asarray(truth, np.int64).ravel()
    if f.shape != t.shape:
        raise ValueError(f"{len(f)} found labels for {len(t)} true ones")

    def pairs(*labels: np.ndarray) -> int:
        together = np.all([x >= 0 for x in labels], axis=0)
        _, n = np.unique(np.stack([x[together] for x in labels]), axis=1, return_counts=True)
        return int((n * (n - 1) // 2).sum())

    both, n_found, n_true = pairs(f, t), pairs(f), pairs(t)
    precision = both / n_found if n_found else 1.0
    recall = both / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "pairs_found": n_found,
            "pairs_true": n_true, "pairs_right": both}


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
