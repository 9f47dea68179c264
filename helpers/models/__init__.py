"""Pretrained CNNs for visual product search, loaded fully offline.

* :func:`load_extractor` - MobileNetV2 (torchvision ImageNet weights) 1280-d image
  embeddings, through onnxruntime (``backend="onnx"``, no TensorFlow needed) or a
  TF-Hub style SavedModel via ``tensorflow_hub.KerasLayer`` (``backend="tf"``). The
  two agree to ~1e-5.
* :func:`load_classifier` - the same network with its ImageNet head, to sanity-check
  the weights (``top_k`` on a photo of a cat should say "tabby").
* :func:`load_style_extractor` - VGG16 Gram-matrix style embeddings.

Every extractor maps float32 RGB [N, H, W, 3] in [0, 1] to float32 [N, dim] and has
``.name``, ``.dim``, ``.backend`` and ``.meta()``. Built artifacts are cached under
:func:`default_cache_dir` (``$VPS_MODEL_DIR`` or ``~/.cache/visual-product-search/models``).
Weights come from two pip packages (see :mod:`helpers.models.weights`); nothing is
downloaded at run time. TensorFlow is imported only when a TF model is requested.
"""

from __future__ import annotations

from pathlib import Path

from .cache import default_cache_dir
from .extractors import (
    FeatureExtractor,
    ImageNetClassifier,
    OnnxFeatureExtractor,
    TFHubFeatureExtractor,
    check_batch,
    imagenet_classes,
    prepare_images,
)
from .style import DEFAULT_STYLE_LAYERS, StyleExtractor
from .weights import WeightsNotFoundError

__all__ = [
    "BACKENDS",
    "DEFAULT_STYLE_LAYERS",
    "FeatureExtractor",
    "ImageNetClassifier",
    "OnnxFeatureExtractor",
    "StyleExtractor",
    "TFHubFeatureExtractor",
    "WeightsNotFoundError",
    "check_batch",
    "default_cache_dir",
    "imagenet_classes",
    "load_classifier",
    "load_extractor",
    "load_style_extractor",
    "prepare_images",
]

BACKENDS = ("onnx", "tf")


def load_extractor(
    backend: str = "onnx",
    model_handle: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    intra_op_threads: int | None = None,
    batch_size: int = 32,
) -> FeatureExtractor:
    """A MobileNetV2 image-embedding extractor (dim 1280).

    backend: ``"onnx"`` (onnxruntime, CPU; ``intra_op_threads`` defaults to the CPU
        count) or ``"tf"`` (``tensorflow_hub.KerasLayer`` on the cached SavedModel).
    model_handle: TF only - a TF-Hub URL (needs internet), e.g.
        ``https://tfhub.dev/google/imagenet/mobilenet_v2_140_224/feature_vector/4``,
        or a SavedModel directory, instead of the local torchvision weights.
    cache_dir: where built models are cached (default :func:`default_cache_dir`);
        the first call builds them (ONNX < 1 s, SavedModel ~ 10 s), later calls reuse.
    batch_size: images per forward pass when called on a larger batch.
    """
    if backend == "onnx":
        if model_handle is not None:
            raise ValueError("model_handle is only supported by backend='tf'")
        return OnnxFeatureExtractor(cache_dir, intra_op_threads, batch_size)
    if backend == "tf":
        return TFHubFeatureExtractor(model_handle, cache_dir, batch_size)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def load_classifier(
    backend: str = "onnx",
    *,
    cache_dir: str | Path | None = None,
    intra_op_threads: int | None = None,
) -> ImageNetClassifier:
    """MobileNetV2 with its ImageNet head: ``predict_imagenet(images)``, ``top_k``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return ImageNetClassifier(backend, cache_dir, intra_op_threads)


def load_style_extractor(
    layers: tuple[str, ...] | None = None,
    dim_per_layer: int = 256,
    seed: int = 0,
    input_size: int | None = None,
    batch_size: int = 16,
) -> StyleExtractor:
    """VGG16 Gram-matrix style embeddings (TensorFlow); see :mod:`helpers.models.style`."""
    return StyleExtractor(
        layers or DEFAULT_STYLE_LAYERS, dim_per_layer, seed, input_size, batch_size
    )
