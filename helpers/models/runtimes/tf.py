"""Runtime ``"tf"``: TensorFlow, and the only place that imports it.

* :func:`import_tensorflow` - TensorFlow, imported quietly, or a clear error;
* :func:`build_keras_mobilenet_v2` - the ``tf_keras`` rebuild of MobileNetV2 (from
  :func:`~helpers.models.nets.mobilenet_v2.mobilenet_v2_spec`), exported once to a
  TF-Hub style SavedModel (:func:`ensure_saved_model`);
* :class:`TFHubFeatureExtractor` - ``tensorflow_hub.KerasLayer`` on that SavedModel,
  or on a TF-Hub URL / SavedModel directory given as ``model_handle``.

Padding matters: torch pads 3x3 convolutions by 1 on every side. Keras ``"same"``
with stride 2 on an even input pads only bottom/right, which shifts every feature
map by half a pixel, so stride-2 convolutions use an explicit ``ZeroPadding2D(1)``
followed by a ``"valid"`` convolution.

The VGG16 style extractor runs on TensorFlow too: :mod:`helpers.models.runtimes.tf_style`.
Imports: TensorFlow, ``tf_keras``, ``tensorflow_hub`` (inside functions, so that importing
this module is cheap), numpy, :mod:`helpers.models`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.models import cache
from helpers.models.base import FeatureExtractor, InputSpec
from helpers.models.nets.base import Net
from helpers.models.nets.mobilenet_v2 import (
    BN_EPSILON,
    EXPORT_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_NAME,
    MobileNetV2,
    mobilenet_v2_spec,
)

if TYPE_CHECKING:  # pragma: no cover
    import tf_keras

__all__ = [
    "SAVED_MODEL_NAME",
    "TFHubFeatureExtractor",
    "build_keras_mobilenet_v2",
    "ensure_saved_model",
    "export_saved_model",
    "import_tensorflow",
    "keras_logits",
]

SAVED_MODEL_NAME = "mobilenet_v2_100_feature_vector"
META_FILE = "vps_model.json"


def import_tensorflow() -> Any:
    """Import TensorFlow, or explain how to get it (the ONNX backend needs none).

    The first import runs with the process's stderr (fd 2) sent to /dev/null: TF's C++
    start-up logs (oneDNN, "no CUDA driver", cuInit) bypass TF_CPP_MIN_LOG_LEVEL and
    would fill every notebook output. Python errors still surface as exceptions.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()  # the device probe logs too: do it now, quietly
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "This needs TensorFlow: pip install 'visual-product-search[tf]' "
            "(or use runtime='onnx', which does not)."
        ) from exc
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def build_keras_mobilenet_v2(
    state: dict[str, np.ndarray] | None = None, include_top: bool = False
) -> tf_keras.Model:
    """The ``tf_keras`` (Keras 2) MobileNetV2 with torchvision's ImageNet weights.

    Input: float32 RGB [N, H, W, 3] in [0, 1], any H and W (>= 32). Output: the
    1280-d global-average-pooled features, or the 1000 ImageNet logits if
    ``include_top`` (torchvision's classifier: dropout, inert at inference, then dense).
    Built with ``tf_keras`` because ``tensorflow_hub.KerasLayer`` is a Keras 2 layer.
    """
    import_tensorflow()
    import tf_keras
    from tf_keras import layers

    if state is None:
        state = MobileNetV2().state_dict()
    mean, std = IMAGENET_MEAN.copy(), IMAGENET_STD.copy()

    inputs = tf_keras.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = layers.Lambda(lambda t: (t - mean) / std, name="imagenet_normalize")(inputs)
    assignments: list[tuple[Any, list[np.ndarray]]] = []
    for index, block in enumerate(mobilenet_v2_spec(state)):
        block_input = x
        for spec in block.layers:
            w = state[f"{spec.conv}.weight"]
            if spec.stride == 1:
                padding = "same"  # identical to torch's symmetric padding at stride 1
            else:
                x = layers.ZeroPadding2D(spec.padding, name=f"{spec.key}_pad")(x)
                padding = "valid"
            if spec.depthwise:
                conv = layers.DepthwiseConv2D(
                    spec.kernel, spec.stride, padding, use_bias=False, name=spec.key
                )
                kernel = w.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            else:
                conv = layers.Conv2D(
                    spec.out_channels,
                    spec.kernel,
                    spec.stride,
                    padding,
                    use_bias=False,
                    name=spec.key,
                )
                kernel = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            x = conv(x)
            bn = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{spec.key}_bn")
            x = bn(x)
            if spec.relu6:
                x = layers.ReLU(6.0, name=f"{spec.key}_relu6")(x)
            assignments.append((conv, [kernel]))
            assignments.append(
                (
                    bn,
                    [
                        state[f"{spec.bn}.{k}"]
                        for k in ("weight", "bias", "running_mean", "running_var")
                    ],
                )
            )
        if block.residual:
            x = layers.Add(name=f"features_{index}_add")([block_input, x])
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        dense = layers.Dense(1000, name="logits")
        x = dense(x)
        assignments.append((dense, [state["classifier.1.weight"].T, state["classifier.1.bias"]]))
    model = tf_keras.Model(inputs, x, name="mobilenet_v2_100")
    for layer, values in assignments:
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])
    return model


def export_saved_model(path: str | Path, state: dict[str, np.ndarray] | None = None) -> Path:
    """Write the feature-vector model as a TF-Hub style (reusable) SavedModel at ``path``.

    ``obj(images)`` maps float32 [None, None, None, 3] in [0, 1] to [None, 1280];
    ``variables``/``trainable_variables``/``regularization_losses`` follow the TF-Hub
    reusable SavedModel convention so ``hub.KerasLayer(path)`` loads it. BatchNorm is
    always in inference mode (the export is for feature extraction, not fine-tuning).
    """
    tf = import_tensorflow()
    model = build_keras_mobilenet_v2(state, include_top=False)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def call(images: Any) -> Any:
        return model(images, training=False)

    @tf.function(input_signature=[spec])
    def serve(images: Any) -> dict[str, Any]:
        return {"feature_vector": model(images, training=False)}

    obj = tf.train.Checkpoint()
    obj.__call__ = call
    obj.variables = list(model.variables)
    obj.trainable_variables = list(model.trainable_variables)
    obj.regularization_losses = []
    tf.saved_model.save(obj, str(path), signatures={"serving_default": serve})
    return Path(path)


def ensure_saved_model(cache_dir: str | Path | None = None) -> Path:
    """The cached SavedModel directory, exported once (atomically) if missing or stale."""
    root = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
    final = root / SAVED_MODEL_NAME
    meta = {**MobileNetV2().weights_meta(), "format": EXPORT_FORMAT}
    if cache.read_json(final / META_FILE) == meta and (final / "saved_model.pb").is_file():
        return final

    def build(tmp: Path) -> None:
        export_saved_model(tmp)
        cache.publish_file(tmp / META_FILE, _dumps(meta))

    return cache.publish_dir(final, build)


def _dumps(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


class TFHubFeatureExtractor(FeatureExtractor):
    """Runtime ``"tf"``: features from a TF-Hub style SavedModel through ``hub.KerasLayer``.

    By default the SavedModel is the cached export of the network (``"mobilenet_v2"``
    only: the Keras rebuild is MobileNetV2's); ``model_handle`` may instead be a TF-Hub
    URL or another SavedModel directory (those expect their own input size, typically
    224x224, values in [0, 1]), which then replaces the network.
    """

    runtime = "tf"
    precision = "fp32"
    input_spec = InputSpec("float32")

    def __init__(
        self,
        net: Net,
        *,
        model_handle: str | None = None,
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        if precision != "fp32":
            raise ValueError(f"runtime 'tf' runs fp32 only, not precision={precision!r}")
        if model_handle is None and net.name != MODEL_NAME:
            raise ValueError(f"runtime 'tf' runs model {MODEL_NAME!r} only (its Keras "
                             f"rebuild), not {net.name!r}: use runtime 'onnx' or 'openvino'")
        tf = import_tensorflow()
        import tensorflow_hub as hub

        if model_handle is None:
            self.handle = str(ensure_saved_model(cache_dir))
            self.name = self.model = net.name
            self.dim = net.dim
            self._meta = net.weights_meta()
        else:
            self.handle = model_handle
            self.name = self.model = model_handle
            self.dim = -1  # set by the probe below
            self._meta = {"model": model_handle, "model_handle": model_handle,
                          "weights": model_handle, "weights_sha256": None}
        self.layer = hub.KerasLayer(self.handle, trainable=False)
        self._tf = tf
        self.batch_size = batch_size
        if model_handle is not None:  # learn the output size of an unknown module
            self.dim = int(self.layer(tf.zeros([1, 224, 224, 3])).shape[-1])
            self._meta["dim"] = self.dim

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.layer(self._tf.constant(batch)), dtype=np.float32)


def keras_logits() -> Any:
    """``fn(float32 batch) -> logits``: the Keras MobileNetV2 with its head, in memory."""
    tf = import_tensorflow()
    model = build_keras_mobilenet_v2(include_top=True)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda x: np.asarray(fn(tf.constant(x)), dtype=np.float32)
