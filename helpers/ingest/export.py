"""A catalogue's usable pictures, read back from the BSON file: as ``(product, index, JPEG)``
triples, or written out as ``.jpg`` files for tools that want a folder of images.

Re-exported by `helpers.ingest.scan`. Imports numpy, pandas, tqdm,
`helpers.ingest.image_store` and `helpers.ingest.schema`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.progress import tqdm
from helpers.ingest.image_store import BsonImageStore
from helpers.ingest.schema import usable_counts


def iter_images(
    df: pd.DataFrame, bson_path: str | os.PathLike
) -> Iterable[tuple[int, int, bytes]]:
    """``(product_id, image_index, jpeg_bytes)`` for every usable image of ``df``'s rows."""
    with BsonImageStore(bson_path) as store:
        for pid, off, length, bad in zip(df["product_id"], df["offset"], df["length"],
                                         df["bad_images"], strict=True):
            skip = set(bad.tolist()) if isinstance(bad, np.ndarray) else set(bad or ())
            for i, pic in enumerate(store.pictures(int(off), int(length))):
                if i not in skip:
                    yield int(pid), i, pic


def export_jpegs(
    df: pd.DataFrame,
    bson_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    by_category: bool = False,
    progress: bool = True,
) -> int:
    """Write ``<product_id>_<i>.jpg`` files (under ``<category_id>/`` if ``by_category``).

    The original project worked from such files; the catalogue does not need
    them (the BSON is the image store), but some tools do. Returns files written.
    """
    out_dir = Path(out_dir)
    cats = dict(zip(df["product_id"], df["category_id"], strict=True))
    n = 0
    total = int(usable_counts(df).sum())
    for pid, i, pic in tqdm(iter_images(df, bson_path), total=total, desc="export",
                            disable=not progress):
        folder = out_dir / str(cats[pid]) if by_category else out_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{pid}_{i}.jpg").write_bytes(pic)
        n += 1
    return n
