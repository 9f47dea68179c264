"""Item ids: one int64 per indexed vector, at product or at image level.

A product-level item id *is* the product id. An image-level item id packs the product id
and the picture's index in the product (0..3 on Cdiscount) into one int64, so the indexes
(which hold one int64 per vector) need no second column:

    item_id = product_id * IMAGE_ID_BASE + image_index

`encode` checks the limits (a product id too large to pack, an index out of range) and
`decode` is its inverse; every module that meets image ids goes through these two.
"""

from __future__ import annotations

from typing import Any

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
