"""torchvision's MobileNetV2 (width 1.0, ImageNet), rebuilt from its checkpoint.

One architecture description (:func:`mobilenet_v2_spec`) drives both backends: the
Keras model here (exported once to a TF-Hub style SavedModel) and the ONNX graph in
:mod:`helpers.models.runtimes.onnx`. Both take float32 RGB images in [0, 1] of any
size and normalise them with the ImageNet mean/std inside the model.

Padding matters: torch pads 3x3 convolutions by 1 on every side. Keras ``"same"``
with stride 2 on an even input pads only bottom/right, which shifts every feature
map by half a pixel, so stride-2 convolutions use an explicit ``ZeroPadding2D(1)``
followed by a ``"valid"`` convolution.

TensorFlow (``tf_keras``, ``tensorflow_hub``) is imported lazily inside functions so
that this module, and the ONNX backend, import on machines without TensorFlow.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.models import cache, weights

if TYPE_CHECKING:  # pragma: no cover
    import tf_keras

__all__ = [
    "BN_EPSILON",
    "FEATURE_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_NAME",
    "SAVED_MODEL_NAME",
    "Block",
    "ConvBN",
    "build_keras_mobilenet_v2",
    "ensure_saved_model",
    "export_saved_model",
    "fold_batchnorm",
    "import_tensorflow",
    "mobilenet_v2_spec",
    "weights_meta",
]

MODEL_NAME = "mobilenet_v2_100_imagenet_torchvision"
SAVED_MODEL_NAME = "mobilenet_v2_100_feature_vector"
FEATURE_DIM = 1280
BN_EPSILON = 1e-5  # torch's BatchNorm2d default (Keras defaults to 1e-3)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Bump when the exported graph changes, so cached artifacts are rebuilt.
EXPORT_FORMAT = 1
META_FILE = "vps_model.json"

# torchvision's inverted residual settings (expand t, channels c, repeats n, stride s).
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


@dataclass(frozen=True)
class ConvBN:
    """A bias-free convolution followed by BatchNorm (and ReLU6 unless linear)."""

    conv: str  # state-dict prefix of the conv, e.g. "features.2.conv.1.0"
    bn: str  # state-dict prefix of its BatchNorm
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    depthwise: bool
    relu6: bool

    @property
    def padding(self) -> int:
        return self.kernel // 2  # torch: symmetric padding (k - 1) / 2

    @property
    def key(self) -> str:
        return self.conv.replace(".", "_")


@dataclass(frozen=True)
class Block:
    layers: tuple[ConvBN, ...]
    residual: bool  # add the block input to its output (stride 1, same channels)


def _conv(state: dict[str, np.ndarray], conv: str, bn: str, stride: int, relu6: bool) -> ConvBN:
    w = state[f"{conv}.weight"]  # torch layout (out, in / groups, kh, kw)
    depthwise = w.shape[1] == 1 and w.shape[0] > 1
    in_channels = w.shape[0] if depthwise else w.shape[1]
    return ConvBN(conv, bn, in_channels, w.shape[0], w.shape[2], stride, depthwise, relu6)


def mobilenet_v2_spec(state: dict[str, np.ndarray]) -> list[Block]:
    """The network as a list of blocks, keyed into torchvision's state dict."""
    blocks = [Block((_conv(state, "features.0.0", "features.0.1", 2, True),), False)]
    index = 1
    for _t, _c, n, s in _INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{index}.conv"
            if f"{p}.3.weight" in state:  # expand 1x1 -> depthwise 3x3 -> project 1x1
                layers = (
                    _conv(state, f"{p}.0.0", f"{p}.0.1", 1, True),
                    _conv(state, f"{p}.1.0", f"{p}.1.1", stride, True),
                    _conv(state, f"{p}.2", f"{p}.3", 1, False),
                )
            else:  # expand ratio 1: no expansion conv
                layers = (
                    _conv(state, f"{p}.0.0", f"{p}.0.1", stride, True),
                    _conv(state, f"{p}.1", f"{p}.2", 1, False),
                )
            residual = stride == 1 and layers[0].in_channels == layers[-1].out_channels
            blocks.append(Block(layers, residual))
            index += 1
    last = f"features.{index}"
    blocks.append(Block((_conv(state, f"{last}.0", f"{last}.1", 1, True),), False))
    return blocks


def fold_batchnorm(state: dict[str, np.ndarray], layer: ConvBN,
                   eps: float = BN_EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight (torch OIHW) and bias with the inference BatchNorm folded in.

    eps: the BatchNorm epsilon the checkpoint was trained with (torch 1e-5, TF 1e-3).
    """
    w = state[f"{layer.conv}.weight"].astype(np.float64)
    gamma = state[f"{layer.bn}.weight"].astype(np.float64)
    beta = state[f"{layer.bn}.bias"].astype(np.float64)
    mean = state[f"{layer.bn}.running_mean"].astype(np.float64)
    var = state[f"{layer.bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + eps)
    # Fold in float64 so the folded float32 weights are as close as rounding allows.
    return (
        (w * scale[:, None, None, None]).astype(np.float32),
        (beta - mean * scale).astype(np.float32),
    )


def weights_meta() -> dict[str, Any]:
    """Identity of the weights every artifact is built from (for staleness checks)."""
    path = weights.mobilenet_v2_checkpoint_path()
    return {
        "model": MODEL_NAME,
        "weights": path.name,
        "weights_sha256": weights.file_sha256(path)[:16],
        "dim": FEATURE_DIM,
        "input": "float32 RGB [N,H,W,3] in [0,1]; ImageNet mean/std applied inside",
    }


# --------------------------------------------------------------------------------------
# Keras / TensorFlow
# --------------------------------------------------------------------------------------


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
            "(or use backend='onnx', which does not)."
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
        state = weights.load_mobilenet_v2_state_dict()
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
    meta = {**weights_meta(), "format": EXPORT_FORMAT}
    if cache.read_json(final / META_FILE) == meta and (final / "saved_model.pb").is_file():
        return final

    def build(tmp: Path) -> None:
        export_saved_model(tmp)
        cache.publish_file(tmp / META_FILE, _dumps(meta))

    return cache.publish_dir(final, build)


def _dumps(obj: dict[str, Any]) -> bytes:
    import json

    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
