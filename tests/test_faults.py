"""Faults during ingest: SIGKILL at random points, and a disk that fills up.

- The catalogue build (one process, and worker processes) and the embedding are run
  in a child process that is killed with SIGKILL (the whole process group, as the
  OOM killer or a lost machine would) at a random moment, many times over; each
  run resumes the previous one, and every run that finishes gives a catalogue or
  vector store identical to an uninterrupted run.
- A disk that fills up mid-build (a small tmpfs where mount works, as root; a file
  size limit, RLIMIT_FSIZE, everywhere) gives one clear error; once space is
  freed, the same call resumes from the last checkpoint to the same catalogue.

The dump is ``damaged_sample`` (conftest: the built-in sample with damage of every kind).
The embedding uses a cheap deterministic extractor (block means of the pixels), so
no model is loaded. About a minute in all on 2 cores.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.catalogue.protocol import ParquetCatalogue
from helpers.core import artifacts
from helpers.ingest import scan as cat
from helpers.vectors.embed import embed_catalogue
from helpers.vectors.store import VectorStoreError

ROOT = Path(__file__).resolve().parents[1]

class Tiny:
    """Block means of the picture: a cheap, deterministic (N,H,W,3) -> (N,48) extractor."""

    dim = 48

    def meta(self) -> dict:
        return {"model": "tiny-block-means"}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, h, w, _ = x.shape
        b = x.reshape(n, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4), dtype=np.float64)
        return b.reshape(n, 48).astype(np.float32)


CHILD = textwrap.dedent('''
    import json, os, signal, sys, threading, time
    import numpy as np
    from helpers.catalogue.protocol import ParquetCatalogue
    from helpers.ingest import checkpoint
    from helpers.ingest import scan as cat
    from helpers.vectors.embed import embed_catalogue
    {tiny}
    job, args = sys.argv[1], json.loads(sys.argv[2])
    if args["delay"] is not None:
        # SIGKILL to the whole process group (the build and its worker processes), or to
        # the build alone.
        kill = ((os.kill, (os.getpid(), signal.SIGKILL)) if args.get("kill") == "parent"
                else (os.killpg, (0, signal.SIGKILL)))
        t = threading.Timer(args["delay"], *kill)
        t.daemon = True
        t.start()
    t0 = time.perf_counter()
    if job == "catalogue":
        checkpoint.PARALLEL_MIN_BYTES = 0  # let small files be cut into ranges
        cat.build_catalogue(args["bson"], args["out"], None, progress=False,
                            workers=args["workers"], checkpoint_every=args["every"],
                            verify_images="decode")
    else:
        embed_catalogue(ParquetCatalogue(cat.load_catalogue(args["catalogue"])), args["bson"],
                        Tiny(), args["out"], image_size=32, level=args["level"], batch_size=24,
                        decode_threads=1, progress=False)
    print("DONE", time.perf_counter() - t0, flush=True)
''').replace("{tiny}", inspect.getsource(Tiny))


def _child(job: str, delay: float | None, timeout: float = 300, **args) -> tuple[bool, float]:
    """Run ``job`` in a child process group, SIGKILLed after ``delay`` seconds of work.
    Returns (finished, seconds of work) once every process of the group has closed its
    output (a worker left alive keeps it open: ``timeout`` catches that)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, job, json.dumps({**args, "delay": delay}, default=str)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    done = [line for line in out.splitlines() if line.startswith("DONE")]
    return bool(done), float(done[0].split()[1]) if done else 0.0


def _catalogue(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    summary = cat.load_meta(out)["summary"]
    counts = {k: v for k, v in summary.items() if k != "seconds"}
    return cat.load_catalogue(out), cat.load_rejects(out), counts


def _assert_same_catalogue(a: Path, b: Path) -> None:
    for x, y in zip(_catalogue(a), _catalogue(b), strict=True):
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y)
        else:
            assert x == y


def _store(out: Path) -> tuple:
    meta = json.loads((out / "meta.json").read_text())
    keep = {k: meta.get(k) for k in ("dim", "count", "next_row", "complete", "images",
                                     "failed_images")}
    rejects = (out / "rejects.csv").read_text() if (out / "rejects.csv").exists() else ""
    return ((out / "vectors.f32").read_bytes(), (out / "ids.i64").read_bytes(), keep, rejects)


def _kill_and_resume(job: str, reference: float, out: Path, kills: int, seed: int,
                     same: callable, **args) -> int:
    """Kill ``job`` at random moments ``kills`` times; each run resumes the previous
    one; every finished run must equal the reference (then the next starts afresh).
    Returns how many runs were killed before they finished."""
    rng = random.Random(seed)
    killed = 0
    for _ in range(kills):
        finished, _ = _child(job, rng.uniform(0.05, 1.1 * reference), out=out, **args)
        if finished:
            same(out)
            shutil.rmtree(out)
        else:
            killed += 1
    finished, _ = _child(job, None, out=out, **args)
    assert finished
    same(out)
    return killed


# ------------------------------------------------------------------ SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("workers,kills", [(1, 12), (2, 6)])
def test_catalogue_killed_at_random_resumes_to_the_same(damaged_sample, tmp_path, workers, kills):
    args = {"bson": damaged_sample, "workers": workers, "every": 40}
    finished, seconds = _child("catalogue", None, out=tmp_path / "ref", **args)
    assert finished
    s = cat.load_meta(tmp_path / "ref")["summary"]
    assert s["products_rejected"] >= 4 and s["documents"] > 600  # the damage is there
    killed = _kill_and_resume("catalogue", seconds, tmp_path / "out", kills, seed=workers,
                              same=lambda out: _assert_same_catalogue(tmp_path / "ref", out),
                              **args)
    assert killed >= 1


@pytest.mark.slow
def test_workers_die_with_a_build_killed_alone(damaged_sample, tmp_path):
    """SIGKILL to the build process only (not its group): its workers must not live on,
    blocked for ever or writing files that the resumed run writes too."""
    args = {"bson": damaged_sample, "workers": 2, "every": 40}
    finished, seconds = _child("catalogue", None, out=tmp_path / "ref", **args)
    rng = random.Random(11)
    for _ in range(3):
        _child("catalogue", rng.uniform(0.2, 0.8) * seconds, timeout=60, kill="parent",
               out=tmp_path / "out", **args)  # returns once the workers are gone too
    assert _child("catalogue", None, out=tmp_path / "out", **args)[0]
    _assert_same_catalogue(tmp_path / "ref", tmp_path / "out")


@pytest.fixture(scope="module")
def damaged_catalogue(damaged_sample, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cat")
    cat.build_catalogue(damaged_sample, out, None, progress=False)  # magic: the fake JPEG passes
    return out


@pytest.mark.slow
@pytest.mark.parametrize("level,kills", [("product", 8), ("image", 4)])
def test_embedding_killed_at_random_resumes_to_the_same(damaged_sample, damaged_catalogue, tmp_path,
                                                        level, kills):
    args = {"bson": damaged_sample, "catalogue": damaged_catalogue, "level": level}
    finished, seconds = _child("embed", None, out=tmp_path / "ref", **args)
    assert finished
    ref = _store(tmp_path / "ref")
    assert ref[2]["failed_images"] == 2 and "undecodable" in ref[3]

    def same(out: Path) -> None:
        assert _store(out) == ref

    killed = _kill_and_resume("embed", seconds, tmp_path / "out", kills, seed=7, same=same,
                              **args)
    assert killed >= 1


# ------------------------------------------------------------------ disk full


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE test covers it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until only ``leave`` bytes are free."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_disk_full_mid_build_is_one_clear_error_and_resumes(damaged_sample, small_disk, tmp_path):
    cat.build_catalogue(damaged_sample, tmp_path / "ref", None, progress=False)
    filler = _fill(small_disk, 24 * 1024)  # room for a few checkpoints, not for the build
    out = small_disk / "out"
    with pytest.raises(cat.CatalogueError, match="cannot write the catalogue in .*out: No space "
                                                 "left on device.*resumes"):
        cat.build_catalogue(damaged_sample, out, None, progress=False, checkpoint_every=40)
    # the last checkpoint is whole and names only part files that are there
    state = artifacts.read_json(out / cat.WORK / "range-00" / "checkpoint.json")
    assert state["parts"] >= 1 and not state["done"]
    for i in range(state["parts"]):
        assert pd.read_parquet(out / cat.WORK / "range-00" / f"part-{i:05d}.parquet") is not None
    filler.unlink()
    cat.build_catalogue(damaged_sample, out, None, progress=False, checkpoint_every=40)
    _assert_same_catalogue(tmp_path / "ref", out)


def test_disk_full_while_embedding_keeps_the_store_resumable(damaged_sample, damaged_catalogue,
                                                             small_disk, tmp_path):
    df = cat.load_catalogue(damaged_catalogue)
    kw = {"image_size": 32, "batch_size": 24, "progress": False, "decode_threads": 1}
    embed_catalogue(ParquetCatalogue(df), damaged_sample, Tiny(), tmp_path / "ref", **kw)
    filler = _fill(small_disk, 40 * 1024)
    out = small_disk / "vectors"
    with pytest.raises(VectorStoreError, match="cannot write the vector store in .*vectors: "
                                               "No space left on device.*resumes") as info:
        embed_catalogue(ParquetCatalogue(df), damaged_sample, Tiny(), out, **kw)
    assert info.value.__cause__.errno == errno.ENOSPC
    filler.unlink()
    embed_catalogue(ParquetCatalogue(df), damaged_sample, Tiny(), out, **kw)
    assert _store(out) == _store(tmp_path / "ref")


RLIMITED = textwrap.dedent('''
    import resource, signal, sys
    from helpers.ingest import scan as cat
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        cat.build_catalogue(sys.argv[1], sys.argv[2], None, progress=False, checkpoint_every=40)
    except cat.CatalogueError as exc:
        print("ERROR", exc)
        sys.exit(3)
''')


def test_write_failing_at_the_end_is_one_clear_error_and_resumes(damaged_sample, tmp_path):
    """Works unprivileged: a file size limit makes the final catalogue's write fail
    (the part files are smaller), the checkpoints are kept, and the next call finishes."""
    cat.build_catalogue(damaged_sample, tmp_path / "ref", None, progress=False)
    biggest = (tmp_path / "ref" / cat.CATALOGUE).stat().st_size
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", RLIMITED, str(damaged_sample), str(out),
                           str(biggest // 2)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "cannot write the catalogue" in proc.stdout and "resumes" in proc.stdout
    assert not (out / cat.META).exists() and (out / cat.WORK).exists()
    cat.build_catalogue(damaged_sample, out, None, progress=False, checkpoint_every=40)
    _assert_same_catalogue(tmp_path / "ref", out)


# ------------------------------------------------------------------ power loss


@pytest.fixture
def fsyncs(monkeypatch) -> list[str]:
    """The name of every file (or folder) fsynced, in order."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name a descriptor's file")
    names: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        real(fd)
        names.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)

    monkeypatch.setattr(os, "fsync", spy)
    return names


def _synced_before(names: list[str], marker: str, files: list[str]) -> list[set[str]]:
    """For each fsync of a file named like ``marker``: which of ``files`` were fsynced
    since the previous one."""
    out, since = [], set()
    for name in names:
        if marker in name:
            out.append(since)
            since = set()
        else:
            since |= {f for f in files if f in name}
    return out


def test_catalogue_parts_are_synced_before_the_checkpoint_counting_them(damaged_sample, fsyncs,
                                                                        tmp_path):
    """A checkpoint that outlives a power loss must not count part files that did not."""
    cat.build_catalogue(damaged_sample, tmp_path / "out", None, progress=False,
                        checkpoint_every=200, stop_after=2)
    state = json.loads((tmp_path / "out" / cat.WORK / "range-00" / "checkpoint.json")
                       .read_text())
    assert state["parts"] == 2
    checkpoints = _synced_before(fsyncs, "checkpoint.json", ["part-", "rejects-"])
    # the first checkpoint (no parts yet), then one per part, each after both its files
    assert checkpoints[1:] == [{"part-", "rejects-"}] * 2


def test_vector_rows_and_rejects_are_synced_before_meta_counts_them(damaged_catalogue,
                                                                      damaged_sample, fsyncs,
                                                                      tmp_path):
    embed_catalogue(ParquetCatalogue(cat.load_catalogue(damaged_catalogue)), damaged_sample, Tiny(),
                    tmp_path / "v", image_size=16, level="image", batch_size=256, progress=False)
    rejects = pd.read_csv(tmp_path / "v" / "rejects.csv")
    assert len(rejects) == 2  # the two fake JPEGs: one batch appended rejects
    metas = _synced_before(fsyncs, "meta.json", ["vectors.f32", "ids.i64", "rejects.csv"])
    appends = metas[1:-1]  # between the new store's meta.json and the finished one's
    assert appends and all({"vectors.f32", "ids.i64"} <= s for s in appends)
    assert sum("rejects.csv" in s for s in appends) == 1
