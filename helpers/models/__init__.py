"""Pretrained CNNs for visual product search, loaded fully offline.

* :func:`load_extractor` - MobileNetV2 (torchvision ImageNet weights) 1280-d image
  embeddings, from the backend named in :data:`BACKENDS`: ``"onnx"`` (onnxruntime fp32,
  no TensorFlow), ``"tf"`` (a TF-Hub style SavedModel via ``tensorflow_hub.KerasLayer``),
  ``"openvino"`` (the same ONNX graph in OpenVINO, bf16, uint8 input).
* :func:`load_classifier` - the same network with its ImageNet head, to sanity-check
  the weights (``top_k`` on a photo of a cat should say "tabby").
* :func:`load_style_extractor` - VGG16 Gram-matrix style embeddings.

Every extractor maps RGB [N, H, W, 3], float in [0, 1] or uint8, to float32 [N, dim],
and has ``.name``, ``.dim``, ``.backend``, ``.precision``, ``.input_spec`` (the input
dtype it takes for free, see :class:`InputSpec`) and ``.meta()`` (what made the vectors,
backend and precision included: the vector store's ``made_by``). Built artifacts are
cached under :func:`default_cache_dir` (``$VPS_MODEL_DIR`` or
``~/.cache/visual-product-search/models``). Weights come from two pip packages (see
:mod:`helpers.models.weights`), checked by sha256; nothing is downloaded at run time.

Adding a backend: a module here with a :class:`FeatureExtractor` subclass whose
constructor takes ``(model_handle=None, *, cache_dir, intra_op_threads, batch_size,
**options)``, and one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..registry import Registry
from .base import FeatureExtractor, InputSpec, as_model_input, check_batch
from .cache import default_cache_dir
from .extractors import ImageNetClassifier, imagenet_classes, prepare_images
from .style import DEFAULT_STYLE_LAYERS, StyleExtractor
from .weights import WeightsHashError, WeightsNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from .onnx_backend import OnnxFeatureExtractor
    from .tf_backend import TFHubFeatureExtractor

__all__ = [
    "BACKENDS",
    "DEFAULT_STYLE_LAYERS",
    "FeatureExtractor",
    "ImageNetClassifier",
    "InputSpec",
    "OnnxFeatureExtractor",
    "StyleExtractor",
    "TFHubFeatureExtractor",
    "WeightsHashError",
    "WeightsNotFoundError",
    "as_model_input",
    "check_batch",
    "default_cache_dir",
    "imagenet_classes",
    "extractor_for",
    "load_classifier",
    "load_extractor",
    "load_extractor_for",
    "load_style_extractor",
    "prepare_images",
]

# name -> extractor class, imported on first use. A new backend is one line here.
BACKENDS = Registry(
    "extractor backend",
    {
        "onnx": "helpers.models.onnx_backend:OnnxFeatureExtractor",
        "tf": "helpers.models.tf_backend:TFHubFeatureExtractor",
        "openvino": "helpers.models.openvino_backend:OpenVinoFeatureExtractor",
        "efficientnet_lite2": "helpers.models.efficientnet_lite:EfficientNetLiteExtractor",
    },
)
log = logging.getLogger(__name__)

# What identifies a model's vectors in a store's ``made_by``: an extractor that differs on
# any of these makes vectors of another space.
IDENTITY = ("model", "weights_sha256", "dim", "calibration")

_CLASSES = {
    "OnnxFeatureExtractor": "onnx",
    "TFHubFeatureExtractor": "tf",
    "OpenVinoFeatureExtractor": "openvino",
}


def load_extractor(
    backend: str = "onnx",
    model_handle: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    intra_op_threads: int | None = None,
    batch_size: int = 32,
    **options: Any,
) -> FeatureExtractor:
    """A MobileNetV2 image-embedding extractor (dim 1280) from backend ``backend``.

    backend: a name in :data:`BACKENDS`: ``"onnx"`` (onnxruntime fp32, CPU), ``"tf"``
        (``tensorflow_hub.KerasLayer`` on the cached SavedModel) or ``"openvino"``
        (OpenVINO, bf16 by default, uint8 input: the fastest on a CPU with AVX-512 BF16;
        ``precision="fp32"`` or ``"int8"`` as options).
    model_handle: TF only - a TF-Hub URL (needs internet), e.g.
        ``https://tfhub.dev/google/imagenet/mobilenet_v2_140_224/feature_vector/4``,
        or a SavedModel directory, instead of the local torchvision weights.
    cache_dir: where built models are cached (default :func:`default_cache_dir`);
        the first call builds them (ONNX < 1 s, SavedModel ~ 10 s), later calls reuse.
    intra_op_threads: threads of one forward pass (default: the CPU count).
    batch_size: images per forward pass when called on a larger batch.
    options: the backend's own settings (see its class).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {tuple(BACKENDS)}")
    return BACKENDS[backend](model_handle, cache_dir=cache_dir,
                             intra_op_threads=intra_op_threads, batch_size=batch_size,
                             **options)


def extractor_for(made_by: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(backend, options)`` for :func:`load_extractor` that embed as the vectors whose
    ``made_by`` (a vector store's settings, :meth:`FeatureExtractor.meta` and more) this is.

    The one place that maps what a store records to how to load its model again: the
    backend it names, with its precision (and int8 calibration), except that a ``"tf"``
    store of the local MobileNetV2 weights is served by ``"onnx"`` fp32 (the same graph
    to 1e-5; an app never imports TensorFlow). ValueError, saying why, when those vectors
    cannot be made again here (a TF-Hub module, int8 calibrated on another file, a
    backend this version lacks).
    """
    from .mobilenet_v2 import MODEL_NAME as MOBILENET_V2

    model = str(made_by.get("model", ""))
    backend = str(made_by.get("backend") or "onnx")
    if backend == "tf":
        if model != MOBILENET_V2:
            raise ValueError(f"vectors of {model[:80]!r} need TensorFlow")
        backend = "onnx"
    if backend not in BACKENDS:
        raise ValueError(f"vectors of backend {backend!r}, which this version lacks")
    options: dict[str, Any] = {}
    if backend in ("onnx", "openvino"):
        options["precision"] = str(made_by.get("precision") or "fp32")
        calibration = made_by.get("calibration")
        if calibration:  # "<file name>:<pictures>:<sha256>", see quantize
            name, count, *_ = str(calibration).split(":")
            if name != "sample":
                raise ValueError(f"int8 vectors calibrated on {name!r}, not on the built-in "
                                 f"sample: the same int8 model cannot be rebuilt here")
            options["calibration_pictures"] = int(count)
    return backend, options


def load_extractor_for(made_by: Mapping[str, Any], **kwargs: Any) -> FeatureExtractor:
    """The extractor that makes vectors like those of ``made_by`` (see :func:`extractor_for`);
    ``kwargs`` go to :func:`load_extractor` (threads, batch size). ValueError if the one
    loaded is not that model (other weights, dimension, calibration)."""
    backend, options = extractor_for(made_by)
    extractor = load_extractor(backend, **options, **kwargs)
    meta = extractor.meta()
    diff = [k for k in IDENTITY if meta.get(k) != made_by.get(k)]
    if diff:
        raise ValueError("the model here is not the one the vectors were made with: "
                         + ", ".join(f"{k} {made_by.get(k)!r} there, {meta.get(k)!r} here"
                                     for k in diff))
    if meta.get("precision") != made_by.get("precision"):
        # OpenVINO without bf16 units runs fp32: the same space, a little more exact.
        log.warning("vectors made in %s, embedding in %s", made_by.get("precision"),
                    meta.get("precision"))
    return extractor


def load_classifier(
    backend: str = "onnx",
    *,
    cache_dir: str | Path | None = None,
    intra_op_threads: int | None = None,
    **options: Any,
) -> ImageNetClassifier:
    """The backend's network with its ImageNet head: ``predict_imagenet(images)``, ``top_k``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {tuple(BACKENDS)}")
    return ImageNetClassifier(backend, cache_dir, intra_op_threads, **options)


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


def __getattr__(name: str) -> type:
    # `from helpers.models import TFHubFeatureExtractor` imports its backend only then.
    if name in _CLASSES:
        return BACKENDS[_CLASSES[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
