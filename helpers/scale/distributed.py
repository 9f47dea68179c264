"""The full ``train.bson`` on Dask: catalogue and embedding, one task per byte range.

    from helpers.scale import distributed as dist
    summary = dist.build_catalogue("train.bson", "work/catalogue", "category_names.csv",
                                   workers=2)                      # LocalCluster
    summary = dist.build_catalogue(..., scheduler="tcp://10.0.0.1:8786")  # a cluster
    store = dist.embed_catalogue("work/catalogue", "train.bson", "onnx",
                                 "work/vectors/mobilenet_v2-onnx-180px-product",
                                 image_size=180, workers=2)        # a ShardedVectorStore

The file is cut into document-aligned byte ranges (``bson_store.partition_offsets``,
about ``PARTITION_BYTES`` each: ~110 for the 58 GB train.bson). Each range is one Dask
task that writes its own shard, with the single-machine code, so the same limits and
rejects apply:

- catalogue: ``helpers.ingest.scan.build_catalogue`` itself, its byte ranges run as Dask
  tasks (``checkpoint.scan_range`` into ``_work/range-NN/`` part files and a checkpoint):
  the same checks, limits (skip, limit, verify_images, max_doc_bytes, max_image_side),
  rejects, resume and ``catalogue.parquet`` / ``rejects.csv`` / ``catalogue.json``;
- vectors: ``shards/part-NNNNN/``, a ``helpers.vectors.embed.embed_catalogue`` store of the
  catalogue rows whose document starts in the range (undecodable pictures in its own
  ``rejects.csv``); the merge joins those into the store's ``rejects.csv`` and writes
  ``shards.json``, which ``helpers.vectors.sharded.ShardedVectorStore`` reads as one
  memory-mapped matrix.

A killed worker's tasks are rerun by Dask on a live worker: an unfinished range resumes
from its last checkpoint (a shard from its last stored batch), a finished one is returned
as it is; a re-run of the whole call does the same. At most one checkpoint of work per
range is lost, and the result is the uninterrupted run's, bit for bit.

Cluster: ``scheduler=None`` or ``"local"`` starts a ``LocalCluster`` of ``workers``
processes, one thread each, ``memory_limit`` each (default 2 GiB: a catalogue task holds
one 8 MB read window and at most ``checkpoint_every`` rows; an embedding task holds the
ONNX model, ~15 MB, and 5 batch buffers, ~100 MB at 224 px; Dask pauses a worker at 80%
and restarts it at 95%). A ``"tcp://host:port"`` address or a ``dask.distributed.Client``
uses an existing cluster with the same code: then the BSON file and the output folders
must be on storage every worker sees at the same path (NFS, a shared volume).
Progress is Dask's progress bar; the dashboard link goes to ``report`` (needs ``bokeh``
installed on the scheduler to serve pages).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from helpers.catalogue.protocol import ParquetCatalogue
from helpers.core import artifacts
from helpers.ingest import checkpoint
from helpers.ingest import scan as cat
from helpers.vectors.embed import catalogue_fingerprint, embed_options
from helpers.vectors.embed import embed_catalogue as embed_rows
from helpers.vectors.sharded import MANIFEST, SHARDS, ShardedVectorStore, write_manifest

logger = logging.getLogger(__name__)

PARTITION_BYTES = 512 * 2**20  # unit of scheduling, retry and lost work: ~110 on train.bson
DEFAULT_MEMORY = "2GiB"  # per worker; see the module docstring for what a task holds
PLAN = "plan.json"
CRASH_MARKER = "_crashed_once"  # crash_after (tests): the kill happens once

Report = Callable[[str], None]


# ---------------------------------------------------------------- the cluster


@contextmanager
def dask_client(
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: str | int = DEFAULT_MEMORY,
    processes: bool = True,
    report: Report = logger.info,
) -> Iterator[Any]:
    """A ``dask.distributed.Client``: on ``scheduler`` (an address or a Client), or on a
    new ``LocalCluster`` of ``workers`` single-threaded workers (None: one per core)."""
    from dask.distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        _describe(scheduler, report)
        yield scheduler
        return
    if scheduler not in (None, "", "local"):
        with Client(scheduler) as client:
            _describe(client, report)
            yield client
        return
    n = workers or os.cpu_count() or 1
    # Port 0 everywhere: several runs (tests, colleagues) on one machine never collide.
    # In-process workers (processes=False) share the caller's memory: a per-worker limit
    # would be checked against the whole process (a notebook or test runner holding models)
    # and pause the workers for ever. Limits apply to worker processes only.
    limit = memory_limit if processes else 0
    with LocalCluster(n_workers=n, threads_per_worker=1, memory_limit=limit,
                      processes=processes, scheduler_port=0, dashboard_address=":0") as cl, \
            Client(cl) as client:
        _describe(client, report)
        yield client


def _describe(client: Any, report: Report) -> None:
    info = client.scheduler_info()
    ws = list(info.get("workers", {}).values())
    mem = {w.get("memory_limit") for w in ws}
    mem_txt = ", ".join(f"{m / 2**30:.1f} GiB" if m else "unbounded" for m in mem)
    report(f"Dask: {len(ws)} workers x {sum(w.get('nthreads', 1) for w in ws) // max(len(ws), 1)}"
           f" thread(s), memory limit per worker {mem_txt}; scheduler {info.get('address')}")
    report(f"Dask dashboard: {client.dashboard_link}")


def _run(client: Any, fn: Callable, jobs: list[tuple], names: list[str],
         progress: bool) -> list:
    """Submit one task per job, keyed by its name (and a run id: a re-run is never served
    stale results); a dead worker's tasks are rerun by Dask on another one."""
    run_id = uuid.uuid4().hex[:8]
    futures = [client.submit(fn, *job, key=f"{name}-{run_id}", retries=1)
               for job, name in zip(jobs, names, strict=True)]
    if progress and futures:
        from dask.distributed import progress as dask_progress

        dask_progress(futures)
    return client.gather(futures)


# ---------------------------------------------------------------- catalogue


def build_catalogue(
    bson_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    categories: str | os.PathLike | None = None,
    *,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: str | int = DEFAULT_MEMORY,
    processes: bool = True,
    partition_bytes: int = PARTITION_BYTES,
    progress: bool = True,
    report: Report = logger.info,
    crash_after: int | None = None,
    **options: Any,
) -> cat.CatalogueSummary:
    """``helpers.ingest.scan.build_catalogue`` with one Dask task per byte range: the same
    call, so the same checks, limits, rejects, resume and output.

    options: ``scan.build_catalogue``'s (skip, limit, verify_images, checkpoint_every,
        resume, stop_after, force, max_doc_bytes, max_image_side); with skip or limit
        the file is one task, as it is one process there (documents count in file order).
    partition_bytes: about this many bytes per task (at least one task per worker).
    crash_after: tests: the first task to reach this many checkpoints kills its
        worker process (``os._exit``), once per output folder.
    Returns the summary; an unfinished run (stop_after) returns the documents read so far.
    """
    scanner = _DaskRanges({"scheduler": scheduler, "workers": workers,
                           "memory_limit": memory_limit, "processes": processes,
                           "report": report}, partition_bytes, progress, crash_after,
                          str(Path(out_dir) / CRASH_MARKER))
    return cat.build_catalogue(bson_path, out_dir, categories, progress=False,
                               scanner=scanner, **options)


@dataclass
class _DaskRanges:
    """The byte ranges of ``scan.build_catalogue`` as Dask tasks (a
    ``helpers.ingest.checkpoint.RangeScanner``)."""

    cluster: dict[str, Any]  # dask_client's arguments
    partition_bytes: int
    progress: bool
    crash_after: int | None
    crash_marker: str

    def parts(self, size: int) -> int:
        return max(self.cluster["workers"] or 1, math.ceil(size / self.partition_bytes))

    def __call__(self, jobs: list[tuple]) -> list[dict]:
        work = Path(jobs[0][1]).parent
        self.cluster["report"](f"catalogue: {len(jobs)} byte ranges -> {work}")
        with dask_client(**self.cluster) as client:
            return _run(client, _scan_task,
                        [(job, self.crash_after, self.crash_marker) for job in jobs],
                        [f"catalogue-{Path(job[1]).name}" for job in jobs], self.progress)


def _scan_task(job: tuple, crash_after: int | None, crash_marker: str) -> dict:
    """One range on a worker: ``checkpoint.scan_range(*job)``, resumable from its checkpoint."""
    if crash_after is not None and not Path(crash_marker).exists():
        args = inspect.signature(checkpoint.scan_range).bind(*job)
        args.arguments["stop_after"] = crash_after
        if not checkpoint.scan_range(*args.args)["done"]:
            Path(crash_marker).touch()
            os._exit(1)  # a killed worker: the nanny restarts it, Dask reruns the task
    return checkpoint.scan_range(*job)


# ---------------------------------------------------------------- embedding


def extractor_recipe(model: str = "mobilenet_v2", runtime: str = "onnx",
                     model_handle: str | None = None, threads: int = 1,
                     cache_dir: str | None = None, precision: str | None = None,
                     ) -> Callable[[], Any]:
    """A picklable recipe for ``models.load_extractor(model, runtime, ...)``, called once
    per worker; ``threads`` per forward pass (1: one core a single-threaded worker)."""
    from helpers.models import load_extractor

    return functools.partial(load_extractor, model, runtime, precision,
                             model_handle=model_handle, cache_dir=cache_dir,
                             intra_op_threads=threads)


def onnx_extractor(threads: int = 1, cache_dir: str | None = None) -> Callable[[], Any]:
    """The recipe of the ONNX MobileNetV2 extractor (the default)."""
    return extractor_recipe("mobilenet_v2", "onnx", None, threads, cache_dir)


_WORKER_EXTRACTORS: dict[str, Any] = {}


def _worker_extractor(factory: Callable[[], Any]) -> Any:
    """The extractor ``factory`` makes, built once per worker process (the model is
    loaded for the first range a worker runs, not for every range)."""
    from dask.base import tokenize

    key = tokenize(factory)
    if key not in _WORKER_EXTRACTORS:
        _WORKER_EXTRACTORS[key] = factory()
    return _WORKER_EXTRACTORS[key]


def shard_ranges(size: int, n: int) -> list[tuple[int, int]]:
    """``n`` byte ranges cutting ``[0, size)``: a row belongs to the range holding its
    document's offset (no document alignment needed: the catalogue has the offsets)."""
    edges = [size * i // n for i in range(n + 1)]
    return list(zip(edges, edges[1:], strict=False))


def embed_catalogue(
    catalogue_dir: str | os.PathLike,
    bson_path: str | os.PathLike,
    extractor: str | Callable[[], Any],
    out_dir: str | os.PathLike,
    *,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: str | int = DEFAULT_MEMORY,
    processes: bool = True,
    partition_bytes: int = PARTITION_BYTES,
    progress: bool = True,
    report: Report = logger.info,
    **options: Any,
) -> ShardedVectorStore:
    """``helpers.vectors.embed.embed_catalogue`` of each byte range's catalogue rows, one
    Dask task (one vector shard) per range: the same decode checks, rejects and resume.

    extractor: ``"onnx"`` (MobileNetV2, one ORT thread per worker), or a picklable
        zero-argument callable returning an extractor (``onnx_extractor(threads=2)``,
        ``functools.partial(load_extractor, ...)``), called once per worker.
    options: ``embed.embed_catalogue``'s (image_size, level, batch_size, decode_threads,
        resume) with its defaults, but one decode thread (a worker has one core); checked
        here before any task starts. Stale shards are moved aside, never refused.
    Returns the merged, memory-mapped store; its ``rejects.csv`` is the shards', in
    catalogue order: what one store of the same catalogue lists.
    """
    catalogue_dir, bson_path, out_dir = Path(catalogue_dir), Path(bson_path), Path(out_dir)
    factory = onnx_extractor() if extractor == "onnx" else extractor
    if not callable(factory):
        raise ValueError(f"extractor must be 'onnx' or a callable, not {extractor!r}")
    # rebuild_stale: the shards of a run of other settings are moved aside as a whole
    # (_embed_plan); one passed in here is a TypeError ("multiple values").
    opts = embed_options(**{"decode_threads": 1, **options}, rebuild_stale=True,
                         progress=False)
    if not (catalogue_dir / cat.META).exists():
        cat.load_catalogue(catalogue_dir)  # raises the usual "no finished catalogue" error
    settings, counts = shard_plan(catalogue_dir, bson_path, opts["image_size"],
                                  opts["level"], workers, partition_bytes)
    ranges = [tuple(r) for r in settings["ranges"]]
    _embed_plan(out_dir, settings, report)
    shards = [(out_dir / SHARDS / f"part-{i:05d}", a, b)
              for i, (a, b) in enumerate(ranges) if counts[i]]
    jobs = [(str(catalogue_dir / cat.CATALOGUE), str(bson_path), factory, str(d), a, b, opts)
            for d, a, b in shards]
    report(f"embedding: {settings['catalogue_rows']:,} catalogue rows in {len(jobs)} shards"
           f" -> {out_dir}")
    t0 = time.perf_counter()
    with dask_client(scheduler, workers, memory_limit, processes, report) as client:
        metas = _run(client, _embed_task, jobs, [f"embed-{d.name}" for d, _, _ in shards],
                     progress)
    made_by = {**metas[0]["made_by"], "catalogue_rows": settings["catalogue_rows"],
               "catalogue_sha256": settings["catalogue_sha256"]} if metas else {}
    parts = [{"path": str(d.relative_to(out_dir)), "count": m["count"], "range": [a, b]}
             for (d, a, b), m in zip(shards, metas, strict=True)]
    totals = {k: sum(m.get(k, 0) for m in metas) for k in ("images", "failed_images")}
    write_manifest(out_dir, dim=metas[0]["dim"] if metas else 0, made_by=made_by,
                   shards=parts, seconds=round(time.perf_counter() - t0, 2), **totals)
    return ShardedVectorStore(out_dir)


def shard_plan(catalogue_dir: str | os.PathLike, bson_path: str | os.PathLike,
               image_size: int, level: str, workers: int | None = None,
               partition_bytes: int = PARTITION_BYTES) -> tuple[dict, np.ndarray]:
    """The settings of an embedding run (catalogue, source, size, level, byte ranges) and
    the catalogue rows in each range: what `embed_catalogue` runs, one shard per range."""
    catalogue_dir, bson_path = Path(catalogue_dir), Path(bson_path)
    # Two columns only: 7 M rows of ids and offsets are ~110 MB on the client.
    df = pd.read_parquet(catalogue_dir / cat.CATALOGUE, columns=["product_id", "offset"])
    size = bson_path.stat().st_size
    n = max(workers or 1, math.ceil(size / partition_bytes))
    ranges = shard_ranges(size, n)
    counts = np.bincount(np.searchsorted([b for _, b in ranges], df["offset"].to_numpy(),
                                         side="right"), minlength=n)
    settings = {"catalogue_sha256": catalogue_fingerprint(df), "catalogue_rows": len(df),
                "source": str(bson_path.resolve()), "image_size": image_size, "level": level,
                "ranges": [list(r) for r in ranges]}
    return settings, counts


def shard_rows(catalogue_path: str | os.PathLike, start: int, end: int) -> pd.DataFrame:
    """The catalogue rows of the byte range [start, end), in catalogue order."""
    rows = pq.read_table(catalogue_path, filters=[("offset", ">=", start),
                                                  ("offset", "<", end)]).to_pandas()
    return rows.sort_values("offset", kind="stable", ignore_index=True)


def _embed_plan(out_dir: Path, settings: dict, report: Report) -> None:
    """Keep the shards of a run with the same catalogue and settings; move others aside
    (hours of embedding are never deleted here, as in ``helpers.vectors.embed``)."""
    path = out_dir / PLAN
    if path.exists() and json.loads(path.read_text()) != settings \
            and (out_dir / SHARDS).exists():
        aside = out_dir / f"{SHARDS}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
        (out_dir / SHARDS).rename(aside)
        report(f"{out_dir}: shards of another catalogue or settings kept as {aside.name}; "
               "embedding again")
    (out_dir / MANIFEST).unlink(missing_ok=True)  # rewritten when every shard is done
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(path, settings)


def _embed_task(catalogue_path: str, bson_path: str, factory: Callable[[], Any],
                shard: str, start: int, end: int, options: dict[str, Any]) -> dict:
    """One shard on a worker: its catalogue rows (a Parquet range read) -> the single-node
    embedding, resumable from the shard's last batch."""
    rows = ParquetCatalogue(shard_rows(catalogue_path, start, end))
    store = embed_rows(rows, bson_path, _worker_extractor(factory), shard, **options)
    return dict(store.meta)
