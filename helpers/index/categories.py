"""Which rows a category filter keeps: worked out once per index version, then reused.

A filtered search needs the rows of the wanted categories (and an engine needs its own
form of them: a FAISS ID selector, a bool mask for Annoy). Comparing every row's category
per query costs O(n) each time, and a FAISS selector of every member again, for a rare
category as much as for a common one. Here:

    rows = CategoryRows(categories)          # one per index version (add/remove: a new one)
    sel = rows.select(np.array([7]))         # a Selection, or None when every row matches
    sel.rows, len(sel), sel.mask             # sorted member rows; bool [n] on first use
    sel.memo("faiss", make)                  # an engine object, built once per selection

On the first filtered search a stable argsort of the categories (once, O(n log n); 4 bytes
a row while n < 2^31) makes each category's rows one slice of it, already in row order:
a category then costs O(its members), once. Selections are kept in a small LRU cache
(at most CACHE_ENTRIES sets of categories and CACHE_ROWS member rows), shared by threads.

Imports numpy only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

CACHE_ENTRIES = 256  # category sets kept
# Member rows kept in all: a FAISS IDSelectorBatch takes ~50 B a member, so ~100 MB at most.
CACHE_ROWS = 1 << 21


class Selection:
    """The rows of a set of categories, and what engines derive from them (cached)."""

    __slots__ = ("key", "rows", "n", "_mask", "_memo", "_lock")

    def __init__(self, key: tuple[int, ...], rows: np.ndarray, n: int) -> None:
        self.key = key
        self.rows = rows  # sorted int row numbers (read-only)
        self.n = n  # rows in the index
        self._mask: np.ndarray | None = None
        self._memo: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def mask(self) -> np.ndarray:
        """bool [n], True on member rows: made on first use (O(n) once), then kept."""
        if self._mask is None:
            mask = np.zeros(self.n, bool)
            mask[self.rows] = True
            mask.flags.writeable = False
            self._mask = mask
        return self._mask

    def memo(self, name: str, make: Callable[[], T]) -> T:
        """`make()` once per selection (an engine's selector), then the same object."""
        with self._lock:  # one build, even when threads ask at once
            if name not in self._memo:
                self._memo[name] = make()
            return self._memo[name]


class CategoryRows:
    """Member rows of categories, from one fixed array of row categories (see module)."""

    def __init__(self, categories: np.ndarray) -> None:
        self._cats = categories
        self._lock = threading.Lock()
        self._order: np.ndarray | None = None  # rows sorted by category, stable
        self._keys: np.ndarray | None = None  # the distinct categories, sorted
        self._starts: np.ndarray | None = None  # where each key's rows start in _order
        self._cache: OrderedDict[tuple[int, ...], Selection] = OrderedDict()
        self._cached_rows = 0

    def select(self, cats: np.ndarray) -> Selection | None:
        """The rows of sorted unique category ids `cats`; None when every row matches."""
        key = tuple(int(c) for c in cats)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return None if len(hit) == len(self._cats) else hit
            if self._order is None:
                self._sort()
        sel = Selection(key, self._rows_of(cats), len(self._cats))
        with self._lock:
            if len(sel) <= CACHE_ROWS and key not in self._cache:
                self._cache[key] = sel
                self._cached_rows += len(sel)
                while len(self._cache) > CACHE_ENTRIES or self._cached_rows > CACHE_ROWS:
                    _, old = self._cache.popitem(last=False)
                    self._cached_rows -= len(old)
        return None if len(sel) == len(self._cats) else sel

    def _sort(self) -> None:
        cats = np.asarray(self._cats)
        order = np.argsort(cats, kind="stable")
        if len(order) < 2**31:
            order = order.astype(np.int32)
        ordered = cats[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self._keys, self._starts = ordered[starts], np.r_[starts, len(ordered)]
        order.flags.writeable = False
        self._order = order

    def _rows_of(self, cats: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self._keys, cats)
        found = at < len(self._keys)
        found[found] = self._keys[at[found]] == cats[found]
        parts = [self._order[self._starts[i]:self._starts[i + 1]] for i in at[found]]
        if not parts:
            return np.zeros(0, np.int64)
        if len(parts) == 1:
            return parts[0]  # a view, already in row order (stable sort)
        rows = np.sort(np.concatenate(parts))
        rows.flags.writeable = False
        return rows
