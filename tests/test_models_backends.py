"""The extractor backend registry and the input contract every backend shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import helpers.models as hm
from helpers.models.base import FeatureExtractor, InputSpec


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


class _Uint8Means(FeatureExtractor):
    """A toy backend that wants uint8: per-channel means, to see what it receives."""

    backend = "toy"
    precision = "int8"
    input_spec = InputSpec("uint8", size=32)

    def __init__(self, model_handle=None, *, cache_dir=None, intra_op_threads=None,
                 batch_size=32, scale: float = 1.0) -> None:
        self.name, self.dim, self.batch_size, self.scale = "toy", 3, batch_size, scale
        self._meta = {"model": "toy", "weights": None, "weights_sha256": None, "dim": 3}
        self.seen: list[np.dtype] = []

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(batch.dtype)
        pixels = batch if batch.dtype == np.uint8 else batch * 255
        return pixels.mean(axis=(1, 2)).astype(np.float32) * self.scale


def test_registry_lists_and_lazily_imports_backends() -> None:
    assert {"onnx", "tf"} <= set(hm.BACKENDS)
    from helpers.models.runtimes.onnx import OnnxFeatureExtractor

    assert hm.BACKENDS["onnx"] is OnnxFeatureExtractor is hm.OnnxFeatureExtractor
    with pytest.raises(KeyError, match="unknown extractor backend 'nope'; known: onnx"):
        hm.BACKENDS["nope"]
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        hm.load_extractor("nope")


def test_a_new_backend_is_one_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(hm.BACKENDS._targets, "toy", _Uint8Means)
    ext = hm.load_extractor("toy", batch_size=2, scale=2.0)  # options reach the backend
    assert ext.input_spec == InputSpec("uint8", 32) and ext.scale == 2.0
    u8 = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    vecs = ext(u8)
    assert ext.seen == [np.dtype(np.uint8)] * 2  # uint8 passed through, in chunks of 2
    np.testing.assert_allclose(vecs, u8.mean(axis=(1, 2)) * 2, rtol=1e-6)
    # Float [0, 1] still works, and is not rounded to uint8 on the way.
    np.testing.assert_allclose(ext(u8 / 255.0), vecs, rtol=1e-5)
    assert ext.seen[-1] == np.float32
    assert ext.meta() == {"model": "toy", "weights": None, "weights_sha256": None, "dim": 3,
                          "backend": "toy", "precision": "int8"}
    with pytest.raises(NotImplementedError, match="ImageNet head"):
        ext.logits(u8)


def test_input_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="input dtype"):
        InputSpec("float16")


def test_onnx_takes_uint8_and_float_alike(
    model_cache: Path, photos: dict[str, np.ndarray]
) -> None:
    ext = hm.load_extractor("onnx", cache_dir=model_cache, intra_op_threads=2)
    assert ext.input_spec == InputSpec("float32", None)
    u8 = np.rint(np.stack([photos["chelsea"], photos["coffee"]]) * 255).astype(np.uint8)
    # uint8 is scaled as the embedding pipeline scales it: the very same vectors.
    np.testing.assert_array_equal(ext(u8), ext(u8 * np.float32(1 / 255)))
    meta = ext.meta()
    assert meta["backend"] == "onnx" and meta["precision"] == "fp32"
    assert ext.logits(u8).shape == (2, 1000)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        ext(u8[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ext(u8.astype(np.float32))  # 0..255 floats: a mistake, not uint8
