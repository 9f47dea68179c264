"""The vector store: a float32 matrix and its ids on disk, memory-mapped to read.

A store is a folder::

    vectors.f32    n x dim float32, C order (np.memmap: no load, shared by processes)
    ids.i64        n x 2 int64: product_id, image_index (-1 for a product's mean vector)
    meta.json      dim, count, resume point, stats, and ``made_by`` (the settings)
    rejects.csv    the pictures the embedding skipped: product_id, image_index, reason
    manifest.json  written when complete: settings (model, backend, precision, weights,
                   image size, level), the catalogue it was made from (its fingerprint
                   and settings), and the store's content id (see helpers.core.artifacts)

Appends go to the two binary files first, fsynced, and ``meta.json`` last (atomically),
so a killed run -- or a power loss -- leaves a store whose ``count`` rows are all on
disk: reopening it truncates any half-written tail and carries on from ``next_row``.

Imports numpy and helpers.core (artifacts, ids).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from helpers.core import artifacts, ids
from helpers.core.ids import IdMap

VECTORS = "vectors.f32"
IDS = "ids.i64"
META = "meta.json"
REJECTS = "rejects.csv"  # pictures the embedding could not decode (helpers.vectors.embed)
FORMAT_VERSION = 1
# Settings that name the catalogue a store was made from, not the store's own settings.
CATALOGUE_KEYS = ("source", "catalogue_rows", "catalogue_sha256")


class VectorStoreError(ValueError):
    """A store that is missing, incomplete, or made by something other than asked."""


def encode_item_ids(product_ids: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """One int64 id per row: the product id, or the packed image id (see helpers.core.ids)."""
    return ids.encode(product_ids, image_index)


def read_meta(folder: str | os.PathLike) -> dict | None:
    """A store's meta.json (finished or not), or None if there is none."""
    return artifacts.read_json(Path(folder) / META, missing_ok=True)


def _write_meta(folder: Path, meta: dict) -> None:
    artifacts.write_json(folder / META, meta)


def store_manifest(made_by: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest of a store made with ``made_by``: its settings, and its catalogue."""
    settings = {k: v for k, v in made_by.items() if k not in CATALOGUE_KEYS}
    catalogue = {k: made_by[k] for k in CATALOGUE_KEYS if k in made_by}
    return artifacts.make_manifest(
        "vectors", settings, inputs={"catalogue": str(made_by.get("catalogue_sha256"))},
        chain={"catalogue": catalogue})


class VectorWriter:
    """Append vectors + ids to a store; resumable.

    ``VectorWriter(folder, dim, meta)`` starts a new store, or reopens an
    unfinished one with the same ``meta`` (anything else is refused).
    """

    def __init__(self, folder: str | os.PathLike, dim: int, meta: dict[str, Any],
                 resume: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        old = read_meta(self.folder) if resume else None
        if old is not None:
            if old.get("complete"):
                raise VectorStoreError(f"{self.folder} is already complete; "
                                       "delete it or pass resume=False to rebuild")
            if old["dim"] != dim or old["made_by"] != meta:
                raise VectorStoreError(
                    f"{self.folder} holds an unfinished store made by {old['made_by']} "
                    f"(dim {old['dim']}), not {meta} (dim {dim}); delete it to rebuild")
            self.meta = old
        else:
            self.meta = {"format_version": FORMAT_VERSION, "dim": dim, "count": 0,
                         "next_row": 0, "complete": False, "made_by": meta}
            for name in (VECTORS, IDS):
                (self.folder / name).write_bytes(b"")
            _write_meta(self.folder, self.meta)
        n = self.meta["count"]
        # Drop a half-written tail from a kill between data and meta writes.
        for name, width in ((VECTORS, 4 * dim), (IDS, 16)):
            size = (self.folder / name).stat().st_size
            if size < n * width:  # truncate() would pad with zeros: silent zero vectors
                raise VectorStoreError(f"{self.folder / name} has {size} bytes, fewer than the "
                                       f"{n} rows meta.json counts; delete the store to rebuild")
            with open(self.folder / name, "r+b") as f:
                f.truncate(n * width)

    @property
    def count(self) -> int:
        return self.meta["count"]

    @property
    def next_row(self) -> int:
        """The catalogue row to continue from."""
        return self.meta["next_row"]

    def append(self, vectors: np.ndarray, product_ids: np.ndarray, image_index: np.ndarray,
               next_row: int, **stats: Any) -> None:
        vectors = np.ascontiguousarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.meta["dim"]:
            raise VectorStoreError(f"vectors shape {vectors.shape}, store dim {self.meta['dim']}")
        ids = np.stack([np.asarray(product_ids, np.int64), np.asarray(image_index, np.int64)], 1)
        if len(ids) != len(vectors):
            raise VectorStoreError(f"{len(vectors)} vectors but {len(ids)} ids")
        # fsynced before meta.json counts them: after a power loss, meta.json must not
        # count rows the disk never got (reopening would refuse the store).
        for name, data in ((VECTORS, vectors), (IDS, ids)):
            with open(self.folder / name, "ab") as f:
                f.write(data.tobytes())
                f.flush()
                os.fsync(f.fileno())
        self.meta["count"] += len(vectors)
        self.meta["next_row"] = next_row
        for key, value in stats.items():
            self.meta[key] = self.meta.get(key, 0) + value
        _write_meta(self.folder, self.meta)

    def close(self, **extra: Any) -> VectorStore:
        """Mark the store complete (manifest first, then meta) and open it for reading."""
        artifacts.write_manifest(self.folder, store_manifest(self.meta["made_by"]))
        self.meta.update(extra, complete=True)
        _write_meta(self.folder, self.meta)
        return VectorStore(self.folder)


class StoreReads:
    """The read API shared by a single store and a sharded one (``helpers.vectors.sharded``):
    set ``meta``, ``manifest``, ``folder``, ``product_ids`` and ``image_index``, then call
    ``_index_ids()``."""

    meta: dict[str, Any]
    manifest: dict[str, Any]
    folder: Path
    product_ids: np.ndarray
    image_index: np.ndarray

    def _index_ids(self) -> None:
        self.item_ids = encode_item_ids(self.product_ids, self.image_index)
        # Sorted ids + searchsorted: 16 bytes an item, not a dict of Python ints.
        self._id_map = IdMap(self.item_ids)

    def __len__(self) -> int:
        return self.meta["count"]

    @property
    def dim(self) -> int:
        return self.meta["dim"]

    @property
    def made_by(self) -> dict[str, Any]:
        return self.meta["made_by"]

    @property
    def level(self) -> str:
        return self.made_by.get("level", "product")

    @property
    def id(self) -> str:
        """The store's content id (settings + catalogue), as in its manifest."""
        return self.manifest["id"]

    def rows(self, item_ids: Any) -> np.ndarray:
        """Rows of item ids; KeyError names the ones not in the store."""
        want = np.atleast_1d(np.asarray(item_ids, np.int64))
        rows = self._id_map.rows(want, missing=-1)
        if (rows < 0).any():
            raise KeyError(f"id(s) {want[rows < 0][:5].tolist()} not in the vector store "
                           f"{self.folder} ({self.level} level)")
        return rows

    def vector(self, item_id: int) -> np.ndarray:
        """The stored vector of one item (a product id for product-level stores)."""
        return np.asarray(self.vectors[int(self.rows([item_id])[0])])


class VectorStore(StoreReads):
    """A finished store, memory-mapped: ``store.vectors`` is an ``np.memmap``.

    expect: settings the store must have been made with, e.g. ``{"image_size": 224,
        "level": "image", "runtime": "onnx"}``, or ``{"catalogue_sha256": ...}``; any
        difference is refused (VectorStoreError) with the differences named.
    The manifest is checked against ``meta.json`` on open: a store whose files were
    swapped or edited by hand is refused.
    """

    def __init__(self, folder: str | os.PathLike,
                 expect: Mapping[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        meta = read_meta(self.folder)
        if meta is None:
            raise VectorStoreError(f"no vector store in {self.folder}")
        self.meta = meta
        if not self.meta.get("complete"):
            raise VectorStoreError(f"{self.folder} is unfinished ({self.meta['count']} vectors);"
                                   " run the embedding again to resume it")
        manifest = artifacts.read_manifest(self.folder, missing_ok=True)
        want = store_manifest(self.made_by)
        if manifest is None or manifest.get("id") != want["id"]:
            raise VectorStoreError(
                f"{self.folder}: manifest.json is missing or does not match meta.json "
                "(a store from an older version, or edited files): embed again")
        self.manifest = manifest
        if expect:
            diff = artifacts.settings_diff(self.made_by, dict(expect))
            if diff:
                raise VectorStoreError(f"{self.folder} was made by other settings: "
                                       + artifacts.describe_diff(diff, "is", "expected"))
        n, dim = self.meta["count"], self.meta["dim"]
        self.vectors = (np.memmap(self.folder / VECTORS, np.float32, "r", shape=(n, dim))
                        if n else np.zeros((0, dim), np.float32))
        pairs = (np.fromfile(self.folder / IDS, np.int64).reshape(n, 2) if n
                 else np.zeros((0, 2), np.int64))
        self.product_ids, self.image_index = pairs[:, 0], pairs[:, 1]
        self._index_ids()

    def chunks(self, rows: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
        """(start row, float32 block) over the store: bounded memory on any size."""
        for start in range(0, len(self), rows):
            yield start, np.asarray(self.vectors[start:start + rows])

    def __repr__(self) -> str:
        m = self.made_by
        return (f"VectorStore({len(self)} x {self.dim}, {m.get('level')} level, "
                f"{m.get('model')} {m.get('runtime') or m.get('backend', '')} "
                f"@ {m.get('image_size')}px)")
