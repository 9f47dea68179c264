"""The vector store: a float32 matrix and its ids on disk, memory-mapped to read.

A store is a folder::

    vectors.f32   n x dim float32, C order (np.memmap: no load, shared by processes)
    ids.i64       n x 2 int64: product_id, image_index (-1 for a product's mean vector)
    meta.json     dim, count, level, model meta, image size, source catalogue, resume point

Appends go to the two binary files first and ``meta.json`` last (atomically),
so a killed run leaves a store whose ``count`` rows are all complete: reopening
it truncates any half-written tail and carries on from ``next_row``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

VECTORS = "vectors.f32"
IDS = "ids.i64"
META = "meta.json"
FORMAT_VERSION = 1
LEVELS = ("product", "image")
# Index ids for image-level stores: product_id * 100 + image_index (Cdiscount ids < 1e8).
IMAGE_ID_BASE = 100


class VectorStoreError(ValueError):
    """A store that is missing, incomplete, or made by something other than asked."""


def encode_item_ids(product_ids: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """One int64 id per row: the product id, or product_id*100 + image for image rows."""
    product_ids = np.asarray(product_ids, np.int64)
    image_index = np.asarray(image_index, np.int64)
    return np.where(image_index < 0, product_ids, product_ids * IMAGE_ID_BASE + image_index)


def read_meta(folder: str | os.PathLike) -> dict | None:
    """A store's meta.json (finished or not), or None if there is none."""
    path = Path(folder) / META
    return json.loads(path.read_text()) if path.exists() else None


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, folder / META)


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
        with open(self.folder / VECTORS, "ab") as f:
            f.write(vectors.tobytes())
        with open(self.folder / IDS, "ab") as f:
            f.write(ids.tobytes())
        self.meta["count"] += len(vectors)
        self.meta["next_row"] = next_row
        for key, value in stats.items():
            self.meta[key] = self.meta.get(key, 0) + value
        _write_meta(self.folder, self.meta)

    def close(self, **extra: Any) -> VectorStore:
        """Mark the store complete and open it for reading."""
        self.meta.update(extra, complete=True)
        _write_meta(self.folder, self.meta)
        return VectorStore(self.folder)


class VectorStore:
    """A finished store, memory-mapped: ``store.vectors`` is an ``np.memmap``."""

    def __init__(self, folder: str | os.PathLike,
                 expect: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        path = self.folder / META
        if not path.exists():
            raise VectorStoreError(f"no vector store in {self.folder}")
        self.meta = json.loads(path.read_text())
        if not self.meta.get("complete"):
            raise VectorStoreError(f"{self.folder} is unfinished ({self.meta['count']} vectors);"
                                   " run the embedding again to resume it")
        if expect:
            made = self.meta["made_by"]
            diff = {k: (made.get(k), v) for k, v in expect.items() if made.get(k) != v}
            if diff:
                raise VectorStoreError(f"{self.folder} was made by other settings: " + "; ".join(
                    f"{k} is {a!r}, expected {b!r}" for k, (a, b) in diff.items()))
        n, dim = self.meta["count"], self.meta["dim"]
        self.vectors = (np.memmap(self.folder / VECTORS, np.float32, "r", shape=(n, dim))
                        if n else np.zeros((0, dim), np.float32))
        ids = (np.fromfile(self.folder / IDS, np.int64).reshape(n, 2) if n
               else np.zeros((0, 2), np.int64))
        self.product_ids, self.image_index = ids[:, 0], ids[:, 1]
        self.item_ids = encode_item_ids(self.product_ids, self.image_index)
        self._row = {int(i): r for r, i in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return self.meta["count"]

    @property
    def dim(self) -> int:
        return self.meta["dim"]

    @property
    def made_by(self) -> dict[str, Any]:
        return self.meta["made_by"]

    def vector(self, item_id: int) -> np.ndarray:
        """The stored vector of one item (a product id for product-level stores)."""
        try:
            return np.asarray(self.vectors[self._row[int(item_id)]])
        except KeyError:
            raise KeyError(f"id {item_id} is not in the vector store {self.folder}") from None

    def __repr__(self) -> str:
        m = self.made_by
        return (f"VectorStore({len(self)} x {self.dim}, {m.get('level')} level, "
                f"{m.get('model')} {m.get('backend', '')} @ {m.get('image_size')}px)")
