"""A vector store made of shards, read as one matrix, memory-mapped, never copied.

    store = ShardedVectorStore("work/vectors/mobilenet_v2-onnx-180px-product")
    len(store), store.dim, store.item_ids, store.vector(1234567)
    for start, block in store.vectors.chunks(100_000):   # zero-copy memmap views
        index.add(block)

A sharded store is a folder::

    shards.json                  dim, count, made_by, the shards in row order
    manifest.json                the same manifest (settings, catalogue, content id) as a
                                 single store's: indexes built from it check it the same way
    rejects.csv                  the shards' rejects.csv in shard order: what a single store
                                 of the same catalogue lists (none: no picture failed)
    shards/part-00000/ ...       one ``helpers.vectors.store`` store per shard (vectors.f32,
                                 ids.i64, meta.json, rejects.csv), written by one Dask task

It reads the same way as ``helpers.vectors.store.VectorStore`` (``__len__``, ``dim``,
``vectors``, ``product_ids``, ``image_index``, ``item_ids``, ``vector(id)``, ``made_by``,
``meta``), so code written for one store takes the other. ``vectors`` is a
``ShardedMatrix``: indexing a row or a slice inside one shard returns a memmap view;
only a slice spanning shards, a fancy index or ``np.asarray`` copies (the rows asked for).
Ids: 16 bytes a row in RAM (200 MB at 12.4 M rows); lookups by binary search, no dict.

Imports numpy, helpers.core.artifacts and helpers.vectors.store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from helpers.core import artifacts
from helpers.vectors.store import (
    IDS,
    META,
    REJECTS,
    VECTORS,
    StoreReads,
    VectorStore,
    VectorStoreError,
    store_manifest,
)

MANIFEST = "shards.json"
SHARDS = "shards"
FORMAT_VERSION = 1


def write_manifest(folder: str | os.PathLike, *, dim: int, made_by: dict[str, Any],
                   shards: list[dict[str, Any]], **extra: Any) -> None:
    """Write ``rejects.csv`` (the shards' joined), ``manifest.json``, then ``shards.json``
    (atomically, last): the store is complete once ``shards.json`` exists."""
    folder = Path(folder)
    _join_rejects(folder / REJECTS, [folder / s["path"] / REJECTS for s in shards])
    meta = {"format_version": FORMAT_VERSION, "dim": dim,
            "count": sum(s["count"] for s in shards), "complete": True,
            "made_by": made_by, "shards": shards, **extra}
    artifacts.write_manifest(folder, store_manifest(made_by))
    artifacts.write_json(folder / MANIFEST, meta)


def _join_rejects(target: Path, parts: list[Path]) -> None:
    """One CSV of the ``parts`` that exist, in order, under the first one's header."""
    texts = [p.read_text() for p in parts if p.exists()]
    if not texts:
        target.unlink(missing_ok=True)  # a store of an earlier run may have left one
        return
    header = texts[0].split("\n", 1)[0]
    rows = "".join(t.split("\n", 1)[1] for t in texts)
    artifacts.atomic_write(target, lambda tmp: tmp.write_text(f"{header}\n{rows}"))


class ShardedMatrix:
    """Row blocks of several ``(n_i, dim)`` float32 memmaps, read as one ``(n, dim)``."""

    def __init__(self, blocks: list[np.ndarray], dim: int) -> None:
        self.blocks = [b for b in blocks if len(b)]
        self.starts = np.cumsum([0] + [len(b) for b in self.blocks])
        self.shape = (int(self.starts[-1]), dim)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * 4

    def _locate(self, row: int) -> tuple[int, int]:
        if row < 0:
            row += self.shape[0]
        if not 0 <= row < self.shape[0]:
            raise IndexError(f"row {row} out of range for {self.shape[0]} rows")
        b = int(np.searchsorted(self.starts, row, side="right")) - 1
        return b, row - int(self.starts[b])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            rows, *rest = key
            return self[rows][(slice(None), *rest)]
        if isinstance(key, int | np.integer):
            b, r = self._locate(int(key))
            return self.blocks[b][r]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                if stop <= start:
                    return np.zeros((0, self.shape[1]), np.float32)
                b0, r0 = self._locate(start)
                b1, _ = self._locate(stop - 1)
                if b0 == b1:  # inside one shard: a view, no copy
                    return self.blocks[b0][r0 : r0 + stop - start]
                return np.concatenate([self.blocks[b][max(start - s, 0) : stop - s]
                                       for b, s in enumerate(self.starts[:-1])
                                       if s < stop and s + len(self.blocks[b]) > start])
            key = np.arange(start, stop, step)
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = np.where(rows < 0, rows + self.shape[0], rows).astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows out of range for {self.shape[0]} rows")
        out = np.empty((*rows.shape, self.shape[1]), np.float32)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for b in np.unique(which):
            sel = which == b
            out[sel] = self.blocks[b][rows[sel] - self.starts[b]]
        return out

    def chunks(self, rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, block)`` of at most ``rows`` rows, in order, each a memmap view
        inside one shard: what chunked index builds read, without copying the store."""
        for b, block in enumerate(self.blocks):
            for i in range(0, len(block), rows):
                yield int(self.starts[b]) + i, block[i : i + rows]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Copy everything into one array (63 GB on train.bson: use ``chunks``)."""
        out = (np.concatenate(self.blocks) if self.blocks
               else np.zeros((0, self.shape[1]), np.float32))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ShardedMatrix({self.shape[0]} x {self.shape[1]}, {len(self.blocks)} shards)"


class ShardedVectorStore(StoreReads):
    """A finished sharded store; same read API as ``helpers.vectors.store.VectorStore``."""

    def __init__(self, folder: str | os.PathLike,
                 expect: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.exists():
            raise VectorStoreError(f"no finished sharded vector store in {self.folder} "
                                   "(run the embedding again to finish it)")
        self.meta = artifacts.read_json(path)
        self.manifest = artifacts.read_manifest(self.folder, missing_ok=True)
        if self.manifest is None or self.manifest.get("id") != \
                store_manifest(self.made_by)["id"]:
            raise VectorStoreError(f"{self.folder}: manifest.json is missing or does not "
                                   f"match {MANIFEST}: embed again")
        if expect:
            diff = artifacts.settings_diff(self.made_by, dict(expect))
            if diff:
                raise VectorStoreError(f"{self.folder} was made by other settings: "
                                       + artifacts.describe_diff(diff, "is", "expected"))
        dim = self.meta["dim"]
        blocks, ids = [], []
        for shard in self.meta["shards"]:
            d, n = self.folder / shard["path"], shard["count"]
            sub = artifacts.read_json(d / META)  # the shard's own helpers.vectors.store meta
            if not sub.get("complete") or sub["count"] != n or sub["dim"] != dim:
                raise VectorStoreError(f"{d}: shard does not match {path} "
                                       f"({sub.get('count')} rows, manifest says {n})")
            if n:
                blocks.append(np.memmap(d / VECTORS, np.float32, "r", shape=(n, dim)))
                ids.append(np.fromfile(d / IDS, np.int64, count=2 * n).reshape(n, 2))
        self.vectors = ShardedMatrix(blocks, dim)
        allids = np.concatenate(ids) if ids else np.zeros((0, 2), np.int64)
        self.product_ids, self.image_index = allids[:, 0], allids[:, 1]
        self._index_ids()

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.meta["shards"]

    def chunks(self, rows: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
        """(start row, block): memmap views, never across shards, never copied."""
        return self.vectors.chunks(rows)

    def __repr__(self) -> str:
        m = self.made_by
        runtime = m.get("runtime") or m.get("backend", "")
        return (f"ShardedVectorStore({len(self)} x {self.dim} in {len(self.shards)} shards, "
                f"{m.get('level')} level, {m.get('model')} {runtime} "
                f"@ {m.get('image_size')}px)")


def open_vectors(folder: str | os.PathLike,
                 expect: dict[str, Any] | None = None) -> VectorStore | ShardedVectorStore:
    """The store in ``folder``, sharded (``shards.json``) or single (``meta.json``)."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return ShardedVectorStore(folder, expect)
    return VectorStore(folder, expect)
