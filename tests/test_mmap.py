"""RowReader: scattered rows of a memory-mapped store read with pread, not through the map."""

from __future__ import annotations

import os
import re

import numpy as np

from helpers.core.mmap import RowReader
from helpers.vectors.sharded import ShardedMatrix


def _mapped_kb(path: str) -> int:
    """Resident kB of this process's mappings of ``path``."""
    total, cur = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                cur = parts[5] if len(parts) > 5 else None
            elif line.startswith("Rss:") and cur == path:
                total += int(line.split()[1])
    return total


def test_rows_read_without_mapping_them(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.random((3000, 256), np.float32), rng.random((2000, 256), np.float32)
    paths = []
    for name, x in (("a.f32", a), ("b.f32", b)):
        x.tofile(tmp_path / name)
        paths.append(str((tmp_path / name).resolve()))
    maps = [np.memmap(p, np.float32, "r", shape=x.shape) for p, x in zip(paths, (a, b),
                                                                         strict=True)]
    whole = np.concatenate([a, b])
    rows = np.sort(rng.choice(5000, 400, replace=False))[::-1]  # any order
    for matrix in (maps[0], ShardedMatrix(maps, 256)):
        reader = RowReader(matrix)
        assert reader.direct
        n = len(matrix)
        got = reader[rows[rows < n]]
        assert np.array_equal(got, whole[rows[rows < n]])
    # Read through the reader, the files' pages were never mapped into this process.
    assert sum(_mapped_kb(p) for p in paths) == 0
    assert np.array_equal(ShardedMatrix(maps, 256)[rows], whole[rows])  # the map: mapped
    assert sum(_mapped_kb(p) for p in paths) > 0


def test_an_array_in_ram_is_indexed_as_usual():
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    reader = RowReader(x)
    assert not reader.direct and np.array_equal(reader[[3, 1]], x[[3, 1]])
    assert os.getpid() == reader._pid
