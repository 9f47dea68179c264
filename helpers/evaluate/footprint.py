"""What a saved index costs to keep: its size on disk, and the memory of a process that
loads it and searches a batch (measured in a fresh Python, this module run as a script).

    disk_bytes(index_dir)
    resident_bytes(index_dir, queries, k)     # runs `python -m helpers.evaluate.footprint`

Imports numpy and helpers.core; the child process imports helpers.index (and through it
the index's engine) and nothing else, so that its memory is the index's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import helpers
from helpers.core.artifacts import resolve_version

log = logging.getLogger(__name__)

PROC_STATUS = Path("/proc/self/status")


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files of a saved index (its current version only)."""
    return sum(f.stat().st_size for f in resolve_version(path).rglob("*") if f.is_file())


def resident_bytes(index_dir: str | os.PathLike, queries: np.ndarray, k: int) -> float:
    """Memory a fresh process holds for the index: RSS after loading it and searching a
    batch, minus RSS before loading (the engine library already imported: its code is
    not the index's). A memory-mapped index (Annoy) counts the pages the batch touched;
    they live in the page cache, shared by processes. NaN where there is no /proc."""
    if not PROC_STATUS.exists():
        return float("nan")
    index_dir = Path(index_dir)
    qfile = index_dir.parent / f".{index_dir.name}.queries.npy"
    np.save(qfile, np.ascontiguousarray(queries, np.float32))
    try:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        proc = subprocess.run([sys.executable, "-m", __name__, str(index_dir), str(qfile),
                               str(k)],
                              capture_output=True, text=True, timeout=300,
                              cwd=Path(helpers.__file__).resolve().parents[1], env=env)
        if proc.returncode:
            log.warning("memory of %s not measured: %s", index_dir, proc.stderr[-500:])
            return float("nan")
        return float(proc.stdout.strip().splitlines()[-1])
    finally:
        qfile.unlink(missing_ok=True)


def rss() -> int:
    """Resident memory of this process, bytes (Linux)."""
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS in {PROC_STATUS}")


def probe(index_dir: str | os.PathLike, queries_file: str | os.PathLike, k: int) -> int:
    """In the child: bytes this process gains by loading the index and searching the
    queries once."""
    from helpers.index import METHODS, load_index

    q = np.load(queries_file)
    try:  # the engine's library (faiss, annoy) is loaded before the clock: not the index
        meta = json.loads((resolve_version(index_dir) / "meta.json").read_text())
        METHODS[meta["method"]]
    except (OSError, KeyError, ValueError):
        pass
    before = rss()
    index = load_index(index_dir)
    index.search(q, k)
    return rss() - before


def main(argv: list[str] | None = None) -> None:
    """``python -m helpers.evaluate.footprint INDEX_DIR QUERIES.npy K``: prints the bytes."""
    index_dir, queries_file, k = argv if argv is not None else sys.argv[1:]
    print(probe(index_dir, queries_file, int(k)))


if __name__ == "__main__":
    main()
