"""PeakMemory (helpers.scale.memory): a build's peak, heap apart from memory-mapped files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from helpers.scale.memory import PeakMemory

MB = 1 << 20


def _until(seen, timeout: float = 10.0) -> None:
    """Hold on until the sampling thread has seen it: on a loaded machine a fixed sleep
    can end before the sampler is scheduled at all."""
    deadline = time.monotonic() + timeout
    while not seen() and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_tells_heap_from_mapped_files(tmp_path):
    path = tmp_path / "store.f32"
    np.ones(16 * MB // 4, np.float32).tofile(path)  # 16 MB; then 64 MB of heap
    with PeakMemory(interval=0.005) as heap:
        start = heap.anon
        a = np.ones(64 * MB // 4, np.float32)
        _until(lambda: heap.anon - start > 60 * MB)
        del a
    assert heap.anon - start > 60 * MB
    with PeakMemory(interval=0.005) as mapped:
        start_anon, start_file = mapped.anon, mapped.file
        m = np.memmap(path, np.float32, "r")
        assert m.sum() == m.size  # every page read through the mapping
        _until(lambda: mapped.file - start_file > 14 * MB)
        del m
    assert mapped.file - start_file > 14 * MB
    assert mapped.anon - start_anon < 8 * MB
    with PeakMemory(interval=0.005) as phases:
        base = phases.anon  # sampled on entry
        b = np.ones(48 * MB // 4, np.float32)  # over glibc's mmap threshold: freed at del
        _until(lambda: phases.anon - base > 40 * MB)
        del b
        first = phases.reset()
        time.sleep(0.05)
    assert first - phases.anon > 40 * MB  # reset: the next phase starts from now
