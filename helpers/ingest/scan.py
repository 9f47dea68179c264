"""Build the product catalogue from a Cdiscount BSON dump.

One streaming pass writes, under ``out_dir``:

- ``catalogue.parquet``: one row per product (id, category id and its three
  level names, its pictures -- ``n_images`` counts all, ``bad_images`` lists the
  indexes of those left out -- byte offset and length of the document);
- ``rejects.csv``: every document, product or image left out, with its offset,
  product id, reason code and detail;
- ``catalogue.json``: what made it (source file, parameters) and the counts.

The pass checkpoints every ``checkpoint_every`` documents to ``out_dir/_work``;
a killed run called again resumes there and ends with the same catalogue.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from bson.int64 import Int64
from tqdm.auto import tqdm

from helpers.core import artifacts
from helpers.core.ids import IMAGE_ID_BASE, MAX_PRODUCT_ID
from helpers.ingest import bson_store
from helpers.ingest.bson_store import MAX_DOC
from helpers.ingest.jpeg import (
    JPEG_EOI,
    JPEG_SOI,
    MAX_SIDE,
    ImageError,
    ImageTooLargeError,
    check_jpeg_bytes,
    decode_image,
    too_large,
)
from helpers.ingest.schema import catalogue_fingerprint, usable_counts

log = logging.getLogger(__name__)

CATALOGUE = "catalogue.parquet"
REJECTS = "rejects.csv"
META = "catalogue.json"
WORK = "_work"
# 2: n_images counts every picture of the document (1 counted the good ones only, while
# bad_images held document indexes: a good picture after a bad one was lost).
FORMAT_VERSION = 2
# What rebuilds a catalogue (named when an old one is refused).
REBUILD = ("build_catalogue(...) again (it rebuilds an older format), or for a run's "
           "artifacts `make demo` / `python run_all.py --only 01`")
PARALLEL_MIN_BYTES = 64 * 1024 * 1024  # tests lower it to split small files
LEVELS = ["category_level1", "category_level2", "category_level3"]
REJECT_COLUMNS = ["kind", "offset", "length", "product_id", "image_index", "reason", "detail"]
# A BSON int64 decodes as bson.Int64 (an int subclass): a NumberLong _id is still an id.
_INTS = (int, Int64)
# n_images is an int16 column: a product claiming more pictures is refused, not a crash.
MAX_IMAGES = 2**15 - 1
# The image-id codec (helpers.core.ids) is the one source of the id and picture-index limits:
# what it cannot pack is left out here, not found when a store is opened after embedding.

SCHEMA = pa.schema(
    [
        ("product_id", pa.int64()),
        ("category_id", pa.int64()),  # null in test.bson, which has no labels
        ("n_images", pa.int16()),  # every picture of the document, bad ones included
        ("bad_images", pa.list_(pa.int16())),  # their indexes in the document, usually []
        ("offset", pa.int64()),
        ("length", pa.int32()),
    ]
)


class CatalogueError(ValueError):
    """A catalogue that cannot be built or used as asked (wrong file, stale artifact)."""


class NoProductsError(CatalogueError):
    """The file (or the slice of it asked for) holds no usable product: nothing to search."""


def require_products(summary: CatalogueSummary) -> None:
    """NoProductsError, saying plainly why, unless the catalogue has products (an empty
    file is a valid dump of zero products, but every later step needs one)."""
    if summary.products_kept > 0:
        return
    if summary.documents == 0:
        raise NoProductsError(f"{summary.source} holds no products: no BSON document in the "
                              "file (or in the skip/limit slice asked for)")
    why = ", ".join(f"{k} {v}" for k, v in sorted(summary.rejects_by_reason.items()))
    raise NoProductsError(f"{summary.source} holds no usable products: all "
                          f"{summary.documents:,} documents were rejected ({why}); "
                          "see rejects.csv")


# ---------------------------------------------------------------- categories


def load_categories(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``category_names.csv``: ``category_id`` + three level names, trimmed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"category file not found: {path}")
    df = pd.read_csv(path, dtype={"category_id": "int64"}, encoding="utf-8")
    missing = {"category_id", *LEVELS} - set(df.columns)
    if missing:
        raise CatalogueError(f"{path}: missing columns {sorted(missing)}; has {list(df.columns)}")
    for col in LEVELS:
        df[col] = df[col].astype("string").str.strip()  # some names end with a space
    if df["category_id"].duplicated().any():
        dup = df.loc[df["category_id"].duplicated(), "category_id"].iloc[0]
        raise CatalogueError(f"{path}: category_id {dup} appears twice")
    return df[["category_id", *LEVELS]]


# ---------------------------------------------------------------- summary


@dataclass
class CatalogueSummary:
    """Counts of one build: ``documents == products_kept + products_rejected``."""

    source: str
    documents: int = 0
    products_kept: int = 0
    products_rejected: int = 0
    images_in: int = 0
    images_kept: int = 0
    bad_images: int = 0
    categories: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    bytes_read: int = 0

    def __str__(self) -> str:
        lines = [
            f"source: {self.source}",
            f"documents read: {self.documents:,} = kept {self.products_kept:,}"
            f" + rejected {self.products_rejected:,}",
            f"images: {self.images_in:,} in products read, {self.images_kept:,} usable,"
            f" {self.bad_images:,} bad pictures",
            f"categories: {self.categories:,}",
        ]
        if self.rejects_by_reason:
            why = ", ".join(f"{k} {v}" for k, v in sorted(self.rejects_by_reason.items()))
            lines.append(f"rejects by reason: {why}")
        if self.seconds:
            mb = self.bytes_read / 1e6
            lines.append(
                f"time: {self.seconds:.1f} s ({mb / self.seconds:,.0f} MB/s,"
                f" {self.documents / self.seconds:,.0f} products/s)"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------- the pass


class _Part:
    """Columns of the products and rejects gathered since the last checkpoint."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in SCHEMA.names}
        self.rejects: list[tuple] = []
        self.images_in = 0

    def reject(self, kind, offset, length, pid, image_index, reason, detail) -> None:
        self.rejects.append((kind, offset, length, pid, image_index, reason, detail))


def _check_product(
    rec: bson_store.Record, part: _Part, known: set[int] | None, verify: str,
    max_side: int = MAX_SIDE,
) -> None:
    """Add one document to ``part``: as a product row, or as rejects with reasons.

    This runs once per product (7 M times on train.bson): the common case, a
    well-formed product of good JPEGs, takes the shortest path.
    """
    off, length, doc, error = rec
    if error is not None:
        reason = ("truncated" if error.startswith(bson_store.TRUNCATED) else
                  "document_too_large" if error.startswith(bson_store.TOO_LARGE) else
                  "malformed")
        part.reject("document", off, length, None, None, reason, error)
        return
    pid = doc.get("_id")
    if type(pid) not in _INTS:
        part.reject("product", off, length, None, None, "bad_id", f"_id is {_short(pid)}")
        return
    if not 0 <= pid <= MAX_PRODUCT_ID:
        part.reject("product", off, length, pid, None, "bad_id",
                    f"_id {pid} is outside [0, {MAX_PRODUCT_ID}], what image ids can pack")
        return
    imgs = doc.get("imgs")
    if type(imgs) is not list or not imgs:
        part.reject("product", off, length, pid, None, "no_images", f"imgs is {_short(imgs)}")
        return
    if len(imgs) > MAX_IMAGES:
        part.reject("product", off, length, pid, None, "too_many_images",
                    f"{len(imgs):,} pictures, limit {MAX_IMAGES:,}")
        return
    part.images_in += len(imgs)
    cat = doc.get("category_id")
    if cat is not None and (type(cat) not in _INTS or (known is not None and cat not in known)):
        part.reject("product", off, length, pid, None, "unknown_category",
                    f"category_id {_short(cat)}")
        return
    bad = []
    # Pictures past what an image id can index are left out, the product kept with the
    # first IMAGE_ID_BASE: what a bad picture gets. Refusing the product would lose it
    # from product-level search too, for pictures no image-level id can name.
    over = len(imgs) > IMAGE_ID_BASE
    for i, img in enumerate(imgs[:IMAGE_ID_BASE] if over else imgs):
        pic = img.get("picture") if type(img) is dict else None
        if (verify == "magic" and type(pic) is bytes and pic[:2] == JPEG_SOI
                and pic[-2:] == JPEG_EOI and too_large(pic, max_side) is None):
            continue  # the common case: three comparisons and a walk of the JPEG header
        reason, why = "bad_image", check_jpeg_bytes(pic)
        if why is None:
            why = too_large(pic, max_side)
            reason = "bad_image" if why is None else "image_too_large"
        if why is None and verify == "decode":
            try:
                decode_image(pic, max_side=max_side)
            except ImageTooLargeError as exc:
                reason, why = "image_too_large", str(exc)
            except ImageError as exc:
                why = str(exc)
        if why is not None:
            bad.append(i)
            part.reject("image", off, length, pid, i, reason, why)
    if over:
        for i in range(IMAGE_ID_BASE, len(imgs)):
            bad.append(i)
            part.reject("image", off, length, pid, i, "image_over_limit",
                        f"picture {i} of {len(imgs):,}: image ids index at most "
                        f"{IMAGE_ID_BASE} pictures a product")
    if len(bad) == len(imgs):
        part.reject("product", off, length, pid, None, "no_valid_image", f"all {len(imgs)} bad")
        return
    c = part.cols
    c["product_id"].append(pid)
    c["category_id"].append(cat)
    c["n_images"].append(len(imgs))
    c["bad_images"].append(bad)
    c["offset"].append(off)
    c["length"].append(length)


def _short(value: object) -> str:
    """``repr`` cut to 40 characters, without building the repr of a 16 MB value."""
    if isinstance(value, bytes | bytearray | str | list | dict) and len(value) > 40:
        return f"{type(value).__name__} of length {len(value):,}"
    return f"{value!r:.40}"


def _source_id(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}


def catalogue_params(categories: str | os.PathLike | None = None, *, skip: int = 0,
                     limit: int | None = None, verify_images: str = "magic",
                     max_doc_bytes: int = MAX_DOC, max_image_side: int = MAX_SIDE) -> dict:
    """The parameters that make a catalogue what it is (with the source file's identity)."""
    params = {
        "skip": skip,
        "limit": limit,
        "verify_images": verify_images,
        "categories": str(Path(categories).resolve()) if categories else None,
    }
    # Limits join the parameters only when set: catalogues made before they existed,
    # and helpers.scale.distributed's, keep matching.
    if max_doc_bytes != MAX_DOC:
        params["max_doc_bytes"] = max_doc_bytes
    if max_image_side != MAX_SIDE:
        params["max_image_side"] = max_image_side
    return params


def catalogue_settings(bson_path: str | os.PathLike, categories: str | os.PathLike | None = None,
                       **params) -> dict:
    """What a catalogue's manifest records as its settings: source file + parameters."""
    return {"source": _source_id(Path(bson_path)), "params": catalogue_params(categories, **params)}


def _write_json(path: Path, obj: dict) -> None:
    artifacts.write_json(path, obj)  # atomic and fsynced: a kill never leaves half a checkpoint


def _flush(work: Path, index: int, part: _Part) -> None:
    """Write one part's files, durably: the checkpoint written next counts them, so they
    must outlive a power loss that the checkpoint outlives (atomic_write fsyncs)."""
    table = pa.table(part.cols, schema=SCHEMA)
    artifacts.atomic_write(work / f"part-{index:05d}.parquet",
                           lambda t: pq.write_table(table, t))
    rej = pd.DataFrame(part.rejects, columns=REJECT_COLUMNS)
    artifacts.atomic_write(work / f"rejects-{index:05d}.parquet", rej.to_parquet)


# A full disk (or quota, or file size limit) while writing.


def _disk_full_is_one_error(build):
    """A disk filling up mid-build becomes one ``CatalogueError`` that names the folder
    and says the run resumes, instead of an ``OSError`` from deep in pyarrow. Every
    checkpoint is written atomically, so the last one stays usable."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        except OSError as exc:
            if not artifacts.is_disk_full(exc):
                raise
            out_dir = kwargs.get("out_dir", args[1] if len(args) > 1 else "out_dir")
            raise CatalogueError(
                f"cannot write the catalogue in {out_dir}: {exc.strerror or exc}. Free some "
                "space and call build_catalogue again: it resumes from its last checkpoint"
            ) from exc

    return wrapper


@_disk_full_is_one_error
def build_catalogue(
    bson_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    categories: str | os.PathLike | None = None,
    *,
    skip: int = 0,
    limit: int | None = None,
    verify_images: str = "magic",
    workers: int | None = 1,
    checkpoint_every: int = 50_000,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    force: bool = False,
    max_doc_bytes: int = MAX_DOC,
    max_image_side: int = MAX_SIDE,
) -> CatalogueSummary:
    """Scan ``bson_path`` and write the catalogue under ``out_dir``.

    skip, limit: take documents ``[skip, skip + limit)`` of the file.
    verify_images: ``"magic"`` (default) checks each picture's JPEG start/end
        markers, at disk speed; ``"decode"`` fully decodes every picture.
    workers: processes scanning byte ranges of the file in parallel (None: one per
        core). Whole files over 64 MB only; with skip/limit the scan is sequential.
        The catalogue is the same either way.
    checkpoint_every: documents between checkpoints (the unit of lost work).
    resume: continue an interrupted run found in ``out_dir`` (default True).
    stop_after: stop after this many checkpoints (per range), leaving the run to
        resume -- what a kill does; used by tests and demos of resuming.
    force: rebuild even if ``out_dir`` holds a finished catalogue of the same
        file and parameters (by default it is reused: no second 58 GB pass).
    max_doc_bytes: a document whose length prefix claims more is rejected
        (``document_too_large``) without being read; 16 MiB, BSON's own limit.
    max_image_side: a picture whose JPEG header declares more pixels a side is
        rejected (``image_too_large``) undecoded; 4096 (Cdiscount's are 180).
    """
    if verify_images not in ("magic", "decode"):
        raise ValueError(f"verify_images must be 'magic' or 'decode', not {verify_images!r}")
    if skip < 0 or (limit is not None and limit < 0):
        raise ValueError("skip and limit must be >= 0")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    bson_path, out_dir = Path(bson_path), Path(out_dir)
    bson_store.check_is_bson(bson_path)
    cats = load_categories(categories) if categories is not None else None

    params = catalogue_params(categories, skip=skip, limit=limit, verify_images=verify_images,
                              max_doc_bytes=max_doc_bytes, max_image_side=max_image_side)
    source = _source_id(bson_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not force and (out_dir / META).exists():
        meta = load_meta(out_dir)
        if meta["source"] == source and meta["params"] == params and \
                meta.get("format_version") == FORMAT_VERSION:  # an older format is rebuilt
            return CatalogueSummary(**meta["summary"])
    t0 = time.perf_counter()
    work = out_dir / WORK
    plan = _plan(work, bson_path, source, params, workers, resume)
    jobs = [(str(bson_path), str(work / f"range-{i:02d}"), a, b, limit, params["categories"],
             verify_images, checkpoint_every, stop_after, progress, i, max_doc_bytes,
             max_image_side)
            for i, (a, b) in enumerate(plan["ranges"])]
    if len(jobs) == 1:
        states = [_scan_range(*jobs[0])]  # in-process: simplest to debug and to test
    else:
        with ProcessPoolExecutor(min(workers, len(jobs)), initializer=_die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            states = list(pool.map(_scan_range, *zip(*jobs, strict=True)))
    plan["seconds"] += time.perf_counter() - t0
    _write_json(work / "plan.json", plan)
    if not all(st["done"] for st in states):
        return CatalogueSummary(source=str(bson_path),
                                documents=sum(st["documents"] for st in states))
    return _finalize(out_dir, plan, states, cats)


def _die_with_parent(parent: int) -> None:
    """Worker initializer: a worker dies with its build process (Linux's parent-death
    signal). Without it, a build SIGKILLed alone leaves its workers blocked for ever,
    and a resumed run could find one still writing the same range's files."""
    with contextlib.suppress(OSError, AttributeError):  # no prctl: not Linux
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the build died before the guard was set
        os._exit(1)


def _plan(work: Path, bson_path: Path, source: dict, params: dict, workers: int,
          resume: bool) -> dict:
    """The byte ranges of this run: an interrupted run's plan, or a new one."""
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
    if workers > 1 and params["skip"] == 0 and params["limit"] is None and \
            source["size"] > PARALLEL_MIN_BYTES:
        offsets = bson_store.partition_offsets(bson_path, workers, max_doc)
    else:
        start = (bson_store.skip_documents(bson_path, params["skip"], max_doc=max_doc)
                 if params["skip"] else 0)
        offsets = [start, source["size"]]
    plan = {"source": source, "params": params, "seconds": 0.0,
            "format_version": FORMAT_VERSION,
            "ranges": [[a, b] for a, b in zip(offsets, offsets[1:], strict=False)]
            or [[0, 0]]}
    _write_json(path, plan)
    return plan


def _scan_range(bson_path: str, work: str, start: int, end: int, limit: int | None,
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
        _write_json(ckpt, state)
    if state["done"]:
        return state
    known = (set(load_categories(categories)["category_id"].tolist())
             if categories is not None else None)
    t0 = time.perf_counter()
    part = _Part()
    docs = state["documents"]
    bar = tqdm(total=end - start, initial=state["next_offset"] - start, unit="B",
               unit_scale=True, desc=f"catalogue {position}" if position else "catalogue",
               position=position, disable=not progress)
    done_to = state["next_offset"]
    checkpoints = 0
    for rec in bson_store.iter_records(bson_path, state["next_offset"], end, max_doc=max_doc):
        if limit is not None and docs >= limit:
            break
        _check_product(rec, part, known, verify, max_side)
        docs += 1
        done_to = rec.offset + rec.length
        if docs % 4096 == 0:
            bar.update(done_to - start - bar.n)
        if docs % checkpoint_every == 0:
            _flush(work_dir, state["parts"], part)
            _advance(state, part, done_to, docs, t0)
            t0 = time.perf_counter()
            _write_json(ckpt, state)
            part = _Part()
            checkpoints += 1
            if stop_after is not None and checkpoints >= stop_after:
                bar.close()
                return state
    bar.update(done_to - start - bar.n)
    bar.close()
    _flush(work_dir, state["parts"], part)
    _advance(state, part, done_to, docs, t0)
    state["done"] = True
    _write_json(ckpt, state)
    return state


def _advance(state: dict, part: _Part, done_to: int, docs: int, t0: float) -> None:
    """Record in ``state`` that everything before ``done_to`` is safely in part files."""
    state.update(next_offset=done_to, documents=docs, parts=state["parts"] + 1,
                 images_in=state["images_in"] + part.images_in,
                 seconds=state["seconds"] + time.perf_counter() - t0)


def _finalize(out_dir: Path, plan: dict, states: list[dict],
              cats: pd.DataFrame | None) -> CatalogueSummary:
    """Join the parts in file order: drop duplicate ids (first wins), join names, write."""
    files = [(Path(out_dir / WORK / f"range-{r:02d}"), i)
             for r, st in enumerate(states) for i in range(st["parts"])]
    table = pa.concat_tables(pq.read_table(d / f"part-{i:05d}.parquet") for d, i in files)
    df = table.to_pandas()
    df["category_id"] = df["category_id"].astype("Int64")
    rej = pd.concat([pd.read_parquet(d / f"rejects-{i:05d}.parquet") for d, i in files],
                    ignore_index=True)
    dup = df["product_id"].duplicated(keep="first")
    if dup.any():
        first = df.drop_duplicates("product_id").set_index("product_id")["offset"]
        d = df[dup]
        rej = pd.concat([rej, pd.DataFrame({
            "kind": "product", "offset": d["offset"], "length": d["length"],
            "product_id": d["product_id"], "image_index": None, "reason": "duplicate_id",
            "detail": [f"_id already at offset {first[p]}" for p in d["product_id"]],
        })], ignore_index=True)
        df = df[~dup]
    if cats is not None:
        df = df.merge(cats, on="category_id", how="left", validate="many_to_one")
    else:
        for col in LEVELS:
            df[col] = pd.array([pd.NA] * len(df), dtype="string")
    df = df.reset_index(drop=True)
    rej = rej.astype({"offset": "int64", "length": "int64", "product_id": "Int64",
                      "image_index": "Int64"}).sort_values(["offset", "image_index"],
                                                          kind="stable", ignore_index=True)
    product_rejects = rej[rej["kind"] != "image"]
    summary = CatalogueSummary(
        source=plan["source"]["path"],
        documents=sum(st["documents"] for st in states),
        products_kept=len(df),
        products_rejected=len(product_rejects),
        images_in=sum(st["images_in"] for st in states),
        images_kept=int(usable_counts(df).sum()),
        bad_images=int((rej["kind"] == "image").sum()),
        categories=int(df["category_id"].nunique()),
        rejects_by_reason={k: int(v) for k, v in rej["reason"].value_counts().items()},
        seconds=plan["seconds"],
        bytes_read=sum(st["next_offset"] - st["start"] for st in states),
    )
    if summary.documents != summary.products_kept + summary.products_rejected:
        raise AssertionError(f"lost products: {summary}")  # an invariant, never expected
    artifacts.atomic_write(out_dir / CATALOGUE, lambda t: df.to_parquet(t, index=False))
    artifacts.atomic_write(out_dir / REJECTS, lambda t: rej.to_csv(t, index=False))
    manifest = artifacts.make_manifest(
        "catalogue", {"source": plan["source"], "params": plan["params"]})
    manifest["fingerprint"] = catalogue_fingerprint(df)  # what vector stores name as input
    artifacts.write_manifest(out_dir, manifest)
    meta = {"format_version": FORMAT_VERSION, "source": plan["source"],
            "params": plan["params"], "summary": asdict(summary)}
    _write_json(out_dir / META, meta)  # last: its presence means "finished"
    shutil.rmtree(out_dir / WORK)
    return summary


# ---------------------------------------------------------------- reading back


def load_catalogue(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The catalogue written by ``build_catalogue`` (checks it is complete and of this
    version's format)."""
    out_dir = Path(out_dir)
    if not (out_dir / META).exists():
        raise CatalogueError(f"no finished catalogue in {out_dir} (run build_catalogue first)")
    check_format(out_dir)
    return pd.read_parquet(out_dir / CATALOGUE)


def check_format(out_dir: str | os.PathLike) -> None:
    """CatalogueError, naming the rebuild command, for a catalogue of another format: read
    as this version's, its picture counts would be wrong, not refused."""
    version = load_meta(out_dir).get("format_version")
    if version != FORMAT_VERSION:
        raise CatalogueError(
            f"{out_dir} holds a catalogue of format {version}; this version reads format "
            f"{FORMAT_VERSION} (n_images now counts every picture, bad ones included). "
            f"Rebuild it: {REBUILD}")


def load_meta(out_dir: str | os.PathLike) -> dict:
    return artifacts.read_json(Path(out_dir) / META)


def load_rejects(out_dir: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(Path(out_dir) / REJECTS, dtype={"product_id": "Int64",
                                                       "image_index": "Int64"})


def categories_of(df: pd.DataFrame, product_ids: np.ndarray) -> np.ndarray:
    """The category id of each product in ``product_ids`` (int64, in that order)."""
    return df.set_index("product_id").loc[np.asarray(product_ids).ravel(), "category_id"] \
        .to_numpy(np.int64).reshape(np.shape(product_ids))


def category_counts(df: pd.DataFrame, level: str = "category_level3") -> pd.DataFrame:
    """Products and images per category, largest first."""
    keys = ["category_id", *LEVELS] if level == "category_level3" else [level]
    out = df.assign(usable=usable_counts(df)).groupby(keys, dropna=False).agg(
        products=("product_id", "size"), images=("usable", "sum"))
    return out.sort_values("products", ascending=False).reset_index()


def iter_images(
    df: pd.DataFrame, bson_path: str | os.PathLike
) -> Iterable[tuple[int, int, bytes]]:
    """``(product_id, image_index, jpeg_bytes)`` for every usable image of ``df``'s rows."""
    with bson_store.BsonImageStore(bson_path) as store:
        for pid, off, length, bad in zip(df["product_id"], df["offset"], df["length"],
                                         df["bad_images"], strict=True):
            skip = set(bad.tolist()) if isinstance(bad, np.ndarray) else set(bad or ())
            for i, pic in enumerate(store.pictures(int(off), int(length))):
                if i not in skip:
                    yield int(pid), i, pic


def export_jpegs(
    df: pd.DataFrame,
    bson_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    by_category: bool = False,
    progress: bool = True,
) -> int:
    """Write ``<product_id>_<i>.jpg`` files (under ``<category_id>/`` if ``by_category``).

    The original project worked from such files; the catalogue does not need
    them (the BSON is the image store), but some tools do. Returns files written.
    """
    out_dir = Path(out_dir)
    cats = dict(zip(df["product_id"], df["category_id"], strict=True))
    n = 0
    total = int(usable_counts(df).sum())
    for pid, i, pic in tqdm(iter_images(df, bson_path), total=total, desc="export",
                            disable=not progress):
        folder = out_dir / str(cats[pid]) if by_category else out_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{pid}_{i}.jpg").write_bytes(pic)
        n += 1
    return n
