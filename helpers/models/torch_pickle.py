"""A torch checkpoint reader without torch: ``.pth``/``.pt`` state dicts to numpy arrays.

Reads the zip format (torch >= 1.6) and the legacy (pre-1.6, non-zip) pickle-stream
format with a restricted unpickler: it only builds the handful of classes a checkpoint
legitimately contains, so a tampered file cannot run arbitrary code. The sha256 of
the file is checked before, by :mod:`helpers.models.weights`.

Imports: numpy and the standard library only.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["load_torch_checkpoint"]

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
