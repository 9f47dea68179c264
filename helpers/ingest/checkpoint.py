"""The resumable side of the catalogue pass: its plan, one byte range scanned into part
files with checkpoints, and the part files read back.

Everything lives under ``out_dir/_work`` until the pass finishes:

- ``plan.json``: the source file, the parameters and the byte ranges of the run
  (`plan_run`; a run called again with the same file and parameters resumes it);
- ``range-NN/checkpoint.json``: how far range NN got (next offset, documents, parts, done);
- ``range-NN/part-NNNNN.parquet`` and ``rejects-NNNNN.parquet``: the products and rejects of
  one checkpoint interval, written durably before the checkpoint that counts them.

`scan_range` is the pass's hot loop (one process, or one Dask task of
``helpers.scale.distributed``, per range). Every JSON file is written with
``artifacts.write_json`` (atomic and fsynced: a kill never leaves half a checkpoint).
Imports pandas/pyarrow, tqdm, `helpers.core.artifacts` and the ingest rooms below it
(bson_store, categories, errors, jpeg, products, schema); never `helpers.ingest.scan`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from helpers.core import artifacts
from helpers.core.progress import tqdm
from helpers.ingest import bson_store
from helpers.ingest.bson_store import MAX_DOC
from helpers.ingest.categories import load_categories
from helpers.ingest.errors import CatalogueError
from helpers.ingest.jpeg import MAX_SIDE
from helpers.ingest.products import PART_SCHEMA, REJECT_COLUMNS, Part, check_product
from helpers.ingest.schema import FORMAT_VERSION

log = logging.getLogger(__name__)

PARALLEL_MIN_BYTES = 64 * 1024 * 1024  # tests lower it to split small files


class RangeScanner(Protocol):
    """Runs the byte ranges of a build somewhere other than this process and its pool
    (``helpers.scale.distributed``: one Dask task each); the build around it is the same."""

    def parts(self, size: int) -> int:
        """How many byte ranges a file of ``size`` bytes is cut into (small files too)."""
        ...

    def __call__(self, jobs: list[tuple]) -> list[dict]:
        """``scan_range(*job)`` for every job; the ranges' states, in the jobs' order."""
        ...


def plan_run(work: Path, bson_path: Path, source: dict, params: dict, parts: int,
             resume: bool, split_small: bool = False) -> dict:
    """The byte ranges of this run: an interrupted run's plan, or a new one of about
    ``parts`` ranges (one with skip or limit: the documents are counted in file order).
    split_small: cut files under ``PARALLEL_MIN_BYTES`` too (the caller sized the parts)."""
    path = work / "plan.json"
    plan = artifacts.read_json(path) if resume and path.exists() else None
    if plan is not None and plan.get("format_version", 1) != FORMAT_VERSION:
        # Part files of an older format cannot join this one's: scan again.
        log.warning("%s: interrupted run of catalogue format %s, starting over",
                    work, plan.get("format_version", 1))
        plan = None
    if plan is not None:
        if plan["source"] == source and plan["params"] == params:
            return plan
        raise CatalogueError(
            f"{work.parent} holds an interrupted run of another file or other parameters "
            f"({plan['source']['path']}, {plan['params']}); "
            "delete its _work folder or pass resume=False"
        )
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    max_doc = params.get("max_doc_bytes", MAX_DOC)
    # Below ~64 MB a second process costs more than it saves.
    if parts > 1 and params["skip"] == 0 and params["limit"] is None and \
            (split_small or source["size"] > PARALLEL_MIN_BYTES):
        offsets = bson_store.partition_offsets(bson_path, parts, max_doc)
    else:
        start = (bson_store.skip_documents(bson_path, params["skip"], max_doc=max_doc)
                 if params["skip"] else 0)
        offsets = [start, source["size"]]
    plan = {"source": source, "params": params, "seconds": 0.0,
            "format_version": FORMAT_VERSION,
            "ranges": [[a, b] for a, b in zip(offsets, offsets[1:], strict=False)]
            or [[0, 0]]}
    artifacts.write_json(path, plan)
    return plan


def scan_range(bson_path: str, work: str, start: int, end: int, limit: int | None,
               categories: str | None, verify: str, checkpoint_every: int,
               stop_after: int | None, progress: bool, position: int,
               max_doc: int = MAX_DOC, max_side: int = MAX_SIDE) -> dict:
    """Scan the documents starting in ``[start, end)`` into part files under ``work``,
    checkpointing; resumes from ``work/checkpoint.json``. Returns the range's state."""
    work_dir = Path(work)
    ckpt = work_dir / "checkpoint.json"
    if ckpt.exists():
        state = artifacts.read_json(ckpt)
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        state = {"start": start, "end": end, "next_offset": start, "documents": 0,
                 "parts": 0, "images_in": 0, "seconds": 0.0, "done": False}
        artifacts.write_json(ckpt, state)
    if state["done"]:
        return state
    known = (set(load_categories(categories)["category_id"].tolist())
             if categories is not None else None)
    t0 = time.perf_counter()
    part = Part()
    docs = state["documents"]
    bar = tqdm(total=end - start, initial=state["next_offset"] - start, unit="B",
               unit_scale=True, desc=f"catalogue {position}" if position else "catalogue",
               position=position, disable=not progress)
    done_to = state["next_offset"]
    checkpoints = 0
    for rec in bson_store.iter_records(bson_path, state["next_offset"], end, max_doc=max_doc):
        if limit is not None and docs >= limit:
            break
        check_product(rec, part, known, verify, max_side)
        docs += 1
        done_to = rec.offset + rec.length
        if docs % 4096 == 0:
            bar.update(done_to - start - bar.n)
        if docs % checkpoint_every == 0:
            _flush(work_dir, state["parts"], part)
            _advance(state, part, done_to, docs, t0)
            t0 = time.perf_counter()
            artifacts.write_json(ckpt, state)
            part = Part()
            checkpoints += 1
            if stop_after is not None and checkpoints >= stop_after:
                bar.close()
                return state
    bar.update(done_to - start - bar.n)
    bar.close()
    _flush(work_dir, state["parts"], part)
    _advance(state, part, done_to, docs, t0)
    state["done"] = True
    artifacts.write_json(ckpt, state)
    return state


def _advance(state: dict, part: Part, done_to: int, docs: int, t0: float) -> None:
    """Record in ``state`` that everything before ``done_to`` is safely in part files."""
    state.update(next_offset=done_to, documents=docs, parts=state["parts"] + 1,
                 images_in=state["images_in"] + part.images_in,
                 seconds=state["seconds"] + time.perf_counter() - t0)


def _flush(work: Path, index: int, part: Part) -> None:
    """Write one part's files, durably: the checkpoint written next counts them, so they
    must outlive a power loss that the checkpoint outlives (atomic_write fsyncs)."""
    table = pa.table(part.cols, schema=PART_SCHEMA)
    artifacts.atomic_write(work / f"part-{index:05d}.parquet",
                           lambda t: pq.write_table(table, t))
    rej = pd.DataFrame(part.rejects, columns=REJECT_COLUMNS)
    artifacts.atomic_write(work / f"rejects-{index:05d}.parquet", rej.to_parquet)


def read_parts(work: Path, states: list[dict]) -> tuple[pa.Table, pd.DataFrame]:
    """The products and the rejects of every range's part files, in file order."""
    files = [(Path(work / f"range-{r:02d}"), i)
             for r, st in enumerate(states) for i in range(st["parts"])]
    # "default": part files written before picture hashes existed get null ones.
    table = pa.concat_tables((pq.read_table(d / f"part-{i:05d}.parquet") for d, i in files),
                             promote_options="default")
    rej = pd.concat([pd.read_parquet(d / f"rejects-{i:05d}.parquet") for d, i in files],
                    ignore_index=True)
    return table, rej
