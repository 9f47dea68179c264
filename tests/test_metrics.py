from __future__ import annotations

import numpy as np
import pytest

from helpers.core.ids import encode
from helpers.evaluate import metrics as metrics_module
from helpers.evaluate.metrics import (
    category_precision,
    drop_self,
    expected_hits,
    hit_rate,
    latency_ms,
    measure_qps,
    multi_item_products,
    pair_scores,
    pareto_frontier,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    same_product_retrieval,
)


def test_recall_at_k():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact, 4) == 1.0
    approx = np.array([[4, 3, 9, 9], [5, 0, 0, 0]])  # order does not matter
    assert recall_at_k(approx, exact, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert recall_at_k(approx, exact, 2) == pytest.approx((0 + 1 / 2) / 2)
    # -1 padding never counts; duplicates count once.
    assert recall_at_k(np.array([[-1, -1, 1, 1]]), np.array([[1, 2, 3, -1]]), 4) == pytest.approx(
        1 / 3
    )
    assert recall_at_k(exact[0], exact[0], 3) == 1.0  # one query as 1-D


def test_recall_ties_and_self_by_hand():
    exact = np.array([[1, 2, 3, 4]])
    scores = np.array([[0.9, 0.8, 0.8, 0.1]])
    # k=2: 2 and 3 tie for the 2nd place, so [1, 3] is as right as [1, 2].
    assert recall_at_k([[1, 3]], exact, 2) == 0.5
    assert recall_at_k([[1, 3]], exact, 2, exact_scores=scores) == 1.0
    assert recall_at_k([[3, 2]], exact, 2, exact_scores=scores) == 0.5  # 1 missed
    assert recall_at_k([[4, 9]], exact, 2, exact_scores=scores) == 0.0  # 4 is below the tie
    # The query (id 7) found itself first: left out, the rest shift up; counted, it costs a slot.
    assert recall_at_k([[7, 1, 2]], [[1, 2, 5]], 2, query_ids=[7]) == 1.0
    assert recall_at_k([[7, 1, 2]], [[1, 2, 5]], 2) == 0.5
    # ...and left out of the exact answers when they hold it (a bare Flat search).
    assert recall_at_k([[7, 1, 2]], [[7, 1, 5]], 2, query_ids=[7]) == 0.5
    with pytest.raises(ValueError, match="scores"):
        recall_at_k([[1, 2]], exact, 2, exact_scores=[[0.9, 0.8]])


def test_recall_errors():
    a = np.zeros((2, 5), np.int64)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(a, a, 0)
    with pytest.raises(ValueError, match=">= 6"):
        recall_at_k(a, a, 6)
    with pytest.raises(ValueError, match="rows"):
        recall_at_k(a, a[:1], 3)


def test_precision_at_k():
    neighbours = np.array([[1, 1, 2, 1], [3, 3, 3, 3]])
    assert precision_at_k(neighbours, np.array([1, 3]), 4) == pytest.approx((3 / 4 + 1) / 2)
    assert precision_at_k(neighbours, [2, 3], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="query categories"):
        precision_at_k(neighbours, [1], 2)


class FakeClock:
    """A clock that only moves when a search 'takes' time: no wall-clock in tests."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_measure_qps(monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(metrics_module, "time", clock)

    def search(q):
        calls.append(len(q))
        clock.now += 0.01 if len(calls) != 2 else 0.02  # one slower run: best-of keeps 10 ms

    qps = measure_qps(search, np.zeros((50, 4)), repeat=2, warmup=1)
    assert calls == [50, 50, 50]
    assert qps == pytest.approx(5000)  # 50 queries in the best run's 10 ms


@pytest.mark.parametrize(("once", "runs"), [(0.001, 300), (0.04, 7), (1.0, 3), (1e-7, 50)])
def test_batch_qps_repeats_to_fill_its_budget(monkeypatch, once, runs):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(metrics_module, "time", clock)

    def search(q):
        calls.append(len(q))
        clock.now += once

    qps = metrics_module.batch_qps(search, np.zeros((40, 4)), budget_s=0.3)
    # the first run warms up and times one batch: 3 to 50 timed runs fill 0.3 s
    assert len(calls) == 1 + min(50, max(3, runs))
    assert qps == pytest.approx(40 / once)


# -- retrieval metrics of 06_compare, on hand-computed cases -----------------------------------

def test_drop_self_shifts_and_pads():
    ids = np.array([[5, 1, 2], [1, 5, 3], [7, 8, 9]])
    scores = np.array([[1.0, 0.8, 0.7], [0.9, 0.9, 0.1], [0.5, 0.4, 0.3]])
    got_ids, got_scores = drop_self(ids, scores, [5, 5, 6])
    assert got_ids.tolist() == [[1, 2, -1], [1, 3, -1], [7, 8, 9]]  # 6 absent: row unchanged
    assert got_scores[0].tolist() == [0.8, 0.7, -np.inf]
    assert got_scores[1].tolist() == pytest.approx([0.9, 0.1, -np.inf])


def test_ties_are_averaged_over_orders():
    # One relevant result tied with an irrelevant one at rank 1: half the time first.
    rel, sc = [[False, True, False]], [[0.9, 0.9, 0.5]]
    assert hit_rate(rel, sc, 1) == pytest.approx([0.5])
    assert hit_rate(rel, sc, 2) == pytest.approx([1.0])
    assert reciprocal_rank(rel, sc) == pytest.approx([(1 + 1 / 2) / 2])
    assert expected_hits(rel, sc, 1) == pytest.approx([0.5])
    # Three-way tie, one relevant, two slots above the cut: 1 - C(2,2)/C(3,2) = 2/3.
    rel3, sc3 = [[False, False, True]], [[0.7, 0.7, 0.7]]
    assert hit_rate(rel3, sc3, 2) == pytest.approx([2 / 3])
    assert reciprocal_rank(rel3, sc3) == pytest.approx([(1 + 1 / 2 + 1 / 3) / 3])
    assert expected_hits(rel3, sc3, 2) == pytest.approx([2 / 3])
    # Two relevant of three tied: first relevant at rank 1 w.p. 2/3, at rank 2 w.p. 1/3.
    assert reciprocal_rank([[True, True, False]], sc3) == pytest.approx([2 / 3 + 1 / 3 / 2])
    # No ties: plain values; no relevant result: 0.
    assert reciprocal_rank([[False, False, True]], [[3, 2, 1]]) == pytest.approx([1 / 3])
    assert reciprocal_rank([[False, False]], [[2, 1]]) == pytest.approx([0.0])
    with pytest.raises(ValueError, match="best first"):
        hit_rate([[True, False]], [[0.1, 0.9]], 1)


def _catalogue():
    # items 1-4 in category 10, items 5-6 in category 20, item 7 alone in category 30.
    items = np.arange(1, 8)
    cats = np.array([10, 10, 10, 10, 20, 20, 30])
    return items, cats


def test_category_precision_ties_chance_and_query_excluded():
    items, cats = _catalogue()
    # Query 1 found itself first (dropped), then 2 (same), then 5 and 3 tied at the cut.
    ids = np.array([[1, 2, 5, 3]])
    scores = np.array([[1.0, 0.9, 0.8, 0.8]])
    ids, scores = drop_self(ids, scores, [1])
    t = category_precision(ids, scores, [1], items, cats, k=2)
    # rank 1: item 2 (hit); rank 2: 5 or 3 with equal chance -> 1 + 1/2 hits of 2
    assert t["precision"].tolist() == pytest.approx([0.75])
    assert t["chance"].tolist() == pytest.approx([3 / 6])  # 3 others in 10, 6 other items
    assert t["ceiling"].tolist() == pytest.approx([1.0])


def test_category_precision_small_category_and_lonely_query():
    items, cats = _catalogue()
    # Query 5: its category has one other item (6) for k=3; query 7 is alone in its category.
    ids = np.array([[6, 1, 2], [1, 2, 3]])
    scores = np.array([[0.9, 0.5, 0.4], [0.9, 0.8, 0.7]])
    t = category_precision(ids, scores, [5, 7], items, cats, k=3)
    assert t["query_id"].tolist() == [5]  # 7: nothing to find, left out
    assert t["precision"].tolist() == pytest.approx([1 / 3])
    assert t["ceiling"].tolist() == pytest.approx([1 / 3])  # the best possible here
    assert t["chance"].tolist() == pytest.approx([1 / 6])
    # Padding (-1) is a miss, never a hit.
    t = category_precision(np.array([[6, -1, -1]]), np.array([[0.9, -np.inf, -np.inf]]),
                           [5], items, cats, k=3)
    assert t["precision"].tolist() == pytest.approx([1 / 3])


def test_same_product_single_picture_products_are_not_queries():
    # Product 100: 3 pictures; product 200: 2; product 300: 1 picture only.
    items = encode([100, 100, 100, 200, 200, 300], [0, 1, 2, 0, 1, 0])
    assert multi_item_products(items).tolist() == [100, 200]
    queries = items  # every picture asked, itself among its results
    res_ids = np.array([
        [items[0], items[3], items[1], items[2]],  # 100/0: other picture at rank 2
        [items[1], items[0], items[3], items[5]],  # 100/1: rank 1
        [items[2], items[5], items[4], items[3]],  # 100/2: none of 100 in the list
        [items[3], items[4], items[0], items[1]],  # 200/0: rank 1
        [items[4], items[0], items[3], items[1]],  # 200/1: rank 2, tied with rank 1
        [items[5], items[0], items[1], items[2]],  # 300/0: no other picture: not a query
    ])
    res_scores = np.array([[1, .9, .8, .7], [1, .9, .8, .7], [1, .9, .8, .7],
                           [1, .9, .8, .7], [1, .9, .9, .7], [1, .9, .8, .7]])
    ids, scores = drop_self(res_ids, res_scores, queries)
    t = same_product_retrieval(ids, scores, queries, items, ks=(1, 2))
    assert t["product_id"].tolist() == [100, 100, 100, 200, 200]
    assert t["hit@1"].tolist() == pytest.approx([0, 1, 0, 1, 0.5])
    assert t["hit@2"].tolist() == pytest.approx([1, 1, 0, 1, 1])
    assert t["rr"].tolist() == pytest.approx([1 / 2, 1, 0, 1, (1 + 1 / 2) / 2])


def test_latency_and_pareto(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(metrics_module, "time", clock)
    steps = iter([0.001, 0.002, 0.002, 0.003, 0.002, 0.010])  # warmup, then 5 queries

    def one(q):
        clock.now += next(steps)

    lat = latency_ms(one, np.zeros((5, 3)), warmup=1)
    assert set(lat) == {"p50", "p99"}
    assert lat["p50"] == pytest.approx(2.0) and 3.0 < lat["p99"] <= 10.0
    recall = [0.5, 0.8, 0.7, 0.95, 1.0]
    qps = [1000, 800, 500, 100, 120]
    # (0.7, 500) is beaten by (0.8, 800); (0.95, 100) by (1.0, 120)
    assert pareto_frontier(recall, qps).tolist() == [0, 1, 4]


def test_pair_scores_hand_computed():
    # found: {0, 1, 2} and {4, 5}: 3 + 1 = 4 pairs; true: {0, 1} and {3, 4}: 2 pairs.
    # right: (0, 1) only -> precision 1/4, recall 1/2, F1 = 2 * 1/8 / (3/4) = 1/3.
    s = pair_scores([0, 0, 0, -1, 7, 7], [5, 5, -1, 9, 9, -2])
    assert (s["pairs_found"], s["pairs_true"], s["pairs_right"]) == (4, 2, 1)
    assert s["precision"] == pytest.approx(1 / 4) and s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(1 / 3)
    # the labels' values do not matter, only who is with whom
    assert pair_scores([3, 3, 3, -1, 0, 0], [1, 1, -5, 2, 2, -7]) == s


def test_pair_scores_edges():
    perfect = pair_scores([1, 1, 2, 2, -1], [0, 0, 3, 3, -1])
    assert perfect["precision"] == perfect["recall"] == perfect["f1"] == 1.0
    none_found = pair_scores([-1, -1, -1], [0, 0, -1])
    assert (none_found["precision"], none_found["recall"], none_found["f1"]) == (1.0, 0.0, 0.0)
    all_wrong = pair_scores([0, 1, 0, 1], [0, 0, 1, 1])
    assert (all_wrong["precision"], all_wrong["recall"], all_wrong["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="3 found labels for 2 true ones"):
        pair_scores([0, 0, 1], [0, 0])
