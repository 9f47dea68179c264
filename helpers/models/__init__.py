"""Pretrained CNNs for visual product search, loaded fully offline.

An extractor is two settings: a network (``model``, in :data:`NETS`) and the runtime
that runs it (``runtime``, in :data:`RUNTIMES`), plus a ``precision``:

* :func:`load_extractor` - ``load_extractor(model="mobilenet_v2", runtime="onnx")``:
  1280-d image embeddings. Networks: ``"mobilenet_v2"`` (torchvision ImageNet weights),
  ``"efficientnet_lite2"``. Runtimes: ``"onnx"`` (onnxruntime, fp32 or int8, no
  TensorFlow), ``"openvino"`` (the same ONNX graph in OpenVINO: bf16 where the CPU has
  it, fp32 or int8; uint8 input), ``"tf"`` (a TF-Hub style SavedModel via
  ``tensorflow_hub.KerasLayer``; MobileNetV2 or a ``model_handle`` only).
* :func:`extractor_args` / :func:`extractor_for` - a vector store's ``made_by`` back to
  the extractor that made it (same model, runtime, precision), e.g. to embed an upload.
* :func:`load_classifier` - the same network with its ImageNet head, to sanity-check
  the weights (``top_k`` on a photo of a cat should say "tabby").
* :func:`load_style_extractor` - VGG16 Gram-matrix style embeddings (TensorFlow).

Every extractor maps RGB [N, H, W, 3], float in [0, 1] or uint8, to float32 [N, dim],
and has ``.name``, ``.dim``, ``.model``, ``.runtime``, ``.precision`` (what really runs),
``.input_spec`` (the input dtype it takes for free, see :class:`InputSpec`) and ``.meta()``
(what made the vectors, model, runtime and precision included: the vector store's
``made_by``). Built artifacts are cached under :func:`default_cache_dir`
(``$VPS_MODEL_DIR`` or ``~/.cache/visual-product-search/models``). Weights come from pip
packages (see :mod:`helpers.models.weights`), checked by sha256; nothing is downloaded.

Adding a network: a module under ``nets/`` with a :class:`~helpers.models.nets.base.Net`
subclass, and one line in :data:`NETS`. Adding a runtime: a module under ``runtimes/``
with a :class:`FeatureExtractor` subclass whose constructor takes ``(net, *, cache_dir,
intra_op_threads, batch_size, precision, **options)``, and one line in :data:`RUNTIMES`.
TensorFlow is imported only by ``runtimes/tf*.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers.core.registry import Registry
from helpers.models.base import FeatureExtractor, InputSpec, as_model_input, check_batch
from helpers.models.cache import default_cache_dir
from helpers.models.extractors import ImageNetClassifier, imagenet_classes, prepare_images
from helpers.models.nets.vgg16_style import DEFAULT_STYLE_LAYERS
from helpers.models.weights import WeightsHashError, WeightsNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from helpers.models.runtimes.onnx import OnnxFeatureExtractor
    from helpers.models.runtimes.openvino import OpenVinoFeatureExtractor
    from helpers.models.runtimes.tf import TFHubFeatureExtractor
    from helpers.models.runtimes.tf_style import StyleExtractor

__all__ = [
    "DEFAULT_STYLE_LAYERS",
    "NETS",
    "RUNTIMES",
    "FeatureExtractor",
    "ImageNetClassifier",
    "InputSpec",
    "OnnxFeatureExtractor",
    "OpenVinoFeatureExtractor",
    "StyleExtractor",
    "TFHubFeatureExtractor",
    "WeightsHashError",
    "WeightsNotFoundError",
    "as_model_input",
    "check_batch",
    "default_cache_dir",
    "extractor_args",
    "extractor_for",
    "imagenet_classes",
    "load_classifier",
    "load_extractor",
    "load_style_extractor",
    "prepare_images",
]

log = logging.getLogger(__name__)

# name -> Net class (its graph), imported on first use. A new network is one line here.
NETS = Registry(
    "network",
    {
        "mobilenet_v2": "helpers.models.nets.mobilenet_v2:MobileNetV2",
        "efficientnet_lite2": "helpers.models.nets.efficientnet_lite:EfficientNetLite2",
    },
)
# name -> extractor class running a net, imported on first use. A new runtime: one line.
RUNTIMES = Registry(
    "runtime",
    {
        "onnx": "helpers.models.runtimes.onnx:OnnxFeatureExtractor",
        "openvino": "helpers.models.runtimes.openvino:OpenVinoFeatureExtractor",
        "tf": "helpers.models.runtimes.tf:TFHubFeatureExtractor",
    },
)
_CLASSES = {
    "OnnxFeatureExtractor": "helpers.models.runtimes.onnx",
    "TFHubFeatureExtractor": "helpers.models.runtimes.tf",
    "OpenVinoFeatureExtractor": "helpers.models.runtimes.openvino",
    "StyleExtractor": "helpers.models.runtimes.tf_style",
}
# meta["model"] of stores made before model and runtime were two settings.
_LEGACY_MODELS = {"mobilenet_v2_100_imagenet_torchvision": "mobilenet_v2",
                  "efficientnet_lite2_imagenet": "efficientnet_lite2"}


def _check(model: str, runtime: str) -> None:
    if model not in NETS:
        hint = (f" ({model!r} is a runtime: load_extractor(model=..., runtime={model!r}))"
                if model in RUNTIMES else "")
        raise ValueError(f"unknown model {model!r}; choose one of {tuple(NETS)}{hint}")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {tuple(RUNTIMES)}")


def load_extractor(
    model: str = "mobilenet_v2",
    runtime: str = "onnx",
    precision: str | None = None,
    *,
    model_handle: str | None = None,
    cache_dir: str | Path | None = None,
    intra_op_threads: int | None = None,
    batch_size: int = 32,
    **options: Any,
) -> FeatureExtractor:
    """An image-embedding extractor: network ``model`` run by ``runtime``.

    model: a name in :data:`NETS`: ``"mobilenet_v2"`` (1280-d) or ``"efficientnet_lite2"``
        (1280-d, 260 px native).
    runtime: a name in :data:`RUNTIMES`: ``"onnx"`` (onnxruntime, CPU), ``"openvino"``
        (OpenVINO, uint8 input: the fastest on a CPU with AVX-512 BF16 or AMX) or ``"tf"``
        (``tensorflow_hub.KerasLayer`` on the cached SavedModel; MobileNetV2 only).
    precision: None for the runtime's default (onnx and tf ``"fp32"``, openvino
        ``"bf16"``), or ``"fp32"``, ``"bf16"`` (openvino), ``"int8"`` (onnx, openvino).
        ``extractor.precision`` says what really runs (openvino bf16 is fp32 on a CPU
        without bf16).
    model_handle: runtime ``"tf"`` only - a TF-Hub URL (needs internet), e.g.
        ``https://tfhub.dev/google/imagenet/mobilenet_v2_140_224/feature_vector/4``,
        or a SavedModel directory, instead of ``model``.
    cache_dir: where built models are cached (default :func:`default_cache_dir`);
        the first call builds them (ONNX < 1 s, SavedModel ~ 10 s), later calls reuse.
    intra_op_threads: threads of one forward pass (default: the CPU count).
    batch_size: images per forward pass when called on a larger batch.
    options: the runtime's own settings (see its class, e.g. ``calibration``).
    """
    _check(model, runtime)
    if model_handle is not None:
        if runtime != "tf":
            raise ValueError(f"model_handle is only supported by runtime='tf', not {runtime!r}")
        options["model_handle"] = model_handle
    if precision is not None:
        options["precision"] = precision
    return RUNTIMES[runtime](NETS[model](), cache_dir=cache_dir,
                             intra_op_threads=intra_op_threads, batch_size=batch_size,
                             **options)


# What identifies a model's vectors in a store's ``made_by``: an extractor that differs on
# any of these makes vectors of another space (precision and runtime only round differently).
IDENTITY = ("model", "weights_sha256", "dim", "calibration")


def extractor_args(meta: Mapping[str, Any], calibration: str | Path | None = None, *,
                   serving: bool = False) -> dict[str, Any]:
    """The :func:`load_extractor` arguments that make vectors like a store's ``made_by``.

    The one place that maps what a store records back to a model: same model, runtime and
    precision (and int8 calibration); the picture size is the store's
    ``made_by["image_size"]``, for the caller to resize to. Reads the meta of older stores
    too (``backend`` instead of ``runtime``; ``backend="efficientnet_lite2"`` is
    EfficientNet-Lite2 on onnx). ``calibration``: the BSON file an int8 store was
    calibrated on, when that was not the built-in sample (the meta has its name only).

    serving: for an app, which never imports TensorFlow: a ``tf`` store of the local
    weights is embedded by ``onnx`` fp32 (the same graph, to 1e-5), and a TF-Hub module's
    vectors are refused. ValueError, saying why, for vectors that cannot be made again here
    (VGG16 style, a network or runtime this version lacks, int8 calibrated elsewhere).
    """
    model = str(meta.get("model"))
    runtime = meta.get("runtime")
    backend = meta.get("backend")
    if runtime in (None, "onnxruntime"):  # older stores: one "backend" setting
        runtime = "onnx" if backend in (None, "efficientnet_lite2") else backend
    model = _LEGACY_MODELS.get(model, model)
    args: dict[str, Any] = {"model": model, "runtime": runtime,
                            "precision": meta.get("precision") or "fp32"}
    handle = meta.get("model_handle")
    if handle is None and runtime == "tf" and model not in NETS and meta.get("weights") == model:
        handle = model  # an older TF-Hub store: its model was the handle
    if handle is not None:
        if serving:
            raise ValueError(f"vectors of the TF-Hub module {str(handle)[:80]!r} need "
                             "TensorFlow, which an app never imports")
        return {"model": "mobilenet_v2", "runtime": "tf", "precision": "fp32",
                "model_handle": handle}
    if model not in NETS:
        raise ValueError(f"vectors made by model {model[:80]!r}: not a network of "
                         f"helpers.models ({', '.join(NETS)})"
                         + (" - use load_style_extractor" if model.startswith("vgg16") else ""))
    if runtime not in RUNTIMES:
        raise ValueError(f"vectors of runtime {runtime!r}, which this version lacks "
                         f"({', '.join(RUNTIMES)})")
    if serving and runtime == "tf":
        args.update(runtime="onnx", precision="fp32")
    _check(model, str(args["runtime"]))
    if meta.get("calibration"):  # "<file name or sample>:<pictures>:<hash>"
        source, n, _ = str(meta["calibration"]).split(":")
        args["calibration_pictures"] = int(n)
        if calibration is not None:
            args["calibration"] = calibration
        elif source != "sample":
            raise ValueError(f"int8 vectors calibrated on {source!r}: pass calibration=<the "
                             "path of that BSON file>")
    return args


def extractor_for(meta: Mapping[str, Any], calibration: str | Path | None = None, *,
                  serving: bool = False, **kw: Any) -> FeatureExtractor:
    """``load_extractor(**extractor_args(meta), **kw)``: the extractor of a store's vectors.

    kw: settings that do not change the vectors (``cache_dir``, ``intra_op_threads``,
    ``batch_size``). A result of another model, weights, dimension or calibration than the
    store's (IDENTITY) makes vectors of another space: ValueError when ``serving`` (an app
    must not answer with them), else a warning. Another precision or runtime only rounds
    differently (bf16 vectors, but this CPU runs fp32): a warning.
    """
    ext = load_extractor(**extractor_args(meta, calibration, serving=serving), **kw)
    now = {**ext.meta(), "model": ext.meta().get("model")}
    was = {**meta, "model": _LEGACY_MODELS.get(str(meta.get("model")), meta.get("model"))}
    other = [k for k in IDENTITY if k in now and k in was and now[k] != was[k]]
    if other and serving:
        raise ValueError("the model here is not the one the vectors were made with: "
                         + ", ".join(f"{k} {was[k]!r} there, {now[k]!r} here" for k in other))
    differ = other + [k for k in ("runtime", "precision")
                      if k in now and k in was and now[k] != was[k]]
    if differ:
        log.warning("extractor for %s differs from the store's in %s: %s", was.get("model"),
                    ", ".join(differ), {k: (was[k], now[k]) for k in differ})
    return ext


def load_classifier(
    model: str = "mobilenet_v2",
    runtime: str = "onnx",
    precision: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    intra_op_threads: int | None = None,
    **options: Any,
) -> ImageNetClassifier:
    """The network with its ImageNet head: ``predict_imagenet(images)``, ``top_k``."""
    _check(model, runtime)
    if precision is not None:
        options["precision"] = precision
    return ImageNetClassifier(model, runtime, cache_dir, intra_op_threads, **options)


def load_style_extractor(
    layers: tuple[str, ...] | None = None,
    dim_per_layer: int = 256,
    seed: int = 0,
    input_size: int | None = None,
    batch_size: int = 16,
) -> StyleExtractor:
    """VGG16 Gram-matrix style embeddings (TensorFlow): :mod:`helpers.models.runtimes.tf_style`."""
    from helpers.models.runtimes.tf_style import StyleExtractor

    return StyleExtractor(
        layers or DEFAULT_STYLE_LAYERS, dim_per_layer, seed, input_size, batch_size
    )


def __getattr__(name: str) -> type:
    # `from helpers.models import TFHubFeatureExtractor` imports its runtime only then.
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
