"""The same MobileNetV2 as an ONNX graph, built directly from the torch checkpoint.

No TensorFlow or torch involved: :func:`build_onnx_model` writes the graph node by
node with ``onnx.helper`` from :func:`~helpers.models.nets.mobilenet_v2.mobilenet_v2_spec`,
with each BatchNorm folded into its convolution and ReLU6 as ``Clip(0, 6)``. Inputs
are NHWC float32 in [0, 1] (like the TF model) with dynamic batch, height and width;
the ImageNet normalisation and the NHWC -> NCHW transpose are the first nodes.

Outputs: ``features`` [N, 1280] (global average pool) and ``logits`` [N, 1000].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.models import cache, weights
from helpers.models.base import FeatureExtractor, InputSpec
from helpers.models.nets import mobilenet_v2
from helpers.models.nets.mobilenet_v2 import (
    EXPORT_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    fold_batchnorm,
    mobilenet_v2_spec,
    weights_meta,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnxruntime

__all__ = [
    "ONNX_FILE",
    "OnnxFeatureExtractor",
    "build_onnx_model",
    "ensure_onnx_model",
    "make_session",
]

ONNX_FILE = "mobilenet_v2_100_imagenet.onnx"  # beside the SavedModel directory
OPSET = 17
IR_VERSION = 8  # old enough for any onnxruntime >= 1.10


def build_onnx_model(state: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The MobileNetV2 graph (features and logits outputs) as an ``onnx.ModelProto``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if state is None:
        state = weights.load_mobilenet_v2_state_dict()
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    mean = const("imagenet_mean", IMAGENET_MEAN.reshape(1, 1, 1, 3))
    std = const("imagenet_std", IMAGENET_STD.reshape(1, 1, 1, 3))
    relu_min = const("relu6_min", np.array(0.0))
    relu_max = const("relu6_max", np.array(6.0))
    # Same arithmetic as the Keras Lambda, (x - mean) / std, to keep the two close.
    nodes.append(helper.make_node("Sub", ["images", mean], ["centred"]))
    nodes.append(helper.make_node("Div", ["centred", std], ["normalised"]))
    nodes.append(helper.make_node("Transpose", ["normalised"], ["nchw"], perm=[0, 3, 1, 2]))

    x = "nchw"
    for block in mobilenet_v2_spec(state):
        block_input = x
        for spec in block.layers:
            w, b = fold_batchnorm(state, spec)
            out = spec.key
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, const(f"{spec.key}.w", w), const(f"{spec.key}.b", b)],
                    [out],
                    name=spec.key,
                    kernel_shape=[spec.kernel, spec.kernel],
                    strides=[spec.stride, spec.stride],
                    pads=[spec.padding] * 4,  # symmetric, as in torch
                    group=spec.in_channels if spec.depthwise else 1,
                )
            )
            if spec.relu6:
                nodes.append(helper.make_node("Clip", [out, relu_min, relu_max], [f"{out}_relu6"]))
                out = f"{out}_relu6"
            x = out
        if block.residual:
            nodes.append(helper.make_node("Add", [block_input, x], [f"{x}_add"]))
            x = f"{x}_add"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    nodes.append(
        helper.make_node(
            "Gemm",
            [
                "features",
                const("classifier.w", state["classifier.1.weight"]),
                const("classifier.b", state["classifier.1.bias"]),
            ],
            ["logits"],
            transB=1,
        )
    )

    graph = helper.make_graph(
        nodes,
        "mobilenet_v2_100",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, ["batch", "height", "width", 3]
            )
        ],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 1280]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="visual-product-search",
        doc_string="torchvision MobileNetV2 (ImageNet); input float32 RGB NHWC in [0,1]",
    )
    model.ir_version = IR_VERSION
    meta = {**weights_meta(), "format": EXPORT_FORMAT}
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(model)
    return model


def _cached_props(path: Path) -> dict[str, str] | None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any unreadable file is simply rebuilt
        return None
    return {p.key: p.value for p in model.metadata_props}


def ensure_onnx_model(cache_dir: str | Path | None = None) -> Path:
    """Path of the cached ``.onnx`` file, (re)built atomically if missing or stale."""
    root = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
    path = root / ONNX_FILE
    expected = {k: str(v) for k, v in {**weights_meta(), "format": EXPORT_FORMAT}.items()}
    if path.is_file() and _cached_props(path) == expected:
        return path
    return cache.publish_file(path, build_onnx_model().SerializeToString())


def make_session(
    path: str | Path, intra_op_threads: int | None = None
) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session; ``intra_op_threads`` defaults to the CPU count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1  # a straight chain: no parallel branches to run
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads sleep instead of spinning: the embedding pipeline decodes
    # JPEGs on the same cores between model calls, and spinning threads starve it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(session: Any, output: str, batch: np.ndarray) -> np.ndarray:
    """One forward pass returning the named output as float32."""
    (result,) = session.run([output], {"images": batch})
    return np.asarray(result, dtype=np.float32)


class OnnxFeatureExtractor(FeatureExtractor):
    """Backend ``"onnx"``: MobileNetV2 features through onnxruntime (no TensorFlow).

    precision: ``"fp32"`` (default, the reference every other backend is measured
    against) or ``"int8"`` (a static QDQ graph calibrated on ``calibration``, a BSON
    file, default the built-in sample; see :mod:`helpers.models.quantize`).
    """

    backend = "onnx"
    precision = "fp32"
    input_spec = InputSpec("float32")

    def __init__(
        self,
        model_handle: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
        precision: str = "fp32",
        calibration: str | Path | None = None,
        calibration_pictures: int = 300,
    ) -> None:
        if model_handle is not None:
            raise ValueError("model_handle is only supported by backend='tf'")
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', not {precision!r}")
        self.precision = precision
        self.path = ensure_onnx_model(cache_dir)
        self._meta = weights_meta()
        if precision == "int8":
            from helpers.models import quantize

            pictures = quantize.calibration_pictures(calibration, calibration_pictures)
            self.path = quantize.ensure_int8_model(self.path, pictures)
            self._meta["calibration"] = (f"{Path(calibration).name if calibration else 'sample'}"
                                         f":{len(pictures)}:{quantize.pictures_sha256(pictures)}")
        self.session = make_session(self.path, intra_op_threads)
        self.name = mobilenet_v2.MODEL_NAME
        self.dim = mobilenet_v2.FEATURE_DIM
        self.batch_size = batch_size

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return run(self.session, "features", batch)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        return run(self.session, "logits", batch)
