"""torchvision's MobileNetV2 (width 1.0, ImageNet), rebuilt from its checkpoint.

:class:`MobileNetV2` is the network ``"mobilenet_v2"`` of ``helpers.models.NETS``. One
architecture description (:func:`mobilenet_v2_spec`) drives every runtime: the ONNX
graph (:mod:`helpers.models.onnx_graph`, run by onnxruntime and OpenVINO) and the
Keras model exported to a TF-Hub style SavedModel (:mod:`helpers.models.runtimes.tf`).
Both take float32 RGB images in [0, 1] of any size and normalise them with the
ImageNet mean/std inside the model. Convolutions pad as torch does: symmetrically.

Imports: numpy and :mod:`helpers.models` (weights, graph builder); no runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.models import weights
from helpers.models.nets.base import Net
from helpers.models.onnx_graph import Block, ConvBN, GraphSpec, conv_bn, fold_batchnorm

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "BN_EPSILON",
    "FEATURE_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LEGACY_MODEL_NAME",
    "MODEL_NAME",
    "ONNX_FILE",
    "Block",
    "ConvBN",
    "MobileNetV2",
    "build_onnx_model",
    "ensure_onnx_model",
    "fold_batchnorm",
    "mobilenet_v2_spec",
    "weights_meta",
]

MODEL_NAME = "mobilenet_v2"  # its name in helpers.models.NETS and in every meta
# What meta["model"] said before models and runtimes were two settings (old stores).
LEGACY_MODEL_NAME = "mobilenet_v2_100_imagenet_torchvision"
ONNX_FILE = "mobilenet_v2_100_imagenet.onnx"
FEATURE_DIM = 1280
BN_EPSILON = 1e-5  # torch's BatchNorm2d default (Keras defaults to 1e-3)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Bump when the exported graphs (ONNX, SavedModel) change, so cached artifacts are rebuilt.
EXPORT_FORMAT = 2

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


def mobilenet_v2_spec(state: dict[str, np.ndarray]) -> list[Block]:
    """The network as a list of blocks, keyed into torchvision's state dict."""
    blocks = [Block((conv_bn(state, "features.0.0", "features.0.1", 2, True),), False)]
    index = 1
    for _t, _c, n, s in _INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{index}.conv"
            if f"{p}.3.weight" in state:  # expand 1x1 -> depthwise 3x3 -> project 1x1
                layers = (
                    conv_bn(state, f"{p}.0.0", f"{p}.0.1", 1, True),
                    conv_bn(state, f"{p}.1.0", f"{p}.1.1", stride, True),
                    conv_bn(state, f"{p}.2", f"{p}.3", 1, False),
                )
            else:  # expand ratio 1: no expansion conv
                layers = (
                    conv_bn(state, f"{p}.0.0", f"{p}.0.1", stride, True),
                    conv_bn(state, f"{p}.1", f"{p}.2", 1, False),
                )
            residual = stride == 1 and layers[0].in_channels == layers[-1].out_channels
            blocks.append(Block(layers, residual))
            index += 1
    last = f"features.{index}"
    blocks.append(Block((conv_bn(state, f"{last}.0", f"{last}.1", 1, True),), False))
    return blocks


class MobileNetV2(Net):
    """MobileNetV2 1.0 with torchvision's ImageNet weights: 1280-d features."""

    name = MODEL_NAME
    dim = FEATURE_DIM
    onnx_file = ONNX_FILE
    export_format = EXPORT_FORMAT
    input_note = "float32 RGB [N,H,W,3] in [0,1]; ImageNet mean/std applied inside"

    def checkpoint_path(self) -> Path:
        return weights.mobilenet_v2_checkpoint_path()

    def state_dict(self) -> dict[str, np.ndarray]:
        return weights.load_mobilenet_v2_state_dict()

    def graph(self, state: dict[str, np.ndarray]) -> GraphSpec:
        return GraphSpec(
            name="mobilenet_v2_100", blocks=mobilenet_v2_spec(state),
            mean=IMAGENET_MEAN, std=IMAGENET_STD, bn_epsilon=BN_EPSILON,
            padding="symmetric", head=("classifier.1.weight", "classifier.1.bias"),
            dim=FEATURE_DIM,
            doc="torchvision MobileNetV2 (ImageNet); input float32 RGB NHWC in [0,1]",
        )


def weights_meta() -> dict[str, Any]:
    """Identity of the weights every artifact is built from (for staleness checks)."""
    return MobileNetV2().weights_meta()


def build_onnx_model(state: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The MobileNetV2 graph (features and logits outputs) as an ``onnx.ModelProto``."""
    return MobileNetV2().build_onnx(state)


def ensure_onnx_model(cache_dir: str | Path | None = None) -> Path:
    """Path of the cached ``.onnx`` file, (re)built atomically if missing or stale."""
    return MobileNetV2().ensure_onnx(cache_dir)
