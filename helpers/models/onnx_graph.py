"""The one ONNX graph builder of every network: layers described, nodes emitted here.

A network (:mod:`helpers.models.nets`) describes itself as a :class:`GraphSpec`: its
input normalisation, a list of :class:`Block` of :class:`ConvBN` layers keyed into
its checkpoint's state dict, its padding convention and its classifier. :func:`build`
writes the graph node by node with ``onnx.helper``:

* input ``images``: NHWC float32 RGB in [0, 1], dynamic batch, height and width;
  ``(x - mean) / std`` and the NHWC -> NCHW transpose are the first nodes;
* each convolution with its inference BatchNorm folded in (:func:`fold_batchnorm`,
  in float64), ReLU6 as ``Clip(0, 6)``, a residual ``Add`` per block that has one;
* outputs ``features`` [N, dim] (global average pool) and ``logits`` [N, 1000].

Convolution nodes are named by their state-dict prefix (``features_0_0``), which
:mod:`helpers.models.quantize` uses to keep the first and last convolutions in float.
:func:`ensure_cached` caches the serialised graph, keyed by its metadata properties.

Imports: numpy, :mod:`helpers.models.cache`; ``onnx`` lazily (only to build).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.models import cache

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "IR_VERSION",
    "OPSET",
    "PADDINGS",
    "Block",
    "ConvBN",
    "GraphSpec",
    "build",
    "cached_props",
    "conv_bn",
    "ensure_cached",
    "fold_batchnorm",
]

OPSET = 17
IR_VERSION = 8  # old enough for any onnxruntime >= 1.10
# "symmetric": torch's k // 2 on every side. "same_upper": TF "SAME", the odd pad pixel
# at the bottom/right at stride 2, for any input size (ONNX auto_pad="SAME_UPPER").
PADDINGS = ("symmetric", "same_upper")


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


def conv_bn(state: Mapping[str, np.ndarray], conv: str, bn: str, stride: int,
            relu6: bool) -> ConvBN:
    """The layer ``conv`` + ``bn`` of a checkpoint, its shape read from the weight."""
    w = state[f"{conv}.weight"]  # torch layout (out, in / groups, kh, kw)
    depthwise = w.shape[1] == 1 and w.shape[0] > 1
    in_channels = w.shape[0] if depthwise else w.shape[1]
    return ConvBN(conv, bn, in_channels, w.shape[0], w.shape[2], stride, depthwise, relu6)


def fold_batchnorm(state: Mapping[str, np.ndarray], layer: ConvBN,
                   eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass(frozen=True)
class GraphSpec:
    """What a network's graph is made of; :func:`build` turns it into ONNX."""

    name: str  # the graph's name, e.g. "mobilenet_v2_100"
    blocks: list[Block]
    mean: np.ndarray  # per RGB channel, applied as (x - mean) / std to x in [0, 1]
    std: np.ndarray
    bn_epsilon: float
    padding: str  # one of PADDINGS
    head: tuple[str, str]  # state-dict keys of the classifier's weight and bias
    dim: int  # features: the channels of the last block
    doc: str = ""

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, not {self.padding!r}")

    @property
    def float_convs(self) -> tuple[str, str]:
        """Node names of the first and the last convolution (int8 keeps them float)."""
        return self.blocks[0].layers[0].key, self.blocks[-1].layers[-1].key


def build(spec: GraphSpec, state: Mapping[str, np.ndarray],
          props: Mapping[str, Any]) -> onnx.ModelProto:
    """The network's graph (``features`` and ``logits``), ``props`` as its metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: Any) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def rgb(value: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, np.float32), (3,)).reshape(1, 1, 1, 3)

    mean, std = const("pixel_mean", rgb(spec.mean)), const("pixel_std", rgb(spec.std))
    relu_min, relu_max = const("relu6_min", np.array(0.0)), const("relu6_max", np.array(6.0))
    # (x - mean) / std, the arithmetic of the references (Keras Lambda, torch transforms).
    nodes.append(helper.make_node("Sub", ["images", mean], ["centred"]))
    nodes.append(helper.make_node("Div", ["centred", std], ["normalised"]))
    nodes.append(helper.make_node("Transpose", ["normalised"], ["nchw"], perm=[0, 3, 1, 2]))

    x = "nchw"
    for block in spec.blocks:
        block_input = x
        for layer in block.layers:
            w, b = fold_batchnorm(state, layer, eps=spec.bn_epsilon)
            if spec.padding == "symmetric":
                pad: dict[str, Any] = {"pads": [layer.padding] * 4}
            else:
                pad = {"auto_pad": "SAME_UPPER"}
            out = layer.key
            nodes.append(helper.make_node(
                "Conv", [x, const(f"{layer.key}.w", w), const(f"{layer.key}.b", b)], [out],
                name=layer.key, kernel_shape=[layer.kernel, layer.kernel],
                strides=[layer.stride, layer.stride],
                group=layer.in_channels if layer.depthwise else 1, **pad,
            ))
            if layer.relu6:
                nodes.append(helper.make_node("Clip", [out, relu_min, relu_max], [f"{out}_relu6"]))
                out = f"{out}_relu6"
            x = out
        if block.residual:
            nodes.append(helper.make_node("Add", [block_input, x], [f"{x}_add"]))
            x = f"{x}_add"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    weight, bias = spec.head
    nodes.append(helper.make_node(
        "Gemm", ["features", const("head.w", state[weight]), const("head.b", state[bias])],
        ["logits"], transB=1,
    ))
    graph = helper.make_graph(
        nodes, spec.name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       ["batch", "height", "width", 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", spec.dim]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="visual-product-search", doc_string=spec.doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {k: str(v) for k, v in props.items()})
    onnx.checker.check_model(model)
    return model


def cached_props(path: Path) -> dict[str, str] | None:
    """The metadata properties of a cached ``.onnx`` file, None if it is unreadable."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any unreadable file is simply rebuilt
        return None
    return {p.key: p.value for p in model.metadata_props}


def ensure_cached(path: Path, props: Mapping[str, Any],
                  make: Callable[[], onnx.ModelProto]) -> Path:
    """``path``, (re)built atomically by ``make`` unless it holds a graph with ``props``."""
    expected = {k: str(v) for k, v in props.items()}
    if path.is_file() and cached_props(path) == expected:
        return path
    return cache.publish_file(path, make().SerializeToString())
