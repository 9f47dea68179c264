"""Scattered rows of a memory-mapped matrix, read without mapping them into the process.

A vector store is a memory-mapped file: right for reading in order (a build, a
block-by-block exact search). A server that reads a few hundred scattered rows a query
(the exact re-rank of ``faiss_compressed``) through the map gets every page it touches,
and the kernel's fault-around neighbours, mapped into its resident memory: measured at 1 M
vectors, ~80 MB a query for 400 rows (MADV_RANDOM did not stop it), so each gunicorn
worker would come to hold the whole file. ``RowReader`` reads the rows with ``pread``
into a buffer instead: the pages stay in the shared page cache, and a worker's resident
memory holds only the rows of the query in hand. Imports only the standard library and
numpy.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class RowReader:
    """Rows of ``matrix`` (an ``np.memmap`` of a file, or a ShardedMatrix of them, with
    ``blocks`` and ``starts``) read with ``os.pread``; other matrices are indexed as usual.
    Files are opened on first use in each process (pread has no shared file position, so
    a descriptor inherited through a fork would be safe too)."""

    def __init__(self, matrix: Any) -> None:
        self.matrix = matrix
        blocks = list(getattr(matrix, "blocks", [matrix]))
        self._files = [getattr(b, "filename", None) if isinstance(b, np.memmap) else None
                       for b in blocks]
        self._offsets = [int(getattr(b, "offset", 0)) for b in blocks]
        self._starts = np.asarray(getattr(matrix, "starts", [0, len(matrix)]), np.int64)
        self._dim = int(matrix.shape[1])
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self.direct = all(self._files)

    def __getitem__(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, np.int64).reshape(-1)
        if not self.direct:
            return np.asarray(self.matrix[rows], np.float32)
        if os.getpid() != self._pid:  # a forked worker: its own descriptors
            self._fds, self._pid = {}, os.getpid()
        out = np.empty((len(rows), self._dim), np.float32)
        size = self._dim * 4
        which = np.searchsorted(self._starts, rows, side="right") - 1
        where = [(self._fd(b), self._offsets[b] + (r - int(self._starts[b])) * size)
                 for b, r in zip(which.tolist(), rows.tolist(), strict=True)]
        # Ask for every row at once first: on a cold cache the disk then reads them in
        # parallel, not one blocking read after another (~0.5 s for 100 rows otherwise).
        for fd, pos in where:
            os.posix_fadvise(fd, pos, size, os.POSIX_FADV_WILLNEED)
        for i, (fd, pos) in enumerate(where):
            if os.preadv(fd, [memoryview(out[i]).cast("B")], pos) != size:
                raise OSError(f"short read at byte {pos} of a vector file")
        return out

    def _fd(self, block: int) -> int:
        fd = self._fds.get(block)
        if fd is None:
            fd = self._fds[block] = os.open(self._files[block], os.O_RDONLY)
        return fd

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                os.close(fd)
