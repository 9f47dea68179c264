"""Runtime ``"onnx"``: a network's ONNX graph through onnxruntime on the CPU.

The graph is the network's cached ``.onnx`` (:meth:`~helpers.models.nets.base.Net.ensure_onnx`,
built by :mod:`helpers.models.onnx_graph`): NHWC float32 input in [0, 1], outputs
``features`` and ``logits``. No TensorFlow or torch involved. ``precision="int8"``
runs the static QDQ graph of :mod:`helpers.models.quantize` instead.

Imports: numpy, :mod:`helpers.models`; ``onnxruntime`` lazily (in :func:`make_session`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.models.base import FeatureExtractor, InputSpec
from helpers.models.nets.base import Net

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

__all__ = ["PRECISIONS", "OnnxFeatureExtractor", "make_session", "run"]

PRECISIONS = ("fp32", "int8")


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
    """Runtime ``"onnx"``: a network's features through onnxruntime (no TensorFlow).

    precision: ``"fp32"`` (default, the reference every other runtime is measured
    against) or ``"int8"`` (a static QDQ graph calibrated on ``calibration``, a BSON
    file, default the built-in sample; see :mod:`helpers.models.quantize`).
    """

    runtime = "onnx"
    precision = "fp32"
    input_spec = InputSpec("float32")

    def __init__(
        self,
        net: Net,
        *,
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
        precision: str = "fp32",
        calibration: str | Path | None = None,
        calibration_pictures: int = 300,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.precision = precision
        self.path = net.ensure_onnx(cache_dir)
        self._meta = net.weights_meta()
        if precision == "int8":
            from helpers.models import quantize

            self.path, self._meta["calibration"] = quantize.int8_graph(
                self.path, net.float_convs(), calibration, calibration_pictures)
        self.session = make_session(self.path, intra_op_threads)
        self.name = self.model = net.name
        self.dim = net.dim
        self.batch_size = batch_size

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return run(self.session, "features", batch)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        return run(self.session, "logits", batch)
