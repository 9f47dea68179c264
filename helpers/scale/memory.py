"""Memory of processes and of files they map: is an index file shared or copied? And how
much did a build need at its peak?

    with PeakMemory() as peak:                 # sampled from /proc/self/status
        index = build_index("annoy", ..., on_disk_build="scratch.ann")
    peak.anon, peak.file                       # bytes: must fit in RAM / page cache

Linux only (reads /proc/<pid>/smaps, smaps_rollup and status); elsewhere the functions say
so.

Imports pandas and helpers.core.artifacts (reads /proc).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

import pandas as pd

from helpers.core.artifacts import resolve_version

FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty")

# A child process: load the index, touch every page with a full scan of queries, then
# hold still until the parent has read its /proc entry.
_CHILD = """
import sys
import numpy as np
from helpers.index import load_index
index = load_index(sys.argv[1])
ids = index.ids[: int(sys.argv[2])]
if "search_k" in index.params:
    index.params["search_k"] = 1 << 30  # inspect every node: touch the whole file
index.search_by_id(ids, min(10, len(index) - 1))
print("ready", flush=True)
sys.stdin.read()
"""


def mapping_kb(pid: int, path: str | os.PathLike) -> dict[str, int]:
    """Sum of each smaps field (kB) over the mappings of ``path`` in process ``pid``."""
    target = str(Path(path).resolve())
    totals = dict.fromkeys(FIELDS, 0)
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and len(head) >= 5:  # a mapping header line
                inside = len(head) >= 6 and head[-1] == target
            elif inside and head[0].rstrip(":") in totals:
                totals[head[0].rstrip(":")] += int(head[1])
    return totals


def process_kb(pid: int) -> dict[str, int]:
    """A process's memory (kB) from /proc/<pid>/smaps_rollup: ``Rss`` (every resident page,
    shared ones whole), ``Pss`` (shared pages divided among their sharers), ``Uss`` (pages
    only it has: Private_Clean + Private_Dirty). Memory-mapped files that several workers
    read count in Rss whole, in Pss by share, not in Uss."""
    totals: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            head = line.split()
            if len(head) >= 2 and head[0].endswith(":") and head[1].isdigit():
                totals[head[0].rstrip(":")] = int(head[1])
    totals["Uss"] = totals.get("Private_Clean", 0) + totals.get("Private_Dirty", 0)
    return totals


def shared_load_demo(index_dir: str | os.PathLike, file_name: str, processes: int = 2,
                     queries: int = 200) -> pd.DataFrame:
    """Start ``processes`` Pythons that each load the index and search it; report how
    much of ``file_name`` each one maps, and how much of that is shared.

    With a memory-mapped index, Pss (each process's fair share) is about Rss / processes:
    the pages are in memory once, in the page cache, whatever the number of readers.
    """
    if not Path("/proc/self/smaps").exists():
        raise OSError("needs Linux /proc/<pid>/smaps")
    path = resolve_version(index_dir) / file_name  # the version `current` points at
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(index_dir), str(queries)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"index loader {p.pid} failed: {line!r}")
        rows = [{"pid": p.pid, **mapping_kb(p.pid, path)} for p in procs]
    finally:
        for p in procs:
            p.communicate("")
    df = pd.DataFrame(rows)
    df["Private"] = df.pop("Private_Clean") + df.pop("Private_Dirty")
    df = df.rename(columns={"Rss": "rss_kb", "Pss": "pss_kb", "Private": "private_kb"})
    df.attrs["file_kb"] = path.stat().st_size // 1024
    return df


class PeakMemory:
    """Peak resident memory of this process while a block runs, sampled every `interval`
    seconds (a peak shorter than that can be missed).

    anon: anonymous memory (heap, arrays): what must fit in RAM. file: file-backed pages
    (memory-mapped stores and index files, libraries): page cache the kernel can write back
    and evict, so a memory-mapped build of any size shows here, not in `anon`. The one
    VmHWM figure (ru_maxrss) adds both and would count a mapped 5 GB store as used RAM.
    `reset()` returns the anonymous peak so far and starts again (the phases of a build).
    """

    STATUS = Path("/proc/self/status")

    def __init__(self, interval: float = 0.1) -> None:
        if not self.STATUS.exists():
            raise OSError("needs Linux /proc/self/status")
        self.interval, self.anon, self.file = interval, 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        fields = {}
        for line in self.STATUS.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
        self.anon = max(self.anon, fields.get("RssAnon", 0))
        self.file = max(self.file, fields.get("RssFile", 0))

    def reset(self) -> int:
        anon, self.anon = self.anon, 0
        self.sample()
        return anon

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join()
        self.sample()
