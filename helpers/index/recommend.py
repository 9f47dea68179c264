"""Recommendations from several products: positive and negative examples scored three
ways, and an MMR option against near-identical rows (as Qdrant's and Marqo's recommend).

    from helpers.index.recommend import index_source, recommend
    search, vectors_of = index_source(index, vectors, ids, exclude=session)
    hits = recommend(search, vectors_of, pos_vectors, neg_vectors, k=10, strategy="best")
    hits = recommend(..., strategy="round_robin", mmr=0.3)     # a little diversity

Strategies (STRATEGIES), P the positives' unit vectors, N the negatives':

* ``mean``: one search with the mean of P (with negatives, Qdrant's ``average_vector``:
  mean(P) + (mean(P) - mean(N))). What the products share: a session of a T-shirt, a bag
  and a boot gets one blurred row between them.
* ``best``: candidates are the union of each positive's own neighbours, rescored exactly:
  max over P of the cosine, minus max over N (0 without negatives). A candidate close to
  any one positive ranks high; close to a "not this", low.
* ``round_robin``: each positive's own neighbours, taken in turn (the first of each, then
  the second of each ...), a product once; with negatives, a neighbour closer to a
  negative than to its own positive is dropped. Every product of the session gets rows.

``mmr`` (0 = off, up to 1): maximal marginal relevance over the strategy's candidates,
picking each next result by (1 - mmr) * score - mmr * (its highest cosine to a result
already picked), so near-identical products do not fill the row. Scores stay the
strategy's; the order is MMR's.

The strategies are pure functions over two callables, so the apps (`helpers.serve.related`,
any index method, image-level included) and the evaluation (`helpers.evaluate.sessions`,
an index over product vectors: `index_source`) run the same code:

* ``search(query [d], n)`` -> up to n `Hit`, best first, each product once, the session's
  products left out;
* ``vectors_of(product ids)`` -> their unit vectors [m, d].

Imports numpy and the index layer (protocol, hits) only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from helpers.core.ids import IdMap
from helpers.index.errors import IndexInputError
from helpers.index.hits import Hit, to_hits
from helpers.index.protocol import as_unit_vectors, check_k

STRATEGIES = ("mean", "best", "round_robin")
LABELS = {"mean": "mean of the products", "best": "best score",
          "round_robin": "round robin"}  # what the apps show
# Measured on mixed sessions (bench/bench_recommend.py, 200 sessions): round-robin covers
# the most of a session's categories in the top 10 on both samples (0.94 vs the mean's
# 0.65 built-in, 0.50 vs 0.38 real), at a precision no lower than the mean's.
DEFAULT_STRATEGY = "round_robin"
POOL = 3  # candidates asked per query: POOL * k (room for rescoring, negatives and MMR)

Search = Callable[[np.ndarray, int], list[Hit]]
VectorsOf = Callable[[Sequence[int]], np.ndarray]


class StrategyError(IndexInputError):
    """An unknown strategy name or an MMR weight outside [0, 1]."""


def check_strategy(strategy: Any, mmr: Any = 0.0) -> tuple[str, float]:
    """(strategy, mmr) checked: a name of STRATEGIES and a weight in [0, 1]."""
    if strategy not in STRATEGIES:
        raise StrategyError(f"strategy must be one of {', '.join(STRATEGIES)}, not "
                            f"{str(strategy)[:40]!r}")
    if mmr is None:
        mmr = 0.0
    if isinstance(mmr, bool) or not isinstance(mmr, int | float) or not 0 <= mmr <= 1:
        raise StrategyError(f"mmr is a diversity weight from 0 (off) to 1, not {mmr!r}")
    return strategy, float(mmr)


def recommend(search: Search, vectors_of: VectorsOf, positives: Any, negatives: Any = None,
              k: int = 10, strategy: str = DEFAULT_STRATEGY, *, mmr: float = 0.0,
              pool: int | None = None) -> list[Hit]:
    """Up to k products for positive examples [p, d] and negative ones [n, d] (or None).

    See the module docstring for ``search``, ``vectors_of`` and the strategies. ``pool``:
    candidates asked per search (default POOL * k).
    """
    strategy, mmr = check_strategy(strategy, mmr)
    k = check_k(k)
    pos = as_unit_vectors(positives, what="positive vectors")
    neg = (np.zeros((0, pos.shape[1]), np.float32) if negatives is None or len(negatives) == 0
           else as_unit_vectors(negatives, pos.shape[1], "negative vectors"))
    n = max(int(pool or POOL * k), k)
    if strategy == "mean":
        cands = _mean(search, vectors_of, pos, neg, n)
    elif strategy == "best":
        cands = _best(search, vectors_of, pos, neg, n)
    else:
        cands = _round_robin(search, vectors_of, pos, neg, n)
    if mmr > 0 and len(cands) > 1:
        return mmr_order(cands, vectors_of([h.product_id for h in cands]), k, mmr)
    return cands[:k]


def _mean(search: Search, vectors_of: VectorsOf, pos: np.ndarray, neg: np.ndarray,
          n: int) -> list[Hit]:
    q = pos.mean(axis=0)
    if len(neg):
        q = q + (q - neg.mean(axis=0))
    norm = float(np.linalg.norm(q))
    if norm < 1e-6:  # opposite examples cancel: no direction left to search
        return _best(search, vectors_of, pos, neg, n)
    return search((q / norm).astype(np.float32), n)


def _best(search: Search, vectors_of: VectorsOf, pos: np.ndarray, neg: np.ndarray,
          n: int) -> list[Hit]:
    found: dict[int, Hit] = {}
    for p in pos:
        for h in search(p, n):
            # keep the picture that matched best (image-level indexes)
            if h.product_id not in found or (h.score or -2) > (found[h.product_id].score or -2):
                found[h.product_id] = h
    if not found:
        return []
    ids = list(found)
    v = np.asarray(vectors_of(ids), np.float32)
    score = best_scores(v, pos, neg)
    order = np.argsort(-score, kind="stable")  # ties: the order they were found in
    return [replace(found[ids[i]], score=float(score[i])) for i in order]


def best_scores(v: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Best-score of unit rows v [m, d]: max cosine to a positive minus max to a negative
    (nothing subtracted without negatives)."""
    s = (v @ pos.T).max(axis=1)
    if len(neg):
        s = s - (v @ neg.T).max(axis=1)
    return s.astype(np.float32)


def _round_robin(search: Search, vectors_of: VectorsOf, pos: np.ndarray, neg: np.ndarray,
                 n: int) -> list[Hit]:
    lists = [search(p, n) for p in pos]
    if len(neg):
        kept = []
        for p, hits in zip(pos, lists, strict=True):
            if hits:
                v = np.asarray(vectors_of([h.product_id for h in hits]), np.float32)
                near_neg = (v @ neg.T).max(axis=1) > v @ p
                hits = [h for h, drop in zip(hits, near_neg.tolist(), strict=True) if not drop]
            kept.append(hits)
        lists = kept
    return round_robin(lists)


def round_robin(lists: Sequence[Sequence[Hit]]) -> list[Hit]:
    """The first hit of each list, then the second of each ..., a product once."""
    out: list[Hit] = []
    seen: set[int] = set()
    for rank in range(max((len(x) for x in lists), default=0)):
        for hits in lists:
            if rank < len(hits) and hits[rank].product_id not in seen:
                seen.add(hits[rank].product_id)
                out.append(hits[rank])
    return out


def mmr_order(hits: Sequence[Hit], vectors: np.ndarray, k: int, mmr: float) -> list[Hit]:
    """k of ``hits`` by maximal marginal relevance: each next one maximises
    (1 - mmr) * score - mmr * (max cosine to those already picked). ``vectors``: the hits'
    unit vectors, in order."""
    v = np.asarray(vectors, np.float32)
    rel = np.array([h.score if h.score is not None else 0.0 for h in hits], np.float32)
    sims = v @ v.T
    picked: list[int] = []
    closest = np.zeros(len(hits), np.float32)  # max cosine to the picked ones (none: 0)
    free = np.ones(len(hits), bool)
    for _ in range(min(k, len(hits))):
        gain = np.where(free, (1 - mmr) * rel - mmr * closest, -np.inf)
        i = int(np.argmax(gain))  # ties: the earlier candidate
        closest = sims[i] if not picked else np.maximum(closest, sims[i])
        picked.append(i)
        free[i] = False
    return [hits[i] for i in picked]


def index_source(index: Any, vectors: np.ndarray, ids: Sequence[int],
                 exclude: Sequence[int] = ()) -> tuple[Search, VectorsOf]:
    """``search`` and ``vectors_of`` over a product-level index and the vectors it was built
    from (rows matching ``ids``); the products in ``exclude`` are never returned."""
    ids = np.asarray(ids, np.int64)
    rows = IdMap(ids)
    unit = as_unit_vectors(vectors)
    skip = {int(x) for x in exclude}

    def search(q: np.ndarray, n: int) -> list[Hit]:
        want = min(n + len(skip), len(index))
        hits = to_hits(index.search(np.asarray(q, np.float32)[None], want))
        return [h for h in hits if h.product_id not in skip][:n]

    def vectors_of(pids: Sequence[int]) -> np.ndarray:
        return unit[rows.rows(np.asarray(pids, np.int64))]

    return search, vectors_of
