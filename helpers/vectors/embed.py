"""Catalogue -> images -> model -> vector store, batched and pipelined.

A reader thread pulls pictures from the BSON store by offset and decodes and
resizes them on a small thread pool (Pillow releases the GIL while decoding),
while the main thread runs the model on the previous batch: on a CPU the model
is the bottleneck, so the pipeline should run at the speed of the forward pass
alone (``bench/bench_embed.py`` measures the ratio).

A picture that fails to decode is skipped, counted, and written to the store's
``rejects.csv``; a product with no decodable picture gets no vector.

Imports numpy, pandas, tqdm, helpers.core, helpers.ingest (jpeg, schema),
helpers.catalogue and the vector stores; a model is passed in, never imported.
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.catalogue.image_source import BsonImageSource, ImageSource
from helpers.catalogue.protocol import (
    Catalogue,
    catalogue_fingerprint,
    iter_products,
)
from helpers.core import artifacts
from helpers.core.ids import LEVELS
from helpers.core.progress import tqdm
from helpers.ingest.jpeg import ImageError, decode_image, to_float
from helpers.ingest.schema import usable_counts

__all__ = ["catalogue_fingerprint", "embed_catalogue", "embed_files", "embed_options"]
from helpers.vectors.means import product_means
from helpers.vectors.sharded import MANIFEST as SHARDS_MANIFEST
from helpers.vectors.sharded import ShardedVectorStore
from helpers.vectors.store import (
    REJECTS,
    VectorStore,
    VectorStoreError,
    VectorWriter,
    read_meta,
    store_manifest,
)

log = logging.getLogger(__name__)

Extractor = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Batch:
    pixels: np.ndarray  # [n, s, s, 3]: float32 in [0, 1], or uint8 for a uint8 backend
    product_ids: np.ndarray
    image_index: np.ndarray
    next_row: int  # catalogue row after this batch's last product
    failures: list[tuple[int, int, str]] = field(default_factory=list)
    buffer: np.ndarray | None = None  # the pooled array ``pixels`` views, to give back


class _BufferPool:
    """Reusable float32 batch arrays.

    A fresh 40 MB array per batch costs more in page faults (first touch of new
    memory) than decoding its JPEGs; a few arrays cycled between the reader and
    the model cost nothing after the first round. ``get`` blocks while all are in use.
    """

    def __init__(self, count: int, shape: tuple[int, ...], dtype: type = np.float32) -> None:
        self.shape, self.dtype = shape, dtype
        self.free: queue.Queue = queue.Queue()
        for _ in range(count):
            self.free.put(np.empty(shape, dtype))

    def get(self, n: int) -> np.ndarray:
        if n > self.shape[0]:  # a product with many pictures: a one-off array
            return np.empty((n, *self.shape[1:]), self.dtype)
        return self.free.get()

    def put(self, buf: np.ndarray | None) -> None:
        if buf is not None and buf.shape == self.shape:
            self.free.put(buf)


def _decode(args: tuple[bytes, int]) -> np.ndarray | str:
    data, size = args
    try:
        return decode_image(data, size)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd picture must not end a 12 M-image run
        return f"undecodable image: {type(exc).__name__}: {exc}"


def _batches(catalogue: Catalogue, images: ImageSource, start: int, image_size: int,
             batch_size: int, pool: ThreadPoolExecutor, buffers: _BufferPool) -> Iterator[_Batch]:
    """Whole products, about ``batch_size`` images per batch, in catalogue order."""
    row = start
    products = iter_products(catalogue, start)
    product = next(products, None)
    while product is not None:
        jobs, owners = [], []
        while product is not None and len(jobs) < batch_size:
            skip = set(product.bad_images)
            for i, pic in enumerate(images.pictures(product)):
                if i not in skip:
                    jobs.append((pic, image_size))
                    owners.append((product.product_id, i))
            row += 1
            product = next(products, None)
        results = list(pool.map(_decode, jobs))
        ok = [j for j, r in enumerate(results) if not isinstance(r, str)]
        failures = [(*owners[j], r) for j, r in enumerate(results) if isinstance(r, str)]
        buf = buffers.get(len(ok))
        for i, j in enumerate(ok):
            if buf.dtype == np.uint8:  # a uint8 backend scales inside its graph
                buf[i] = results[j]
            else:  # uint8 -> [0, 1] float32, as images.to_float does
                np.multiply(results[j], np.float32(1 / 255), out=buf[i])
        yield _Batch(buf[: len(ok)], np.array([owners[j][0] for j in ok], np.int64),
                     np.array([owners[j][1] for j in ok], np.int64), row, failures, buf)


def _prefetch(it: Iterator[_Batch], depth: int = 2) -> Iterator[_Batch]:
    """Run ``it`` on a thread, ``depth`` batches ahead of the consumer.

    When the consumer stops early (an extractor error, Ctrl-C in a notebook) the
    reader must not stay blocked on a full queue for ever, holding ~100 MB of
    batches and the BSON file: it polls ``stop`` while waiting, and closing this
    generator joins it.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in it:
                if not put(item):
                    return
        except BaseException as exc:  # re-raised in the consumer, not lost in a thread
            put(exc)
            return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # releases the BSON file now, not at garbage collection
        put(done)

    t = threading.Thread(target=work, daemon=True, name="embed-reader")
    t.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


# A full disk (or quota, or file size limit) while writing the store.


@artifacts.disk_full_is_one_error(VectorStoreError, "the vector store", 3,
                                  "it resumes from its last batch")
def embed_catalogue(
    catalogue: Catalogue,
    images: ImageSource | str | os.PathLike,
    extractor: Extractor,
    out_dir: str | os.PathLike,
    *,
    image_size: int = 224,
    level: str = "product",
    batch_size: int = 64,
    decode_threads: int = 2,
    resume: bool = True,
    rebuild_stale: bool = False,
    progress: bool = True,
) -> VectorStore:
    """Embed every usable image of ``catalogue`` into a vector store at ``out_dir``.

    catalogue: a `helpers.catalogue.protocol.Catalogue` (`ParquetCatalogue(df)` for a frame).
    images: where the pictures are, an `ImageSource` (a BSON path is wrapped).
    image_size: side the pictures are resized to (224: the models' training size,
        default; 180: Cdiscount's native size, no resize and ~1.5x fewer pixels).
    level: ``"product"`` (default) stores one vector per product, the mean of its
        L2-normalised image vectors; ``"image"`` stores one per picture.
    resume: continue an unfinished store made with the same settings (default);
        False starts again (an old store there is moved aside, never deleted).
    rebuild_stale: a store in ``out_dir`` made by other settings (model, size,
        catalogue...) is moved aside to ``<out_dir>.stale-<time>`` and rebuilt, saying
        why; by default it is refused with the list of differences. An embedding can
        be 12 hours of work: it is never thrown away here.
    Returns the finished store, memory-mapped. An already finished store with the
    same settings is returned as is.
    """
    _check_level(level)
    if isinstance(images, str | os.PathLike):
        images = BsonImageSource(images)
    out_dir = Path(out_dir)
    model_meta = extractor.meta() if hasattr(extractor, "meta") else {"model": repr(extractor)}
    source = getattr(images, "path", None) or getattr(images, "folder", None)
    made_by = {**model_meta, "image_size": image_size, "level": level,
               "source": str(Path(source).resolve()) if source else repr(images),
               "catalogue_rows": len(catalogue), "catalogue_sha256": catalogue.fingerprint}
    if (out_dir / SHARDS_MANIFEST).exists():
        # A finished Dask run (helpers.scale.distributed) left its shards here: the same
        # content id as a single store of these settings means the same vectors.
        sharded = ShardedVectorStore(out_dir)
        if sharded.id == store_manifest(made_by)["id"]:
            return sharded
        raise VectorStoreError(f"{out_dir} holds sharded vectors made by other settings ("
                               + artifacts.describe_diff(artifacts.settings_diff(
                                   sharded.made_by, made_by), "is", "now")
                               + "); move it away to embed again")
    old = read_meta(out_dir)
    if old is not None:
        diff = artifacts.settings_diff(old["made_by"], made_by)
        if not diff and old.get("complete") and resume:
            return VectorStore(out_dir)
        if diff or not resume:
            why = artifacts.describe_diff(diff, "is", "now") if diff else "resume=False"
            if diff and resume and not rebuild_stale:
                raise VectorStoreError(f"{out_dir} holds vectors made by other settings ({why});"
                                       " move it away or pass rebuild_stale=True")
            aside = _move_aside(out_dir)
            log.warning("%s: made by other settings (%s): kept as %s, rebuilding",
                        out_dir, why, aside)
            resume = False
    dim = int(getattr(extractor, "dim", 0) or 0)
    if dim <= 0:
        # Learn the size before reading: the writer (and its resume point) must exist
        # first, or a resumed run would start again at row 0 and append duplicates.
        dim = int(extractor(np.zeros((1, image_size, image_size, 3), np.float32)).shape[1])
    writer = VectorWriter(out_dir, dim, made_by, resume=resume)
    start = writer.next_row
    if start == 0:
        (out_dir / REJECTS).unlink(missing_ok=True)  # a fresh store: old rejects are stale
    else:  # rows from `start` are read again: drop what a killed run recorded of them
        _trim_rejects(out_dir, catalogue.ids()[start:])
    total = _images_from(catalogue, start)
    bar = tqdm(total=total, unit="img", desc=f"embed {level}s @{image_size}px",
               disable=not progress)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(decode_threads) as pool:
        # depth 2 queued + 1 being filled + 1 at the model: 4 arrays in flight at most
        # The pictures as the extractor wants them (its input_spec): uint8 backends get
        # the decoded bytes as they are, and no float conversion is paid.
        spec = getattr(extractor, "input_spec", None)
        dtype = np.uint8 if getattr(spec, "dtype", "float32") == "uint8" else np.float32
        buffers = _BufferPool(5, (batch_size + 8, image_size, image_size, 3), dtype)
        feed = _prefetch(_batches(catalogue, images, start, image_size, batch_size, pool,
                                  buffers))
        try:
            for b in feed:
                _write_batch(writer, out_dir, level, b, extractor)
                buffers.put(b.buffer)
                bar.update(len(b.pixels) + len(b.failures))
        finally:
            feed.close()  # stop and join the reader now, even on an error or Ctrl-C
            bar.close()
    seconds = time.perf_counter() - t0
    return writer.close(seconds=round(writer.meta.get("seconds", 0) + seconds, 2))


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")


def embed_options(**options: Any) -> dict[str, Any]:
    """``embed_catalogue``'s keyword options, its defaults filled in and checked: what a
    caller embedding a catalogue in pieces (``helpers.scale.distributed``) records and
    passes to each piece. TypeError names an unknown option, ValueError a bad level."""
    params = inspect.signature(embed_catalogue).parameters.values()
    known = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown embedding option(s) {unknown}; embed_catalogue takes "
                        f"{sorted(known)}")
    options = {**known, **options}
    _check_level(options["level"])
    return options


def _move_aside(folder: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = folder.with_name(f"{folder.name}.stale-{stamp}-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(folder, aside)
    return aside


def _images_from(catalogue: Catalogue, start: int) -> int:
    """Pictures from catalogue position ``start`` on (for the progress bar)."""
    df = getattr(catalogue, "df", None)
    if df is not None:
        return int(usable_counts(df.iloc[start:]).sum())
    return sum(p.n_usable for p in iter_products(catalogue, start))


def _write_batch(writer: VectorWriter, out_dir: Path, level: str, b: _Batch,
                 extractor: Extractor) -> None:
    """Embed one batch and append it (and its rejects) to the store."""
    vecs = extractor(b.pixels) if len(b.pixels) else None
    if b.failures:
        _append_rejects(out_dir, b.failures)
    if vecs is None:
        writer.append(np.zeros((0, writer.meta["dim"])), [], [], b.next_row,
                      failed_images=len(b.failures))
    elif level == "product":
        pids, means = product_means(b.product_ids, vecs)
        writer.append(means, pids, np.full(len(pids), -1), b.next_row,
                      images=len(vecs), failed_images=len(b.failures))
    else:
        writer.append(vecs, b.product_ids, b.image_index, b.next_row,
                      images=len(vecs), failed_images=len(b.failures))


def _trim_rejects(out_dir: Path, product_ids: np.ndarray) -> None:
    """Drop the rejects of ``product_ids`` (a kill may fall between rejects and meta).

    A kill may also cut an append short: a last line without its newline belongs to a
    batch that is read again, so it goes too (an empty file likewise), and the trimmed
    file replaces the old one atomically.
    """
    path = out_dir / REJECTS
    if not path.exists():
        return
    text = path.read_text()
    text = text[: text.rfind("\n") + 1]
    if not text:
        path.unlink()
        return
    df = pd.read_csv(io.StringIO(text))
    keep = df[~df["product_id"].isin(product_ids)]
    artifacts.atomic_write(path, lambda tmp: keep.to_csv(tmp, index=False))


def _append_rejects(out_dir: Path, failures: Sequence[tuple[int, int, str]]) -> None:
    """Append, fsynced: the meta.json written next moves the resume point past them."""
    path = out_dir / REJECTS
    df = pd.DataFrame(failures, columns=["product_id", "image_index", "reason"])
    header = not path.exists()
    with open(path, "a", encoding="utf-8", newline="") as f:
        df.to_csv(f, header=header, index=False)
        f.flush()
        os.fsync(f.fileno())


def embed_files(paths: Sequence[str | os.PathLike], extractor: Extractor,
                image_size: int = 224) -> np.ndarray:
    """Embed image files that are not in the catalogue (a user's photo, a query)."""
    # Same decode and scaling as embed_catalogue: the same picture gets the same vector.
    return extractor(to_float([decode_image(Path(p).read_bytes(), image_size) for p in paths]))
