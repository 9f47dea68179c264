"""Shared fixtures: the real Kaggle sample (by path, never copied) and the built-in one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers.paths import CDISCOUNT_DIR, SAMPLE_BSON, SAMPLE_CATEGORIES

# Keep TensorFlow quiet and on the CPU in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _shared(name: str) -> Path:
    path = CDISCOUNT_DIR / name
    if not path.exists():
        pytest.skip(f"real Cdiscount file not found at {path} (set CDISCOUNT_DIR)")
    return path


@pytest.fixture(scope="session")
def cdiscount_bson() -> Path:
    return _shared("train_example.bson")


@pytest.fixture(scope="session")
def cdiscount_categories() -> Path:
    return _shared("category_names.csv")


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """scikit-image's cat and coffee photos (to check ImageNet weights), resized to 224."""
    from helpers.models import prepare_images

    skimage_data = pytest.importorskip("skimage.data")
    chelsea, coffee = skimage_data.chelsea(), skimage_data.coffee()
    return {
        "chelsea": prepare_images([chelsea])[0],
        "coffee": prepare_images([coffee])[0],
        # Two overlapping crops of the cat photo (300 x 451).
        "crop_a": prepare_images([chelsea[0:260, 0:360]])[0],
        "crop_b": prepare_images([chelsea[40:300, 90:451]])[0],
    }


@pytest.fixture(scope="session")
def sample_bson() -> Path:
    return SAMPLE_BSON


@pytest.fixture(scope="session")
def sample_categories() -> Path:
    return SAMPLE_CATEGORIES


@pytest.fixture(scope="session")
def app_artifacts(tmp_path_factory, sample_bson, sample_categories) -> Path:
    """What the apps serve, built once from 150 products of the built-in sample (ONNX at
    180 px, FAISS Flat, Annoy; VGG16 style vectors when TensorFlow is installed)."""
    import importlib.util

    from helpers.serving import build_serving_artifacts

    root = tmp_path_factory.mktemp("app_artifacts")
    style = importlib.util.find_spec("tensorflow") is not None
    return build_serving_artifacts(root, sample_bson, sample_categories, limit=150,
                                   image_size=180, style=style)
