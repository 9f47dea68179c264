"""Shared fixtures: the real Kaggle sample (by path, never copied) and the built-in one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.paths import CDISCOUNT_DIR, SAMPLE_BSON, SAMPLE_CATEGORIES

# Keep TensorFlow quiet and on the CPU in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def cdiscount_bson() -> Path:
    path = CDISCOUNT_DIR / "train_example.bson"
    if not path.exists():
        pytest.skip(f"real Cdiscount sample not found at {path} (set CDISCOUNT_DIR)")
    return path


@pytest.fixture(scope="session")
def cdiscount_categories() -> Path:
    path = CDISCOUNT_DIR / "category_names.csv"
    if not path.exists():
        pytest.skip(f"category_names.csv not found at {path} (set CDISCOUNT_DIR)")
    return path


@pytest.fixture(scope="session")
def sample_bson() -> Path:
    return SAMPLE_BSON


@pytest.fixture(scope="session")
def sample_categories() -> Path:
    return SAMPLE_CATEGORIES
