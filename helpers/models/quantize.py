"""int8 post-training quantisation of a network's ONNX graph (onnxruntime static QDQ).

The fp32 graph gets QuantizeLinear/DequantizeLinear pairs around every convolution:
weights int8 per output channel, activations uint8 with ranges calibrated on real
catalogue pictures. Both onnxruntime and OpenVINO run such a QDQ graph with int8
arithmetic (VNNI). No new dependency: the quantiser ships with onnxruntime.

Calibration pictures decide the activation ranges, so they identify the model: their
hash goes into the file name and the extractor's meta. By default they are the first
``n`` pictures of the built-in sample (always at hand); pass a real catalogue's
pictures for ranges closer to real products.

Imports: numpy, :mod:`helpers.models.cache`; ``onnxruntime.quantization``, ``onnx``
and the BSON reader lazily.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from helpers.models import cache

__all__ = ["calibration_pictures", "ensure_int8_model", "int8_graph", "pictures_sha256"]

log = logging.getLogger(__name__)

RECIPE = "v3"  # bump when the quantisation settings change: the cached file is rebuilt
# MobileNetV2's first and last convolutions (node names: see helpers.models.onnx_graph);
# another network passes its own (Net.float_convs).
FLOAT_CONVS = ("features_0_0", "features_18_0")


def calibration_pictures(bson_path: str | Path | None = None, n: int = 300,
                         size: int = 224) -> np.ndarray:
    """The first ``n`` pictures of a Cdiscount-format BSON file (default: the built-in
    sample), decoded and resized to uint8 [n, size, size, 3]."""
    import bson

    from helpers.core.paths import SAMPLE_BSON
    from helpers.ingest.jpeg import decode_image

    out: list[np.ndarray] = []
    with open(bson_path or SAMPLE_BSON, "rb") as f:
        for doc in bson.decode_file_iter(f):
            for img in doc["imgs"]:
                out.append(decode_image(img["picture"], size))
                if len(out) == n:
                    return np.stack(out)
    return np.stack(out)


def pictures_sha256(pictures: np.ndarray) -> str:
    """Short hash of a uint8 picture batch (shape included)."""
    h = hashlib.sha256(str(pictures.shape).encode())
    h.update(np.ascontiguousarray(pictures).tobytes())
    return h.hexdigest()[:12]


def _reader(pictures: np.ndarray, batch: int) -> object:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = (
                np.multiply(pictures[i : i + batch], np.float32(1 / 255), dtype=np.float32)
                for i in range(0, len(pictures), batch)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.batches, None)
            return None if b is None else {"images": b}

    return Reader()


def _name_nodes(path: Path) -> None:
    """Name the graph's anonymous nodes (ReLU6 after their convolution), to exclude them."""
    import onnx

    model = onnx.load(str(path))
    names = {"GlobalAveragePool": "pool", "Flatten": "flatten", "Gemm": "head"}
    producer = {o: n for n in model.graph.node for o in n.output}
    for i, node in enumerate(model.graph.node):
        if node.name:
            continue
        source = producer.get(node.input[0]) if node.input else None
        if node.op_type == "Clip" and source is not None and source.name:
            node.name = f"{source.name}_relu6"
        else:
            node.name = names.get(node.op_type, f"{node.op_type.lower()}_{i}")
    onnx.save(model, str(path))


def ensure_int8_model(fp32_path: str | Path, pictures: np.ndarray,
                      method: str = "MinMax",
                      float_convs: tuple[str, ...] = FLOAT_CONVS) -> Path:
    """The QDQ int8 ``.onnx`` beside ``fp32_path``, calibrated on ``pictures`` (uint8).

    float_convs: node names of the convolutions kept in float (first and last).
    Built once per calibration set (atomically, world-readable) and reused after.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    fp32_path = Path(fp32_path)
    key = pictures_sha256(pictures)
    final = fp32_path.with_name(f"{fp32_path.stem}.int8-{RECIPE}-{method.lower()}-{key}.onnx")
    if final.is_file():
        return final
    log.info("quantising %s to int8 on %d calibration pictures (%s)", fp32_path.name,
             len(pictures), method)
    with tempfile.TemporaryDirectory(dir=fp32_path.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        _name_nodes(pre)
        quantize_static(
            str(pre), str(out), _reader(pictures, 32),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            # Not the first convolution (it sees the raw picture) nor the last (its
            # output, averaged, IS the feature vector: uint8 steps there would be steps
            # in every feature), with their ReLU6; nor the pooling and the head.
            nodes_to_exclude=[*float_convs, *(f"{c}_relu6" for c in float_convs),
                              "pool", "flatten", "head"],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return cache.publish_file(final, out.read_bytes())


def int8_graph(fp32_path: Path, float_convs: tuple[str, ...],
               calibration: str | Path | None, n: int) -> tuple[Path, str]:
    """(the int8 graph of ``fp32_path``, its ``calibration`` meta entry): calibrated on
    the first ``n`` pictures of ``calibration`` (a BSON file; None: the built-in sample).

    The meta entry (``"<file name or sample>:<n>:<pictures hash>"``) identifies the ranges.
    """
    pictures = calibration_pictures(calibration, n)
    path = ensure_int8_model(fp32_path, pictures, float_convs=float_convs)
    name = Path(calibration).name if calibration else "sample"
    return path, f"{name}:{len(pictures)}:{pictures_sha256(pictures)}"
