"""Where things are: the built-in sample, the shared Kaggle sample, run folders."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
SAMPLE_BSON = SAMPLE_DIR / "fashion_sample.bson"
SAMPLE_CATEGORIES = SAMPLE_DIR / "fashion_sample_categories.csv"
# The real Kaggle sample, kept beside the project (never copied into it).
CDISCOUNT_DIR = Path(os.environ.get("CDISCOUNT_DIR", REPO_ROOT.parent / "shared/data/cdiscount"))
RUNS_DIR = REPO_ROOT / "runs"


def resolve_data(
    bson_path: str | os.PathLike | None, categories_path: str | os.PathLike | None
) -> tuple[Path, Path | None]:
    """The BSON file and category CSV to use: the user's, or the built-in sample."""
    if bson_path is None:
        return SAMPLE_BSON, SAMPLE_CATEGORIES if categories_path is None else Path(categories_path)
    bson_path = Path(bson_path).expanduser()
    if not bson_path.is_file():
        raise FileNotFoundError(f"BSON file not found: {bson_path}")
    if categories_path is None:
        guess = bson_path.with_name("category_names.csv")
        return bson_path, guess if guess.is_file() else None
    return bson_path, Path(categories_path).expanduser()
