"""Shared fixtures: the real Kaggle sample (by path, never copied) and the built-in one;
`start_service`, how a test gets a server (a skip here, a failure in CI)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import bson
import numpy as np
import pytest

from helpers.core.errors import ServiceUnavailable
from helpers.core.paths import CDISCOUNT_DIR, SAMPLE_BSON, SAMPLE_CATEGORIES
from helpers.ingest import bson_store

# Passes the catalogue's marker check but is no JPEG: the embedding rejects it.
FAKE_JPEG = b"\xff\xd8" + bytes(range(256)) * 2 + b"\xff\xd9"

T = TypeVar("T")

# Keep TensorFlow quiet and on the CPU in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _shared(name: str) -> Path:
    """A file of the real Kaggle sample. Skipped on a machine without it; in CI (where
    ../shared is always laid out) its absence fails the run instead of skipping."""
    path = CDISCOUNT_DIR / name
    if not path.exists():
        msg = f"real Cdiscount file not found at {path} (set CDISCOUNT_DIR)"
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must have it", pytrace=False)
        pytest.skip(msg)
    return path


def _start_service(starter: Callable[[], T]) -> T:
    """The started server. One that cannot be had here (no java / maven / mongod, or it did
    not come up: ServiceUnavailable) is a skip, with why; in CI, where every service must
    run, a failure. Any other error is a bug of ours and fails the test everywhere."""
    try:
        return starter()
    except ServiceUnavailable as exc:
        msg = f"server not available here: {type(exc).__name__}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must have it", pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def start_service() -> Callable[[Callable[[], T]], T]:
    """`start_service(start_mongod)`: a server for a fixture (see `_start_service`)."""
    return _start_service


BUILTIN_DOCS = 100  # documents of the committed sample that the "builtin" case uses


def _head_of_bson(src: Path, dst: Path, n: int) -> Path:
    """The first n documents of a BSON file, byte for byte, as a file of their own."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        for _ in range(n):
            head = f.read(4)
            if len(head) < 4:
                break
            out.write(head + f.read(int.from_bytes(head, "little") - 4))
    return dst


@pytest.fixture(scope="session", params=["builtin", "cdiscount"])
def real_data(request, tmp_path_factory) -> tuple[Path, Path]:
    """(BSON, category CSV) of real product documents: the committed built-in sample (always
    there, so a fresh clone runs these tests) and the real Kaggle sample (../shared)."""
    if request.param == "cdiscount":
        return _shared("train_example.bson"), _shared("category_names.csv")
    out = tmp_path_factory.mktemp("builtin") / "builtin_head.bson"
    return _head_of_bson(SAMPLE_BSON, out, BUILTIN_DOCS), SAMPLE_CATEGORIES


@pytest.fixture(scope="session")
def real_bson(real_data) -> Path:
    return real_data[0]


@pytest.fixture(scope="session")
def real_categories(real_data) -> Path:
    return real_data[1]


@pytest.fixture(scope="session")
def cdiscount_bson() -> Path:
    return _shared("train_example.bson")


@pytest.fixture(scope="session")
def cdiscount_categories() -> Path:
    return _shared("category_names.csv")


@pytest.fixture(scope="session")
def damaged_sample(tmp_path_factory) -> Path:
    """The built-in sample with damage of every kind: garbage between documents and
    inside one, a duplicate, a product whose picture only a decode refuses, a
    truncated tail (the fault-injection dump of test_faults and test_distributed)."""
    docs = [bson.encode(r.doc) for r in bson_store.iter_records(SAMPLE_BSON)][:600]
    fake = bson.decode(docs[5]) | {"_id": 10**9, "imgs": [{"picture": FAKE_JPEG}]}
    half = bson.decode(docs[6]) | {"_id": 10**9 + 1}
    half["imgs"] = half["imgs"] + [{"picture": FAKE_JPEG}]
    parts = docs[:100] + [b"GARBAGE!" * 30] + docs[100:300] + [docs[7], bson.encode(fake)]
    parts += [bson.encode(half), docs[300][:500] + b"\x00" * 64] + docs[301:] + [docs[0][:-9]]
    path = tmp_path_factory.mktemp("damaged") / "damaged.bson"
    path.write_bytes(b"".join(parts))
    return path


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

    from helpers.serve.loader import build_serving_artifacts

    root = tmp_path_factory.mktemp("app_artifacts")
    style = importlib.util.find_spec("tensorflow") is not None
    return build_serving_artifacts(root, sample_bson, sample_categories, limit=150,
                                   image_size=180, style=style)
