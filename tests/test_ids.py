"""IdMap, the one id -> row lookup: hand-computed cases, repeats, misses, memory."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.core.ids import IdMap, MissingIdError, describe


def test_rows_of_unsorted_ids():
    m = IdMap([30, 10, 20, 50])
    assert len(m) == 4
    assert m.rows([20, 30, 50, 10]).tolist() == [2, 0, 3, 1]
    assert m.rows(np.array([[10, 50], [30, 30]])).tolist() == [[1, 3], [0, 0]]  # shape kept
    assert m.rows(20).tolist() == 2 and m.rows([]).shape == (0,)


def test_missing_ids_raise_or_get_the_fill_row():
    m = IdMap([30, 10, 20])
    assert m.rows([20, 99, 5, 31], missing=-1).tolist() == [2, -1, -1, -1]
    with pytest.raises(MissingIdError, match=r"\[99, 5\] \(2 in all\)") as e:
        m.rows([20, 99, 5])
    assert e.value.missing.tolist() == [99, 5]
    assert isinstance(e.value, KeyError)
    with pytest.raises(ValueError, match="missing"):
        m.rows([99], missing="skip")  # type: ignore[arg-type]


def test_contains():
    m = IdMap([7, 3, 11])
    assert m.contains([3, 4, 11, -1, 12, 0]).tolist() == [True, False, True, False, False, False]
    assert m.contains(np.array([[7], [8]])).tolist() == [[True], [False]]


def test_repeated_ids_first_row_and_all_rows():
    cats = [5, 2, 5, 9, 2, 5]
    m = IdMap(cats)
    assert m.rows([5, 2, 9]).tolist() == [0, 1, 3]  # first row of each
    assert m.all_rows(5).tolist() == [0, 2, 5]  # in row order
    assert m.all_rows(2).tolist() == [1, 4]
    assert m.all_rows(3).tolist() == [] and m.all_rows(99).tolist() == []
    # Sorted input (no permutation kept) gives the same answers.
    s = IdMap([2, 2, 5, 5, 5, 9])
    assert s.rows([5, 9, 2]).tolist() == [2, 5, 0]
    assert s.all_rows(5).tolist() == [2, 3, 4]


def test_empty_map():
    m = IdMap(np.zeros(0, np.int64))
    assert len(m) == 0
    assert m.contains([1, 2]).tolist() == [False, False]
    assert m.rows([1], missing=-1).tolist() == [-1]
    assert m.rows([]).tolist() == []
    assert m.all_rows(1).tolist() == []
    with pytest.raises(MissingIdError):
        m.rows([1])


def test_extreme_ids_and_negative_keys():
    big = np.iinfo(np.int64).max
    m = IdMap([big, -1, 0])
    assert m.rows([0, big, -1]).tolist() == [2, 0, 1]
    assert m.all_rows(big).tolist() == [0]
    assert m.contains([big - 1]).tolist() == [False]


def test_memory_is_two_int64_arrays_at_most_and_a_snapshot():
    perm = np.random.default_rng(0).permutation(1000)
    ids = perm.astype(np.int64) * 3
    m = IdMap(ids)
    arrays = [v for v in vars(m).values() if isinstance(v, np.ndarray)]
    assert len(arrays) == 2 and all(a.dtype == np.int64 and a.size == 1000 for a in arrays)
    assert m.rows(ids).tolist() == list(range(1000))
    ids[:] = 0  # the caller's array changes: the map does not
    assert m.rows([3]).tolist() == [int(np.flatnonzero(perm == 1)[0])]
    writable = np.arange(5, dtype=np.int64)  # sorted: one array, a copy
    w = IdMap(writable)
    assert len([v for v in vars(w).values() if isinstance(v, np.ndarray)]) == 1
    writable[:] = 99
    assert w.rows([3]).tolist() == [3]
    # Sorted and read-only (a memmap, a frozen view): shared, nothing copied.
    frozen = np.arange(0, 20, 2, dtype=np.int64)
    frozen.flags.writeable = False
    f = IdMap(frozen)
    assert all(np.shares_memory(v, frozen) for v in vars(f).values()
               if isinstance(v, np.ndarray))
    assert f.rows([4, 18]).tolist() == [2, 9]


def test_describe():
    assert describe([3, 9]) == "[3, 9] (2 in all)"
    assert describe(range(7)) == "[0, 1, 2, 3, 4, ...] (7 in all)"
