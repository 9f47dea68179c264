"""The committed built-in sample is exactly what scripts/make_sample.py makes."""

from __future__ import annotations

import pytest

from helpers.core.paths import SAMPLE_BSON, SAMPLE_CATEGORIES
from helpers.ingest.sample import FASHION_DIR, make_sample


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_sample_is_reproducible(tmp_path):
    bson_path, csv_path = make_sample(tmp_path)
    assert bson_path.read_bytes() == SAMPLE_BSON.read_bytes()
    assert csv_path.read_bytes() == SAMPLE_CATEGORIES.read_bytes()


def test_missing_fashion_mnist_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        make_sample(tmp_path, root=tmp_path / "nowhere")
