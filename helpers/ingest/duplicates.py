"""Exact duplicate pictures of a catalogue: the same bytes under more than one product.

The pass hashes every picture's bytes while it scans (`helpers.ingest.products`, XXH3 64
bits); `exact_duplicates` groups the hashes when the ranges are joined and gives

- the groups, one row per picture of a hash found in two products or more (``group``,
  ``hash``, ``product_id``, ``image_index``, ``category_id``, ``conflict``): the pass writes
  them to ``duplicates.parquet`` beside the catalogue;
- their counts (`DuplicateCounts`), which go into ``catalogue.json``. A *conflict* is a group
  whose products are filed under more than one category: the same photo labelled two ways,
  label noise in the data (products without a category never make a conflict).

A picture repeated inside one product only is no duplicate across listings and is left out.
Imports numpy, pandas and pyarrow only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

GROUP_COLUMNS = ["group", "hash", "product_id", "image_index", "category_id", "conflict"]


@dataclass(frozen=True)
class DuplicateCounts:
    """How much of a catalogue is the same picture more than once."""

    groups: int = 0  # distinct pictures (hashes) found in two products or more
    pictures: int = 0  # catalogue pictures in those groups
    products: int = 0  # products with at least one such picture
    conflict_groups: int = 0  # groups whose products have two categories or more
    conflict_pictures: int = 0
    conflict_products: int = 0
    repeated_in_product: int = 0  # extra copies of a picture inside the same product

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"exact duplicates: {self.pictures:,} pictures in {self.groups:,} groups, "
                f"in {self.products:,} products; cross-category conflicts: "
                f"{self.conflict_groups:,} groups ({self.conflict_pictures:,} pictures, "
                f"{self.conflict_products:,} products); a picture repeated inside its "
                f"product: {self.repeated_in_product:,}")


def exact_duplicates(product_ids: np.ndarray | pd.Series, category_ids: pd.Series | np.ndarray,
                     picture_hashes: pa.Array | pa.ChunkedArray | list
                     ) -> tuple[pd.DataFrame, DuplicateCounts]:
    """Groups of pictures with the same bytes in more than one product, and their counts.

    product_ids, category_ids: one per catalogue row (a category may be null).
    picture_hashes: per row, the hash of each of its pictures in document order (0 or a
    null list for a picture or row left out).
    """
    lists = picture_hashes if isinstance(picture_hashes, pa.Array | pa.ChunkedArray) \
        else pa.array(picture_hashes, pa.list_(pa.uint64()))
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks() if lists.num_chunks else pa.array([], lists.type)
    pids = np.asarray(product_ids, np.int64)
    if len(lists) != len(pids):
        raise ValueError(f"{len(lists)} hash lists for {len(pids)} products")
    cats = pd.array(category_ids, dtype="Int64")
    row = pc.list_parent_indices(lists).to_numpy()
    hashes = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.uint64)
    # Index of each picture in its document: its place less its row's first place (the
    # parent rows of a flattened list never go down).
    image_index = np.arange(len(hashes), dtype=np.int64) - np.searchsorted(row, row)
    keep = hashes != 0
    hashes, row, image_index = hashes[keep], row[keep], image_index[keep]
    order = np.lexsort((image_index, pids[row], hashes))
    hashes, row, image_index = hashes[order], row[order], image_index[order]
    pid = pids[row]
    new_hash = np.r_[True, hashes[1:] != hashes[:-1]][:len(hashes)]
    new_product = new_hash | np.r_[True, pid[1:] != pid[:-1]][:len(hashes)]
    gid = np.cumsum(new_hash) - 1
    products_per_hash = np.bincount(gid, weights=new_product).astype(np.int64)
    shared = products_per_hash[gid] >= 2
    df = pd.DataFrame({"hash": hashes[shared], "product_id": pid[shared],
                       "image_index": image_index[shared].astype(np.int16),
                       "category_id": cats[row[shared]]})
    df.insert(0, "group", (np.cumsum(new_hash[shared]) - 1).astype(np.int32))
    n_cats = df.groupby("group")["category_id"].transform("nunique")
    df["conflict"] = (n_cats >= 2).to_numpy(bool)
    conflicts = df[df["conflict"]]
    counts = DuplicateCounts(
        groups=int(df["group"].nunique()), pictures=len(df),
        products=int(df["product_id"].nunique()),
        conflict_groups=int(conflicts["group"].nunique()), conflict_pictures=len(conflicts),
        conflict_products=int(conflicts["product_id"].nunique()),
        repeated_in_product=int(len(hashes) - new_product.sum()))
    return df.reset_index(drop=True), counts
