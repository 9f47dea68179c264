"""Exact answers for sampled queries at any size (helpers.evaluate.truth), the streamed
exact search under them, and the notebooks' choice of index by size (helpers.index.sizing)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.evaluate.metrics import TIE_SLACK, recall_at_k
from helpers.evaluate.sweep import knob_sweep
from helpers.evaluate.truth import exact_truth, query_sample, query_vectors
from helpers.index import build_index
from helpers.index.exact import cosine_top_k, streamed_top_k
from helpers.index.sizing import ivf_lists, plan_index


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3000, 24)).astype(np.float32)
    ids = rng.permutation(10**6)[:3000].astype(np.int64) + 7  # not row numbers, not sorted
    return v, ids


@pytest.mark.parametrize("rows", [1, 257, 1000, 5000])
def test_streamed_search_equals_one_matrix_product(data, rows):
    v, _ = data
    q = v[::97]
    a_rows, a_scores = streamed_top_k(q, v, 10, rows=rows)
    b_rows, b_scores = cosine_top_k(q, v, 10)
    assert (a_rows == b_rows).all()
    assert np.allclose(a_scores, b_scores, atol=1e-6)


def test_streamed_search_leaves_each_query_out(data):
    v, _ = data
    own = np.arange(0, 3000, 97)
    got, _ = streamed_top_k(v[own], v, 10, rows=400, exclude_rows=own)
    assert not (got == own[:, None]).any()
    with_self, _ = cosine_top_k(v[own], v, 11)
    assert (with_self[:, 0] == own).all() and (got == with_self[:, 1:]).all()


def test_exact_truth_of_sampled_ids(data):
    v, ids = data
    qids = query_sample(ids, 50, seed=1)
    assert len(set(qids)) == 50 and set(qids) <= set(ids)
    assert (query_sample(ids, 10**6) == ids).all()  # fewer items than asked: every one
    truth = exact_truth(v, ids, qids, 5, rows=333)
    rows = {int(i): r for r, i in enumerate(ids)}
    assert np.allclose(query_vectors(v, ids, qids), v[[rows[int(i)] for i in qids]])
    assert not (truth.ids == qids[:, None]).any()
    ref = build_index("exact", v, ids).search_by_id(qids, 5 + TIE_SLACK)
    assert truth.ids.shape == (50, 5 + TIE_SLACK)  # a few more: ties across the cut show
    assert (truth.ids == ref.ids).all()


def test_recall_with_the_query_left_out_differs_from_recall_with_it(data):
    """Self-matches would inflate recall: a poor index that finds only the query itself
    scores 0.1 at k=10 with the query counted, 0 with it left out (as everywhere here)."""
    v, ids = data
    qids = query_sample(ids, 40, seed=2)
    truth = exact_truth(v, ids, qids, 10)
    self_only = np.concatenate([qids[:, None], np.full((40, 9), -1)], axis=1)
    with_self = build_index("exact", v, ids).search(query_vectors(v, ids, qids), 10).ids
    assert recall_at_k(self_only, with_self, 10) == pytest.approx(0.1)
    assert recall_at_k(self_only, truth, 10, query_ids=qids) == 0.0
    # An index that returns the query first and then the true top 9: 0.9 honestly, while
    # counting itself against a truth that contains it too would say 1.0.
    found = build_index("exact", v, ids).search(query_vectors(v, ids, qids), 11)
    assert recall_at_k(found.ids[:, :10], with_self, 10) == 1.0
    assert recall_at_k(found.ids[:, :10], truth, 10, query_ids=qids) == pytest.approx(0.9)
    assert recall_at_k(found.ids, truth, 10, query_ids=qids) == 1.0  # asked k + 1: all found
    # The sweep leaves the query out of the index's answers as the truth does.
    t = knob_sweep(build_index("faiss", v, ids, factory="IVF16,Flat"), "nprobe", [16],
                   query_vectors(v, ids, qids), truth, 10, query_ids=qids)
    assert t["recall"].iloc[0] == pytest.approx(1.0)


def test_the_index_is_chosen_by_size_and_the_reason_is_said():
    small = plan_index(50_000, 1280, "HNSW32")
    assert small.method == "faiss" and small.params == {"factory": "HNSW32"}
    assert not small.compressed and "fit in RAM" in small.reason
    big = plan_index(12_371_293, 1280, "HNSW32")
    assert big.compressed and big.method == "faiss_compressed"
    assert "63.3 GB" in big.reason and "faiss_compressed" in big.reason
    assert big.params["nlist"] == ivf_lists(12_371_293) == 16384
    assert plan_index(101, 8, compressed_above=100).compressed
    assert ivf_lists(1000) == 25  # at least 39 training points a list


def test_recall_counts_an_item_tied_with_the_kth_answer():
    """Duplicated vectors tie: exact search keeps one of a tied pair at the k-th place, an
    index may return its twin. Either is right; recall says 1.0, not 0.9."""
    rng = np.random.default_rng(3)
    v = rng.normal(size=(400, 16)).astype(np.float32)
    v[200:] = v[:200]  # every vector twice: ids i and i + 200 tie for every query
    ids = np.arange(400, dtype=np.int64)
    qids = np.arange(0, 200, 7, dtype=np.int64)
    truth = exact_truth(v, ids, qids, 2)  # the twin first (cosine 1), then tied pairs
    assert np.allclose(truth.scores[:, 1], truth.scores[:, 2])  # the 2nd place is a tie
    # Answer the 2nd place with its twin (row + or - 200), which exact search ranked 3rd.
    swapped = truth.ids[:, :2].copy()
    swapped[:, 1] = truth.ids[:, 2]
    assert (np.abs(swapped[:, 1] - truth.ids[:, 1]) == 200).all()
    assert recall_at_k(swapped, truth.ids, 2) == pytest.approx(0.5)  # ids alone: a miss
    assert recall_at_k(swapped, truth, 2) == 1.0  # with the exact scores: the tie is seen
    assert recall_at_k(truth.ids[:, 1:3], truth, 2) == pytest.approx(0.5)  # twins: one place
