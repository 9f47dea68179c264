"""Cdiscount's categories: the three level names read from ``category_names.csv``, and the
category columns of a catalogue (category of each product, products and pictures a category).

`load_categories` gives the names the pass joins to the catalogue and the ids a product's
``category_id`` must be one of. Re-exported by `helpers.ingest.scan`. Imports numpy, pandas,
`helpers.ingest.errors` and `helpers.ingest.schema`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.ingest.errors import CatalogueError
from helpers.ingest.schema import usable_counts

LEVELS = ["category_level1", "category_level2", "category_level3"]


def load_categories(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``category_names.csv``: ``category_id`` + three level names, trimmed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"category file not found: {path}")
    df = pd.read_csv(path, dtype={"category_id": "int64"}, encoding="utf-8")
    missing = {"category_id", *LEVELS} - set(df.columns)
    if missing:
        raise CatalogueError(f"{path}: missing columns {sorted(missing)}; has {list(df.columns)}")
    for col in LEVELS:
        df[col] = df[col].astype("string").str.strip()  # some names end with a space
    if df["category_id"].duplicated().any():
        dup = df.loc[df["category_id"].duplicated(), "category_id"].iloc[0]
        raise CatalogueError(f"{path}: category_id {dup} appears twice")
    return df[["category_id", *LEVELS]]


def categories_of(df: pd.DataFrame, product_ids: np.ndarray) -> np.ndarray:
    """The category id of each product in ``product_ids`` (int64, in that order)."""
    return df.set_index("product_id").loc[np.asarray(product_ids).ravel(), "category_id"] \
        .to_numpy(np.int64).reshape(np.shape(product_ids))


def category_counts(df: pd.DataFrame, level: str = "category_level3") -> pd.DataFrame:
    """Products and images per category, largest first."""
    keys = ["category_id", *LEVELS] if level == "category_level3" else [level]
    out = df.assign(usable=usable_counts(df)).groupby(keys, dropna=False).agg(
        products=("product_id", "size"), images=("usable", "sum"))
    return out.sort_values("products", ascending=False).reset_index()
