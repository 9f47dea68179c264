"""The feature-extractor interface every runtime implements, and what input it wants.

An extractor is a network (``helpers.models.NETS``, :mod:`helpers.models.nets.base`) run
by a runtime (``helpers.models.RUNTIMES``): ``extractor(batch)`` takes RGB [N, H, W, 3]
either as float in [0, 1] (what every runtime has always taken) or as uint8 0..255, and
returns float32 [N, dim]. A runtime says which of the two it prefers in
``extractor.input_spec``: a caller that holds uint8 pictures (the embedding pipeline)
hands them over as they are to a ``"uint8"`` runtime, which scales inside its graph, and
skips a float conversion that costs more memory traffic than the conversion's arithmetic.

Imports: numpy only.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["INPUT_DTYPES", "FeatureExtractor", "InputSpec", "as_model_input", "check_batch"]

INPUT_DTYPES = ("float32", "uint8")


@dataclass(frozen=True)
class InputSpec:
    """The pictures a runtime wants, to skip conversions it would only undo.

    dtype: ``"float32"`` (RGB in [0, 1]) or ``"uint8"`` (RGB 0..255, scaled inside
        the model). Either is accepted by ``__call__``; this is the one that costs nothing.
    size: square side the runtime is built or tuned for, or None when any size works
        at the same cost (the caller's ``image_size`` decides).
    """

    dtype: str = "float32"
    size: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in INPUT_DTYPES:
            raise ValueError(f"input dtype must be one of {INPUT_DTYPES}, not {self.dtype!r}")


def _check_shape(arr: np.ndarray) -> None:
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected a batch of RGB images [N, H, W, 3], got shape {arr.shape}")


def check_batch(batch: Any) -> np.ndarray:
    """Validate a float image batch and return it as C-contiguous float32 [N, H, W, 3].

    Catches the usual mistakes early: uint8 or 0..255 floats (the models expect
    [0, 1]) and single images without a batch axis.
    """
    arr = np.asarray(batch)
    _check_shape(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"expected float images in [0, 1], got dtype {arr.dtype}; divide uint8 by 255"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    # Loose bounds: resampling may overshoot [0, 1] a little, 0..255 input may not.
    if arr.size and (arr.max() > 2.0 or arr.min() < -1.0):
        raise ValueError("expected pixel values in [0, 1]; got values outside it (0..255?)")
    return arr


def as_model_input(batch: Any, spec: InputSpec) -> np.ndarray:
    """A batch as a runtime with ``spec`` takes it: uint8 kept for a uint8 runtime.

    uint8 pictures are unambiguous (0..255); for a float runtime they become
    float32 / 255. Float pictures are checked to lie in [0, 1] and stay float32:
    a uint8 runtime takes them too (through its float input), never rounded.
    """
    arr = np.asarray(batch)
    if arr.dtype == np.uint8:
        _check_shape(arr)
        if spec.dtype == "uint8":
            return np.ascontiguousarray(arr)
        return np.multiply(arr, np.float32(1 / 255), dtype=np.float32)
    return check_batch(arr)


class FeatureExtractor(abc.ABC):
    """Images in, one embedding per image out.

    ``extractor(batch)`` takes RGB [N, H, W, 3], float in [0, 1] or uint8, and returns
    float32 [N, dim]. Large batches are processed ``batch_size`` images at a time.
    Subclasses set ``name``, ``dim``, ``model`` (the network's name), ``runtime``,
    ``precision``, ``input_spec`` and ``_meta`` (model identity: name, weights file and
    hash), and implement ``_forward``.
    """

    name: str
    dim: int
    model: str  # the network: a name in helpers.models.NETS
    runtime: str  # what runs it: a name in helpers.models.RUNTIMES
    precision: str = "fp32"  # arithmetic the forward pass really runs: fp32, bf16, int8
    input_spec: InputSpec = InputSpec()
    batch_size: int = 32
    _meta: dict[str, Any]

    @abc.abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of one chunk, as :func:`as_model_input` made it."""

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"runtime {self.runtime!r} has no ImageNet head")

    def meta(self) -> dict[str, Any]:
        """What produced the vectors: model, weights (+ sha256 prefix), runtime, precision.

        Stored beside vectors (the vector store's ``made_by``); vectors whose meta
        differ are never mixed. ``helpers.models.extractor_args`` maps it back to the
        ``load_extractor`` arguments that make the same vectors.
        """
        return {**self._meta, "runtime": self.runtime, "precision": self.precision}

    def _chunked(self, fn: Any, batch: Any, width: int) -> np.ndarray:
        arr = as_model_input(batch, self.input_spec)
        if len(arr) == 0:
            return np.zeros((0, width), np.float32)
        chunks = [fn(arr[i : i + self.batch_size]) for i in range(0, len(arr), self.batch_size)]
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

    def __call__(self, batch: Any) -> np.ndarray:
        return self._chunked(self._forward, batch, self.dim)

    def logits(self, batch: Any) -> np.ndarray:
        """ImageNet logits [N, 1000], where the runtime's graph has the head."""
        return self._chunked(self._logits, batch, 1000)

    def __repr__(self) -> str:
        kind = type(self).__name__
        return (f"{kind}(model={self.name!r}, dim={self.dim}, runtime={self.runtime!r}, "
                f"precision={self.precision!r})")
