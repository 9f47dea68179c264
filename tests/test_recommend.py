"""Recommendations from several products (helpers.index.recommend) and their session
metrics (helpers.evaluate.sessions), on hand-computed cases: unit vectors at known angles
in the plane, where every cosine is cos(angle difference)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.evaluate.sessions import (
    category_coverage,
    measure_sessions,
    sample_sessions,
    session_precision,
)
from helpers.index import DimensionError, build_index
from helpers.index.hits import Hit
from helpers.index.recommend import (
    STRATEGIES,
    StrategyError,
    best_scores,
    check_strategy,
    index_source,
    mmr_order,
    recommend,
    round_robin,
)


def at(deg: float) -> np.ndarray:
    r = np.radians(deg)
    return np.array([np.cos(r), np.sin(r)], np.float32)


# Two clusters and the blur between them: "A" near 0 degrees, "B" near 90, "m" at 45.
ANGLES = {1: 0, 2: 12, 3: 22, 11: 90, 12: 80, 13: 66, 20: 45}
IDS = list(ANGLES)
VECS = np.stack([at(a) for a in ANGLES.values()])


@pytest.fixture(scope="module")
def space():
    index = build_index("exact", VECS, np.array(IDS))
    search, vectors_of = index_source(index, VECS, IDS, exclude=[1, 11])
    return search, vectors_of


def ids(hits: list[Hit]) -> list[int]:
    return [h.product_id for h in hits]


def run(space, strategy, negatives=None, k=5, **kw):
    search, vectors_of = space
    return recommend(search, vectors_of, [at(0), at(90)], negatives, k, strategy, pool=10, **kw)


def test_mean_is_the_blur_between(space):
    # query at 45 degrees: m (0 off), 13 (21 off), 3 (23), 2 (33), 12 (35)
    hits = run(space, "mean")
    assert ids(hits) == [20, 13, 3, 2, 12]
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)
    assert hits[1].score == pytest.approx(np.cos(np.radians(21)), abs=1e-6)


def test_best_ranks_by_the_closest_positive(space):
    # max(cos to 0, cos to 90): 12 cos10, 2 cos12, 3 cos22, 13 cos24, m cos45
    hits = run(space, "best")
    assert ids(hits) == [12, 2, 3, 13, 20]
    assert [h.score for h in hits] == pytest.approx(
        [np.cos(np.radians(a)) for a in (10, 12, 22, 24, 45)], abs=1e-6)


def test_round_robin_takes_each_positive_in_turn(space):
    # neighbours of 0: 2, 3, m, 13, 12; of 90: 12, 13, m, 3, 2
    hits = run(space, "round_robin")
    assert ids(hits) == [2, 12, 3, 13, 20]
    assert hits[1].score == pytest.approx(np.cos(np.radians(10)), abs=1e-6)  # to its own


def test_negatives(space):
    neg = [at(75)]  # "not this": something near the B cluster
    # best: max positive cosine minus the cosine to 75 degrees
    expect = {2: np.cos(np.radians(12)) - np.cos(np.radians(63)),
              3: np.cos(np.radians(22)) - np.cos(np.radians(53)),
              12: np.cos(np.radians(10)) - np.cos(np.radians(5)),
              13: np.cos(np.radians(24)) - np.cos(np.radians(9)),
              20: np.cos(np.radians(45)) - np.cos(np.radians(30))}
    hits = run(space, "best", neg)
    assert ids(hits) == [2, 3, 12, 13, 20]
    assert [h.score for h in hits] == pytest.approx([expect[i] for i in ids(hits)], abs=1e-6)
    # round robin drops a neighbour closer to the negative than to its own positive:
    # all of 90's neighbours, and m and 13 from 0's.
    assert ids(run(space, "round_robin", neg)) == [2, 3]
    # mean: 2 mean(P) - neg points at about 2.6 degrees
    q = 2 * (at(0) + at(90)) / 2 - at(75)
    deg = np.degrees(np.arctan2(q[1], q[0]))
    hits = run(space, "mean", neg, k=2)
    assert ids(hits) == [2, 3]
    assert hits[0].score == pytest.approx(np.cos(np.radians(12 - deg)), abs=1e-6)


def test_opposite_positives_fall_back_to_best(space):
    search, vectors_of = space
    hits = recommend(search, vectors_of, [at(0), at(180)], None, 3, "mean", pool=10)
    assert ids(hits) == ids(recommend(search, vectors_of, [at(0), at(180)], None, 3, "best",
                                      pool=10))


def test_mmr_skips_near_duplicates():
    hits = [Hit(1, 0.99), Hit(2, 0.98), Hit(3, 0.90)]
    v = np.stack([at(0), at(1), at(60)])
    # mmr 0.5: after 1, item 2 gains .5*.98 - .5*cos(1) < 0; item 3 .5*.90 - .5*cos(60) = .2
    assert ids(mmr_order(hits, v, 3, 0.5)) == [1, 3, 2]
    assert ids(mmr_order(hits, v, 3, 0.0)) == [1, 2, 3]  # relevance alone
    assert ids(mmr_order(hits, v, 2, 0.5)) == [1, 3]
    assert mmr_order(hits, v, 2, 0.5)[1].score == 0.90  # the strategy's score is kept


def test_mmr_through_recommend(space):
    # best row 12, 2, 3, 13, m; with mmr 0.5 after 12: 13 is 14 degrees from 12 -> 2 next
    hits = run(space, "best", k=3, mmr=0.5)
    assert ids(hits)[0] == 12 and set(ids(hits)) <= {12, 2, 3, 13, 20}
    assert ids(hits)[1] == 2


def test_round_robin_and_best_scores_helpers():
    a = [Hit(1, 0.9), Hit(2, 0.8)]
    b = [Hit(2, 0.95), Hit(3, 0.7), Hit(4, 0.6)]
    assert ids(round_robin([a, b])) == [1, 2, 3, 4]
    assert ids(round_robin([b, a])) == [2, 1, 3, 4]
    assert round_robin([]) == []
    v = np.stack([at(0), at(30)])
    s = best_scores(v, np.stack([at(0)]), np.stack([at(90)]))
    assert s == pytest.approx([1 - 0, np.cos(np.radians(30)) - np.cos(np.radians(60))])


def test_bad_input(space):
    search, vectors_of = space
    with pytest.raises(StrategyError, match="strategy must be one of mean, best"):
        recommend(search, vectors_of, [at(0)], None, 3, "median")
    for bad in (1.5, -0.1, True, "0.3"):
        with pytest.raises(StrategyError, match="mmr"):
            check_strategy("best", bad)
    assert check_strategy("mean", None) == ("mean", 0.0)
    with pytest.raises(DimensionError):
        recommend(search, vectors_of, [at(0)], [[1.0, 0, 0]], 3, "best")
    assert set(STRATEGIES) == {"mean", "best", "round_robin"}


# -- session metrics --------------------------------------------------------------------------


def test_category_coverage_hand_computed():
    assert category_coverage([5, 5, 7, 9], [5, 7, 8], 4) == pytest.approx(2 / 3)
    assert category_coverage([5, 5, 7, 9], [5, 7, 8], 2) == pytest.approx(1 / 3)
    assert category_coverage([5, 5, 7, 9], [5, 5, 7], 3) == 1.0  # distinct categories
    assert category_coverage([], [5, 7], 10) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        category_coverage([1], [], 3)
    with pytest.raises(ValueError, match="k must"):
        category_coverage([1], [1], 0)


def test_session_precision_hand_computed():
    assert session_precision([5, 5, 7, 9], [5, 7, 8], 4) == pytest.approx(3 / 4)
    assert session_precision([5, 9, 9, 9], [5, 7], 2) == pytest.approx(1 / 2)
    assert session_precision([5, 7], [5, 7], 4) == pytest.approx(2 / 4)  # short row
    with pytest.raises(ValueError, match="result_categories"):
        session_precision(["x"], [5], 4)


def test_sample_sessions():
    pids = np.arange(100, 130)
    cats = np.repeat([1, 2, 3, 4, 5, 6], 5)
    cats[-1] = 9  # a category of one product is never drawn
    sessions = sample_sessions(pids, cats, 50, seed=3)
    assert sessions == sample_sessions(pids, cats, 50, seed=3)  # seeded
    cat_of = dict(zip(pids.tolist(), cats.tolist(), strict=True))
    for s in sessions:
        got = {cat_of[p] for p in s}
        assert 2 <= len(s) <= 4 and len(set(s)) == len(s)
        assert 2 <= len(got) <= 3 and 9 not in got
    assert {len(s) for s in sessions} == {2, 3, 4}
    with pytest.raises(ValueError, match="categories have 2"):
        sample_sessions([1, 2, 3], [1, 1, 2], 5)


def test_measure_sessions():
    cat_of = {1: 10, 2: 10, 3: 20, 4: 20, 5: 30}
    sessions = [[1, 3], [2, 4]]
    table = measure_sessions({"same": lambda s: [2, 1][:1] if s[0] == 1 else [1, 3],
                              "none": lambda s: []}, sessions, cat_of, k=2)
    assert isinstance(table, pd.DataFrame)
    # session 1: [2] -> covers 10 of {10, 20}: 1/2, precision 1/2; session 2: [1, 3] -> 1, 1
    assert table.loc["same", "coverage"] == pytest.approx(0.75)
    assert table.loc["same", "precision"] == pytest.approx(0.75)
    assert table.loc["same", "short"] == 1 and table.loc["none", "coverage"] == 0
