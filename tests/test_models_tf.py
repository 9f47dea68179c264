"""The TensorFlow side of helpers.models: Keras MobileNetV2, SavedModel + TF-Hub, VGG16 style.

Each model is built once per session (module-scoped fixtures); the whole file takes
about half a minute on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import helpers.models as hm
from helpers.models import weights
from helpers.models.runtimes import tf as tf_runtime

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_hub")
skimage_data = pytest.importorskip("skimage.data")

pytestmark = [pytest.mark.slow, pytest.mark.tf]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def batch(photos: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([photos[k] for k in ("chelsea", "coffee", "crop_a", "crop_b")])


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def tf_extractor(model_cache: Path) -> hm.FeatureExtractor:
    return hm.load_extractor("mobilenet_v2", "tf", cache_dir=model_cache)


@pytest.fixture(scope="module")
def onnx_extractor(model_cache: Path) -> hm.FeatureExtractor:
    return hm.load_extractor("mobilenet_v2", "onnx", cache_dir=model_cache)


@pytest.fixture(scope="module")
def style() -> hm.StyleExtractor:
    return hm.load_style_extractor()


# ---------------------------------------------------------------------- MobileNetV2


def test_keras_imagenet_top5(photos: dict[str, np.ndarray]) -> None:
    clf = hm.load_classifier("mobilenet_v2", "tf")
    top = clf.top_k(np.stack([photos["chelsea"], photos["coffee"]]), k=5)
    assert {i for i, _, _ in top[0]} & set(range(281, 286)), top[0]
    assert 967 in {i for i, _, _ in top[1]}, top[1]


def test_saved_model_is_cached(model_cache: Path, tf_extractor: hm.FeatureExtractor) -> None:
    path = model_cache / tf_runtime.SAVED_MODEL_NAME
    assert Path(tf_extractor.handle) == path and (path / "saved_model.pb").is_file()
    mtime = (path / "saved_model.pb").stat().st_mtime_ns
    assert tf_runtime.ensure_saved_model(model_cache) == path  # reused, not re-exported
    assert (path / "saved_model.pb").stat().st_mtime_ns == mtime
    assert not [p for p in model_cache.iterdir() if p.name.startswith((".tmp", ".old"))]


def test_tf_extractor_crops_closer_than_other_photo(
    tf_extractor: hm.FeatureExtractor, batch: np.ndarray
) -> None:
    _, coffee, a, b = tf_extractor(batch)
    assert tf_extractor.dim == 1280 and tf_extractor.meta()["runtime"] == "tf"
    assert _cos(a, b) > max(_cos(a, coffee), _cos(b, coffee)) + 0.1


def test_keras_and_onnx_agree(
    tf_extractor: hm.FeatureExtractor, onnx_extractor: hm.FeatureExtractor, batch: np.ndarray
) -> None:
    odd = np.random.default_rng(1).random((2, 181, 157, 3), np.float32)  # odd sizes pad
    for images in (batch, odd):
        diff = np.abs(tf_extractor(images) - onnx_extractor(images)).max()
        assert diff < 1e-5, diff  # each is within 1e-5 of torchvision too
    # Same weights, same preprocessing: vectors from either backend are interchangeable.
    strip = ("runtime",)
    assert {k: v for k, v in tf_extractor.meta().items() if k not in strip} == {
        k: v for k, v in onnx_extractor.meta().items() if k not in strip
    }


def test_saved_model_reload_matches_keras(
    tf_extractor: hm.FeatureExtractor, batch: np.ndarray
) -> None:
    import tensorflow_hub as hub

    keras_model = tf_runtime.build_keras_mobilenet_v2(include_top=False)
    direct = keras_model(batch, training=False).numpy()
    reloaded = hub.KerasLayer(tf_extractor.handle)(batch).numpy()
    np.testing.assert_allclose(reloaded, direct, atol=1e-5)
    np.testing.assert_array_equal(tf_extractor(batch), reloaded)


# ---------------------------------------------------------------------- VGG16 style


def test_vgg16_weights_loaded(style: hm.StyleExtractor) -> None:
    import keras

    convs = [layer for layer in style.vgg.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.name for c in convs][:3] == ["block1_conv1", "block1_conv2", "block2_conv1"]
    for conv, (kernel, bias) in zip(convs, weights.load_vgg16_conv_weights(), strict=True):
        got_kernel, got_bias = conv.get_weights()
        np.testing.assert_array_equal(got_kernel, kernel)
        np.testing.assert_array_equal(got_bias, bias)


def test_style_vectors(style: hm.StyleExtractor, batch: np.ndarray) -> None:
    small = hm.prepare_images(list((batch * 255).astype(np.uint8)), 180)
    vecs = style(small)
    assert style.dim == 768 and vecs.shape == (4, 768) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(style(small), vecs)  # deterministic
    np.testing.assert_allclose(style(small[2:3])[0], vecs[2], atol=1e-4)
    _, coffee, a, b = vecs
    assert a @ b > max(a @ coffee, b @ coffee)  # same photo, same style
    meta = style.meta()
    assert meta["dim"] == 768 and meta["layers"] == list(hm.DEFAULT_STYLE_LAYERS)
    assert meta["weights"] == "vgg16.ckpt" and meta["backend"] == "tf"


def test_style_projection_is_fixed() -> None:
    from helpers.models.nets.vgg16_style import projection_matrix

    p = projection_matrix(64, 16, seed=0, layer="block1_conv1")
    assert p.shape == (64 * 65 // 2, 16)
    np.testing.assert_array_equal(p, projection_matrix(64, 16, seed=0, layer="block1_conv1"))
    assert not np.array_equal(p, projection_matrix(64, 16, seed=1, layer="block1_conv1"))
