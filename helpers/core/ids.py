"""Item ids: one int64 per indexed vector, at product or at image level.

A product-level item id *is* the product id. An image-level item id packs the product id
and the picture's index in the product (0..3 on Cdiscount) into one int64, so the indexes
(which hold one int64 per vector) need no second column:

    item_id = product_id * IMAGE_ID_BASE + image_index

`encode` checks the limits (a product id too large to pack, an index out of range) and
`decode` is its inverse; every module that meets image ids goes through these two.

`IdMap` is the one id -> row lookup (sorted ids + np.searchsorted) of the project: stores,
indexes, the catalogue and the evaluation find rows of ids through it. Imports numpy only.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

LEVELS = ("product", "image")
IMAGE_ID_BASE = 100  # room for 100 pictures a product (Cdiscount has at most 4)
MAX_PRODUCT_ID = (2**63 - 1) // IMAGE_ID_BASE - 1  # so that every packed id fits in int64


class ItemIdError(ValueError):
    """A product id or picture index that cannot be packed, or a level that is not known."""


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ItemIdError(f"level must be one of {LEVELS}, not {level!r}")
    return level


def encode(product_ids: Any, image_index: Any) -> np.ndarray:
    """Image-level item ids of (product id, picture index) pairs; index -1 = the product."""
    pids = np.asarray(product_ids, np.int64)
    idx = np.asarray(image_index, np.int64)
    if pids.size and (pids.min() < 0 or pids.max() > MAX_PRODUCT_ID):
        raise ItemIdError(f"product ids must lie in [0, {MAX_PRODUCT_ID}] to pack with a "
                          f"picture index; got {pids.min()}..{pids.max()}")
    if idx.size and (idx.min() < -1 or idx.max() >= IMAGE_ID_BASE):
        raise ItemIdError(f"picture indexes must lie in [0, {IMAGE_ID_BASE - 1}] "
                          f"(-1 for a product's own vector); got {idx.min()}..{idx.max()}")
    return np.where(idx < 0, pids, pids * IMAGE_ID_BASE + idx)


def decode(item_ids: Any, level: str) -> tuple[np.ndarray, np.ndarray]:
    """(product ids, picture indexes) of item ids; picture index -1 at product level.

    Padding (-1, "no result") decodes to product id -1.
    """
    ids = np.asarray(item_ids, np.int64)
    if check_level(level) == "product":
        return ids, np.full(ids.shape, -1, np.int64)
    pad = ids < 0
    pids = np.where(pad, -1, ids // IMAGE_ID_BASE)
    idx = np.where(pad, -1, ids % IMAGE_ID_BASE)
    return pids, idx


def product_of(item_id: int, level: str) -> tuple[int, int | None]:
    """One item id as (product id, picture index or None)."""
    pid, idx = decode(np.int64(item_id), level)
    return int(pid), (None if idx < 0 else int(idx))


def describe(ids: Any, n: int = 5) -> str:
    """The first `n` of some ids and their count, for error messages: "[3, 9] (2 in all)"."""
    a = np.asarray(ids).ravel()
    items = ", ".join(str(v) for v in a[:n].tolist())
    return f"[{items}{', ...' if len(a) > n else ''}] ({len(a)} in all)"


class MissingIdError(KeyError):
    """Ids that are not in an IdMap; `missing` holds them."""

    def __init__(self, missing: np.ndarray) -> None:
        self.missing = missing
        super().__init__(f"ids not in the map: {describe(missing)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class IdMap:
    """The row of each id of an int64 column: binary search over the ids sorted once.

        m = IdMap([30, 10, 20])
        m.rows([20, 30])              # array([2, 0])
        m.rows([20, 99], missing=-1)  # array([2, -1]); missing="raise" (default) raises
        m.contains([10, 11])          # array([ True, False])
        m.all_rows(10)                # every row holding 10, in row order

    Memory: the sorted ids and the permutation that sorts them, two int64 arrays (one when
    the ids come sorted; none copied when they come sorted and read-only, e.g. a memmap),
    where a dict of Python ints would take ~100 bytes an id (700 MB at 7 M products).
    Lookups are vectorised (np.searchsorted). Ids may repeat (category ids of products):
    `rows` gives an id's first row, `all_rows` all of them. The map is a snapshot: build a
    new one when the column changes.
    """

    def __init__(self, ids: Any) -> None:
        a = np.asarray(ids, np.int64)
        if a.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {a.shape}")
        if a.size < 2 or bool((a[1:] >= a[:-1]).all()):
            # Already sorted: no permutation. Our own copy unless nobody can change it.
            self._order: np.ndarray | None = None
            self._sorted = a if not a.flags.writeable else a.copy()
        else:
            self._order = np.argsort(a, kind="stable")  # stable: repeats keep row order
            self._sorted = a[self._order]

    @classmethod
    def from_sorted(cls, sorted_ids: np.ndarray, order: np.ndarray | None = None) -> IdMap:
        """A map over ids sorted beforehand (``order``: the rows that sort them; None when
        they are in row order), used as they are: memory-mapped arrays stay on disk, shared
        by the processes that map them, never copied or sorted again."""
        if sorted_ids.dtype != np.int64 or sorted_ids.ndim != 1:
            raise ValueError(f"sorted ids must be 1-D int64, got {sorted_ids.dtype} "
                             f"{sorted_ids.shape}")
        if order is not None and order.shape != sorted_ids.shape:
            raise ValueError(f"order has shape {order.shape}, ids {sorted_ids.shape}")
        m = cls.__new__(cls)
        m._sorted, m._order = sorted_ids, order
        return m

    def __len__(self) -> int:
        return int(self._sorted.shape[0])

    def __repr__(self) -> str:
        return f"IdMap({len(self)} ids)"

    def _find(self, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in the sorted ids, found) of each wanted id."""
        if len(self) == 0:
            return np.zeros(want.shape, np.int64), np.zeros(want.shape, bool)
        pos = np.searchsorted(self._sorted, want).clip(0, len(self) - 1)
        return pos, self._sorted[pos] == want

    def _row(self, pos: np.ndarray) -> np.ndarray:
        return pos if self._order is None else self._order[pos]

    def rows(self, ids: Any, missing: Literal["raise"] | int = "raise") -> np.ndarray:
        """int64 rows of `ids` (any shape, kept), the first row of a repeated id.

        missing: "raise" (MissingIdError naming the absent ids), or the row to give them
        (-1: rows are >= 0, so it cannot be mistaken for one).
        """
        want = np.asarray(ids, np.int64)
        pos, found = self._find(want)
        rows = self._row(pos)
        if found.all():
            return rows
        if isinstance(missing, str):
            if missing != "raise":
                raise ValueError(f"missing must be 'raise' or an int row, not {missing!r}")
            raise MissingIdError(want[~found])
        return np.where(found, rows, np.int64(missing))

    def contains(self, ids: Any) -> np.ndarray:
        """bool, the shape of `ids`: which ids are in the map."""
        return self._find(np.asarray(ids, np.int64))[1]

    def all_rows(self, id_: int) -> np.ndarray:
        """Every row holding `id_`, ascending (empty when absent)."""
        key = np.int64(id_)
        lo = int(np.searchsorted(self._sorted, key, side="left"))
        hi = int(np.searchsorted(self._sorted, key, side="right"))
        return np.arange(lo, hi, dtype=np.int64) if self._order is None else self._order[lo:hi]
