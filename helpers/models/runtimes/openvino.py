"""Runtime ``"openvino"``: a network's ONNX graph run by OpenVINO, in bf16 where the CPU can.

OpenVINO reads the network's cached ``.onnx`` file (``Net.ensure_onnx``) directly, so
every network with an ONNX graph runs here (MobileNetV2, EfficientNet-Lite2).
Two things make it faster than onnxruntime fp32 on a recent CPU:

* ``INFERENCE_PRECISION_HINT=bf16``: convolutions run on the AVX-512 BF16 (or AMX)
  units, accumulating in float32; ``precision="fp32"`` turns it off. A CPU without
  them (``BF16`` missing from the CPU device's ``OPTIMIZATION_CAPABILITIES``, e.g. an
  AVX2-only one) runs fp32 whatever is asked: the extractor then says ``precision
  == "fp32"`` (and so does its meta), and logs the fallback (:func:`runtime_precision`).
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
convolutions on VNNI, the rest in bf16 where the CPU has it, else fp32): faster still,
but see that module for its quality; ``precision="fp32"`` is the plain graph.

Imports: numpy, :mod:`helpers.models`; ``openvino`` when an extractor is made.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from helpers.models.base import FeatureExtractor, InputSpec
from helpers.models.nets.base import Net

__all__ = ["PRECISIONS", "OpenVinoFeatureExtractor", "cpu_capabilities", "runtime_precision"]

log = logging.getLogger(__name__)

# our name -> OpenVINO's INFERENCE_PRECISION_HINT (int8: a QDQ graph, the rest in bf16)
PRECISIONS = {"bf16": "bf16", "fp32": "f32", "int8": "bf16"}


def cpu_capabilities(core: Any = None) -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU device (``"BF16"``, ``"INT8"``...)."""
    if core is None:
        import openvino as ov

        core = ov.Core()
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def runtime_precision(requested: str, capabilities: list[str]) -> tuple[str, str]:
    """(the precision that really runs, OpenVINO's inference precision hint for it).

    bf16 needs ``"BF16"`` among the CPU's capabilities (AVX-512 BF16 or AMX); without
    it OpenVINO would silently compute in f32, so fp32 is what runs, and what is said.
    int8 stays int8 (its graph is int8 either way); what it keeps in float runs bf16
    where the CPU can, f32 elsewhere.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, not {requested!r}")
    hint = PRECISIONS[requested]
    if hint == "bf16" and "BF16" not in capabilities:
        return ("fp32" if requested == "bf16" else requested), "f32"
    return requested, hint


class OpenVinoFeatureExtractor(FeatureExtractor):
    """A network's features through OpenVINO's CPU plugin, bf16 by default, uint8 input.

    ``precision`` is what the CPU really runs (see :func:`runtime_precision`), not
    necessarily what was asked.
    """

    runtime = "openvino"
    input_spec = InputSpec("uint8")

    def __init__(
        self,
        net: Net,
        *,
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 64,
        precision: str = "bf16",
        calibration: str | Path | None = None,
        calibration_pictures: int = 300,
        static_batch: int = 64,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, not {precision!r}")
        import openvino as ov

        self._ov = ov
        self._core = ov.Core()
        self.capabilities = cpu_capabilities(self._core)
        self.precision, self._hint = runtime_precision(precision, self.capabilities)
        if PRECISIONS[precision] != self._hint:
            # OpenVINO would fall back silently: the meta would lie if we did not say so.
            log.warning("this CPU has no bf16 support (capabilities %s): %s runs as %s with "
                        "f32 arithmetic", self.capabilities, precision, self.precision)
        self.path = net.ensure_onnx(cache_dir)
        self._meta = net.weights_meta()
        if precision == "int8":  # calibrated on catalogue pictures: they identify it
            from helpers.models import quantize

            self.path, self._meta["calibration"] = quantize.int8_graph(
                self.path, net.float_convs(), calibration, calibration_pictures)
        self.threads = int(intra_op_threads or os.cpu_count() or 1)
        self.name = self.model = net.name
        self.dim = net.dim
        self.batch_size = batch_size
        self.static_batch = static_batch
        self._source = self._core.read_model(str(self.path))
        self._compiled: dict[tuple[str, int, int], Any] = {}
        self._lock = threading.Lock()

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
            "INFERENCE_PRECISION_HINT": self._hint,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": str(self.threads),
        }
        log.info("compiling %s for OpenVINO: %s, batch %s, %dx%d, %s", self.model, dtype,
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
