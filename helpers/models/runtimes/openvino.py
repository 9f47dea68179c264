"""Backend ``"openvino"``: the same ONNX MobileNetV2 graph, run by OpenVINO in bf16.

OpenVINO reads the cached ``.onnx`` file (:func:`~helpers.models.runtimes.onnx.ensure_onnx_model`)
directly. Two things make it faster than onnxruntime fp32 on this CPU:

* ``INFERENCE_PRECISION_HINT=bf16``: convolutions run on the AVX-512 BF16 (or AMX)
  units, accumulating in float32; ``precision="f32"`` turns it off.
* uint8 input: a pre-processing step converts and scales 0..255 pictures inside the
  graph (fused into the first convolution), so callers skip a float copy of the batch
  (``input_spec.dtype == "uint8"``). Float [0, 1] batches work too, through a second
  model compiled on first use.

The LATENCY hint with ``intra_op_threads`` threads (default: the CPU count) runs one
batch at a time on all cores, as the embedding pipeline calls it. Models are compiled
once per picture size: one with a static batch of ``static_batch`` pictures (default 64,
the pipeline's batch; a static shape measured ~15-20% faster than a dynamic one), which
takes every full ``static_batch`` of a call, and one with a dynamic batch for the rest
(the pipeline's batches hold whole products, 64 to 67 pictures).

bf16 features differ from fp32 by 1-2.5% of their norm at most (cosine >= 0.993, mean
0.998, on real pictures); ``tests/test_models_openvino.py`` states the bound, and the
neighbours it finds are checked against fp32 in ``bench/bench_embed.py``.

``precision="int8"`` runs the QDQ graph of :mod:`helpers.models.quantize` (int8
convolutions on VNNI, the rest in bf16): faster still, but see that module for its
quality; ``precision="fp32"`` is the plain graph.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from helpers.models.base import FeatureExtractor, InputSpec
from helpers.models.nets import mobilenet_v2
from helpers.models.runtimes import onnx as onnx_backend

__all__ = ["PRECISIONS", "OpenVinoFeatureExtractor"]

log = logging.getLogger(__name__)

# our name -> OpenVINO's INFERENCE_PRECISION_HINT (int8: a QDQ graph, the rest in bf16)
PRECISIONS = {"bf16": "bf16", "fp32": "f32", "int8": "bf16"}


class OpenVinoFeatureExtractor(FeatureExtractor):
    """MobileNetV2 features through OpenVINO's CPU plugin, bf16 by default, uint8 input."""

    backend = "openvino"
    input_spec = InputSpec("uint8")

    def __init__(
        self,
        model_handle: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 64,
        precision: str = "bf16",
        calibration: str | Path | None = None,
        calibration_pictures: int = 300,
        static_batch: int = 64,
    ) -> None:
        if model_handle is not None:
            raise ValueError("model_handle is only supported by backend='tf'")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, not {precision!r}")
        import openvino as ov

        self._ov = ov
        self.precision = precision
        self.path = onnx_backend.ensure_onnx_model(cache_dir)
        self._meta = mobilenet_v2.weights_meta()
        if precision == "int8":  # calibrated on catalogue pictures: they identify it
            from helpers.models import quantize

            pictures = quantize.calibration_pictures(calibration, calibration_pictures)
            self.path = quantize.ensure_int8_model(self.path, pictures)
            self._meta["calibration"] = (f"{Path(calibration).name if calibration else 'sample'}"
                                         f":{len(pictures)}:{quantize.pictures_sha256(pictures)}")
        self.threads = int(intra_op_threads or os.cpu_count() or 1)
        self.name = mobilenet_v2.MODEL_NAME
        self.dim = mobilenet_v2.FEATURE_DIM
        self.batch_size = batch_size
        self.static_batch = static_batch
        self._core = ov.Core()
        self._source = self._core.read_model(str(self.path))
        self._compiled: dict[tuple[str, int, int], Any] = {}
        self._lock = threading.Lock()
        supported = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and "BF16" not in supported:
            # OpenVINO would silently fall back to f32: say so, the meta would lie otherwise.
            log.warning("this CPU has no bf16 support (%s): running fp32", supported)
            self.precision = "fp32"

    def _model(self, dtype: np.dtype, batch: int, height: int, width: int) -> Any:
        """The compiled model for this input dtype, batch (-1: dynamic) and picture size."""
        key = (np.dtype(dtype).name, batch, height, width)
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is None:
                compiled = self._compiled[key] = self._compile(*key)
            return compiled

    def _compile(self, dtype: str, batch: int, height: int, width: int) -> Any:
        ov = self._ov
        from openvino.preprocess import PrePostProcessor

        model = self._source.clone()
        model.reshape({"images": ov.PartialShape([batch, height, width, 3])})
        if dtype == "uint8":
            ppp = PrePostProcessor(model)
            ppp.input("images").tensor().set_element_type(ov.Type.u8)
            ppp.input("images").preprocess().convert_element_type(ov.Type.f32).scale(255.0)
            model = ppp.build()
        config = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": str(self.threads),
        }
        log.info("compiling MobileNetV2 for OpenVINO: %s, batch %s, %dx%d, %s", dtype,
                 batch if batch > 0 else "dynamic", height, width, config)
        compiled = self._core.compile_model(model, "CPU", config)
        return compiled, compiled.create_infer_request()

    def _run(self, batch: np.ndarray, output: str) -> np.ndarray:
        """Full static batches through the static model, the rest through the dynamic one."""
        size = self.static_batch
        if size <= 0 or len(batch) < size:
            return self._infer(batch, output, -1)
        full = len(batch) - len(batch) % size
        parts = [self._infer(batch[i : i + size], output, size) for i in range(0, full, size)]
        if full < len(batch):
            parts.append(self._infer(batch[full:], output, -1))
        return np.concatenate(parts)

    def _infer(self, batch: np.ndarray, output: str, static: int) -> np.ndarray:
        compiled, request = self._model(batch.dtype, static, batch.shape[1], batch.shape[2])
        with self._lock:  # one infer request per compiled model: one call at a time
            result = request.infer({"images": batch}, share_inputs=True)
            return np.array(result[compiled.output(output)], dtype=np.float32)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, "features")

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, "logits")
