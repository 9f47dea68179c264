"""Arrays in blocks: reading a [n, d] matrix (ndarray, memmap, sharded store) block by
block, and growing an id array by doubling blocks.

`row_blocks` yields raw (start, block) pairs, through the matrix's own `chunks` where it has
one (a ShardedMatrix: memmap views that never straddle shards, no copy); `UnitChunks` is
what the engines build from: the same blocks L2-normalised and checked. Building never
holds a second full copy of a large store (scattered rows, a re-rank's candidates, are read
by `helpers.core.mmap.RowReader`). `GrowableArray` keeps the ids (and the vectors,
where an index keeps them) of an index that items are added to in chunks: amortised O(1)
appends, not a copy of every row per add.
Imports numpy and the index layer's protocol and errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from helpers.index.errors import DimensionError, InvalidVectorError
from helpers.index.protocol import as_unit_vectors

CHUNK_ROWS = 65_536  # rows normalised at a time when building (64k x 1280 x 4 B = 320 MB)


def row_blocks(vectors: Any, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, Any]]:
    """(first row, block of at most `rows` rows) over `vectors`, in order, as stored."""
    if hasattr(vectors, "chunks"):  # a ShardedMatrix: memmap views, one shard at a time
        yield from vectors.chunks(rows)
        return
    for start in range(0, len(vectors), rows):
        yield start, vectors[start:start + rows]


class UnitChunks:
    """A [n, d] array (ndarray or memmap) read as unit-norm float32 blocks of `rows` rows.

    What engines build from: iterate for (start, block) pairs, `sample(m)` for training
    rows, `all()` when the engine keeps every vector anyway. Each block is validated as it
    is read (NaN, zero rows: InvalidVectorError naming the rows).
    """

    def __init__(self, vectors: Any, rows: int = CHUNK_ROWS) -> None:
        v = vectors if hasattr(vectors, "shape") else np.asarray(vectors)
        if len(v.shape) != 2:
            raise DimensionError(f"vectors must be 2-D [n, d], got shape {v.shape}")
        self.v, self.rows = v, max(1, int(rows))
        self.n, self.dim = int(v.shape[0]), int(v.shape[1])

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for start, raw in row_blocks(self.v, self.rows):
            yield start, _unit_block(start, raw)

    def sample(self, m: int | None, seed: int = 1234) -> np.ndarray:
        """m rows chosen at random (sorted, so a memmap is read forward); all if m >= n."""
        if m is None or m >= self.n:
            return self.all()
        rows = np.sort(np.random.default_rng(seed).choice(self.n, m, replace=False))
        return as_unit_vectors(np.asarray(self.v[rows]))

    def all(self) -> np.ndarray:
        """Every row, normalised, in one preallocated array (no second full copy)."""
        out = np.empty((self.n, self.dim), np.float32)
        for start, block in self:
            out[start:start + len(block)] = block
        return out


def _unit_block(start: int, raw: Any) -> np.ndarray:
    try:
        return as_unit_vectors(np.asarray(raw))
    except InvalidVectorError as e:
        raise InvalidVectorError(f"{e}, in the block from row {start}") from None


class GrowableArray:
    """An array with amortised O(1) appends of rows (capacity doubles): int64 ids on add(),
    or [n, d] vectors with dtype=np.float32."""

    def __init__(self, values: np.ndarray, dtype: Any = np.int64) -> None:
        self._buf = np.array(values, dtype)
        self._n = len(self._buf)

    @property
    def values(self) -> np.ndarray:
        return self._buf[: self._n]

    def extend(self, more: np.ndarray) -> None:
        need = self._n + len(more)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf), 16), *self._buf.shape[1:]),
                             self._buf.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n:need] = more
        self._n = need
