from __future__ import annotations

import time

import numpy as np
import pytest

from helpers.metrics import measure_qps, precision_at_k, recall_at_k


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


def test_measure_qps():
    calls = []

    def search(q):
        calls.append(len(q))
        time.sleep(0.01)

    qps = measure_qps(search, np.zeros((50, 4)), repeat=2, warmup=1)
    assert calls == [50, 50, 50]
    assert 1000 < qps <= 5000  # 50 queries in >= 10 ms
