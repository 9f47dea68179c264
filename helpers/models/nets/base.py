"""What a network provides to the runtimes: its weights, its ONNX graph, its input.

A :class:`Net` is the model half of an extractor (``load_extractor(model=...)``); a
runtime (:mod:`helpers.models.runtimes`) runs its graph. Adding a network is one module
under ``helpers/models/nets/`` with a :class:`Net` subclass (a :meth:`Net.state_dict`
and a :meth:`Net.graph`), and one line in ``helpers.models.NETS``.

Imports: numpy, :mod:`helpers.models.cache`, :mod:`helpers.models.onnx_graph`,
:mod:`helpers.models.weights`; never a runtime (no onnxruntime, OpenVINO, TensorFlow).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.models import cache, onnx_graph, weights
from helpers.models.base import InputSpec

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["Net"]


class Net(abc.ABC):
    """A pretrained network, as the runtimes need it.

    ``name`` is its registry name, recorded as ``model`` in every extractor's meta.
    """

    name: str  # "mobilenet_v2": the key in helpers.models.NETS, meta["model"]
    dim: int  # size of the feature vector
    onnx_file: str  # the cached graph's file name under the model cache
    export_format: int  # bump when the graph changes: cached files are rebuilt
    input_note: str  # the input contract, for the meta
    input_spec: InputSpec = InputSpec("float32")
    native_size: int | None = None  # the picture side it was trained at, if it matters

    @abc.abstractmethod
    def checkpoint_path(self) -> Path:
        """The weights file, its sha256 checked."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """The checkpoint as float32 numpy arrays (cached per process: read-only)."""

    @abc.abstractmethod
    def graph(self, state: dict[str, np.ndarray]) -> onnx_graph.GraphSpec:
        """The layers of the network, keyed into ``state``."""

    def weights_meta(self) -> dict[str, Any]:
        """Identity of the network and its weights: the start of every extractor's meta."""
        path = self.checkpoint_path()
        return {
            "model": self.name,
            "weights": path.name,
            "weights_sha256": weights.file_sha256(path)[:16],
            "dim": self.dim,
            "input": self.input_note,
        }

    def _props(self) -> dict[str, Any]:
        return {**self.weights_meta(), "format": self.export_format}

    def build_onnx(self, state: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
        """The graph (outputs ``features`` and ``logits``) as an ``onnx.ModelProto``."""
        state = self.state_dict() if state is None else state
        return onnx_graph.build(self.graph(state), state, self._props())

    def ensure_onnx(self, cache_dir: str | Path | None = None) -> Path:
        """Path of the cached ``.onnx`` file, (re)built atomically if missing or stale."""
        root = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
        return onnx_graph.ensure_cached(root / self.onnx_file, self._props(), self.build_onnx)

    def float_convs(self) -> tuple[str, str]:
        """Node names of the first and last convolution (kept float by int8)."""
        return self.graph(self.state_dict()).float_convs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"
