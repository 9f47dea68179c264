"""Recommendations for a session of several products: sampled mixed sessions, and how well
a strategy's row serves every product of the session.

    sessions = sample_sessions(product_ids, category_ids, 200, seed=0)   # 2-4 products, 2-3 cats
    table = measure_sessions({"mean": run_mean, "best": run_best}, sessions, category_of)

Per session and row of k results (ids in the order the strategy returned them):

* ``category_coverage``: the share of the session's distinct categories found among the
  top k (1.0: every kind of product viewed gets at least one suggestion);
* ``session_precision``: the share of the top k whose category is the category of one of
  the session's products (k in the denominator: a short row counts its missing places as
  misses).

Rows are taken in the strategy's order, without tie expansion (a round-robin row is not
sorted by score). The strategies themselves are `helpers.index.recommend`.
Imports numpy and pandas only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def category_coverage(result_categories: Sequence[int], session_categories: Sequence[int],
                      k: int) -> float:
    """Share of the distinct session categories among the first k result categories."""
    want = set(_ints(session_categories, "session_categories"))
    if not want:
        raise ValueError("a session needs at least one category")
    got = set(_ints(result_categories, "result_categories")[:_k(k)])
    return len(want & got) / len(want)


def session_precision(result_categories: Sequence[int], session_categories: Sequence[int],
                      k: int) -> float:
    """Share of the top k results in a category of one of the session's products."""
    want = set(_ints(session_categories, "session_categories"))
    if not want:
        raise ValueError("a session needs at least one category")
    top = _ints(result_categories, "result_categories")[:_k(k)]
    return sum(c in want for c in top) / k


def sample_sessions(product_ids: Sequence[int], category_ids: Sequence[int], n: int,
                    seed: int = 0, sizes: tuple[int, int] = (2, 4),
                    n_categories: tuple[int, int] = (2, 3),
                    min_members: int = 2) -> list[list[int]]:
    """``n`` sessions of ``sizes`` products (inclusive) from ``n_categories`` distinct
    categories, each of those categories with at least one product in the session.

    Categories are drawn among those with ``min_members`` products or more (so that there
    is something else of the category to find), uniformly: a big category is not
    favoured. Seeded: the same inputs give the same sessions.
    """
    pids = np.asarray(product_ids, np.int64)
    cats = np.asarray(category_ids, np.int64)
    if pids.shape != cats.shape:
        raise ValueError(f"{len(pids)} product ids for {len(cats)} category ids")
    lo, hi = n_categories
    if not 1 <= lo <= hi or not max(lo, sizes[0]) <= sizes[1]:
        raise ValueError(f"cannot draw {sizes} products from {n_categories} categories")
    uniq, counts = np.unique(cats, return_counts=True)
    eligible = uniq[counts >= min_members]
    if len(eligible) < lo:
        raise ValueError(f"{len(eligible)} categories have {min_members}+ products; "
                         f"sessions need {lo}")
    members = {int(c): pids[cats == c] for c in eligible}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        nc = int(rng.integers(lo, min(hi, len(eligible)) + 1))
        chosen = rng.choice(eligible, nc, replace=False)
        size = int(rng.integers(max(sizes[0], nc), sizes[1] + 1))
        # one product of each chosen category, the rest from any of them
        session = [int(rng.choice(members[int(c)])) for c in chosen]
        pool = np.setdiff1d(np.concatenate([members[int(c)] for c in chosen]), session)
        extra = min(size - nc, len(pool))
        session += [int(x) for x in rng.choice(pool, extra, replace=False)]
        out.append([int(x) for x in rng.permutation(session)])
    return out


def measure_sessions(strategies: Mapping[str, Callable[[list[int]], Sequence[int]]],
                     sessions: Sequence[Sequence[int]],
                     category_of: Mapping[int, int] | Callable[[int], Any],
                     k: int = 10) -> pd.DataFrame:
    """Mean coverage and precision per strategy over the sessions.

    strategies: name -> function of a session (product ids) returning the recommended
    product ids, best first. Returns one row per strategy: ``coverage``, ``precision``
    (means over sessions), ``sessions``, ``short`` (sessions answered with fewer than k).
    """
    look = category_of.__getitem__ if isinstance(category_of, Mapping) else category_of
    rows = []
    for name, run in strategies.items():
        cov, prec, short = [], [], 0
        for s in sessions:
            got = [int(x) for x in run(list(s))]
            short += len(got) < k
            rc, sc = [look(int(x)) for x in got], [look(int(x)) for x in s]
            cov.append(category_coverage(rc, sc, k))
            prec.append(session_precision(rc, sc, k))
        rows.append({"strategy": name, "coverage": float(np.mean(cov)),
                     "precision": float(np.mean(prec)), "sessions": len(sessions),
                     "short": short})
    return pd.DataFrame(rows).set_index("strategy")


def _ints(values: Sequence[int], what: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be category ids (integers)") from None


def _k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    return int(k)
