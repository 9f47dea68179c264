"""The catalogue as the apps serve it: one Arrow IPC file, memory-mapped, no Python object
per product.

    from helpers.catalogue.columnar import ColumnarCatalogue
    cat = ColumnarCatalogue.open("runs/sample/artifacts/catalogue/<name>")  # writes it once
    cat.product(1000010653); cat.by_category(1000010653, limit=20); cat.page(0, 100)

``ParquetCatalogue`` holds the catalogue in pandas (a list and three names per product:
about 1 GB of small objects per process at 7 M products, copied into each gunicorn worker
as reference counts touch them). This one maps ``catalogue.arrow``, written beside
``catalogue.parquet``, read-only: every worker shares the same page-cache pages, and only
the products a request asks for become `Product` objects.

The file, one record batch, one row per product in catalogue order:

- ``product_id``, ``category_id`` (-1: none), ``n_images``, ``bad_images`` (list of int16),
  ``offset``, ``length``: the catalogue's columns;
- ``id_sorted`` (int64), ``id_order`` (int32): the product ids sorted, and the rows that
  sort them: id -> row is a binary search (`helpers.core.ids.IdMap.from_sorted`);
- ``category_rows`` (int32): the rows ordered by category, catalogue order within one;
  the schema's metadata holds the category table (ids sorted, where each one's rows
  start in ``category_rows``, its three level names) and the manifest.

The manifest (`helpers.core.artifacts.make_manifest`) names the catalogue it was made from
(its manifest id and fingerprint, the Parquet file's size and mtime): `open` rewrites a
stale file, atomically (`artifacts.atomic_write`); a reader that mapped the old one keeps it.

Imports numpy, pandas, pyarrow, `helpers.core` and `helpers.ingest.scan`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from helpers.catalogue.protocol import (
    CategoryPath,
    Product,
    as_product_id,
    rows_of,
)
from helpers.core import artifacts
from helpers.core.ids import IdMap
from helpers.ingest import scan
from helpers.ingest.schema import catalogue_fingerprint

log = logging.getLogger(__name__)

SERVING_FILE = "catalogue.arrow"
FORMAT = 1  # of SERVING_FILE: a reader of another format rewrites it
KIND = "serving_catalogue"


def _source_of(folder: Path) -> dict[str, Any]:
    """What a serving file is made from: the catalogue's manifest and Parquet file (a
    catalogue rebuilt in the same folder changes at least its mtime)."""
    manifest = artifacts.read_manifest(folder, missing_ok=True) or {}
    stat = (folder / scan.CATALOGUE).stat()
    return {"manifest_id": manifest.get("id"), "fingerprint": manifest.get("fingerprint"),
            "parquet_bytes": stat.st_size, "parquet_mtime_ns": stat.st_mtime_ns}


def write_serving_file(folder: str | os.PathLike) -> Path:
    """Write ``folder/catalogue.arrow`` from the catalogue there (see the module docstring).

    Peak memory is the catalogue's columns and two argsorts: the level names are read
    dictionary-encoded, never as one string per product.
    """
    folder = Path(folder)
    t0 = time.perf_counter()
    source = _source_of(folder)
    names = [c for c in scan.LEVELS if c in pq.read_schema(folder / scan.CATALOGUE).names]
    table = pq.read_table(folder / scan.CATALOGUE, read_dictionary=names,
                          columns=["product_id", "category_id", "n_images", "bad_images",
                                   "offset", "length", *names])
    cols = {name: table[name].combine_chunks() for name in table.column_names}
    del table
    pids = cols["product_id"].to_numpy()
    offsets = cols["offset"].to_numpy()
    cats = cols["category_id"].fill_null(-1).to_numpy().astype(np.int64, copy=False)
    id_order = np.argsort(pids, kind="stable")
    cat_rows = np.argsort(cats, kind="stable")  # stable: catalogue order within a category
    cat_ids, starts = np.unique(cats[cat_rows], return_index=True)
    bad = cols["bad_images"]
    bad = bad.fill_null(pa.scalar([], bad.type)).cast(pa.list_(pa.int16()))
    paths: list[list[str] | None] = []
    first = cat_rows[starts]  # one row per category: the names are the category's
    level_names = [cols[c].take(pa.array(first)).to_pylist() for c in names]
    for i in range(len(cat_ids)):
        row = [col[i] for col in level_names]
        paths.append(row if len(row) == 3 and None not in row else None)
    products = pa.table({
        "product_id": pa.array(pids, pa.int64()),
        "category_id": pa.array(cats, pa.int64()),
        "n_images": cols["n_images"].cast(pa.int16()),
        "bad_images": bad,
        "offset": pa.array(offsets, pa.int64()),
        "length": cols["length"].cast(pa.int32()),
        "id_sorted": pa.array(pids[id_order], pa.int64()),
        "id_order": id_order.astype(np.int32),
        "category_rows": cat_rows.astype(np.int32),
    })
    fingerprint = catalogue_fingerprint(pd.DataFrame({"product_id": pids, "offset": offsets}))
    manifest = artifacts.make_manifest(KIND, {"format": FORMAT},
                                       inputs={"catalogue": fingerprint},
                                       chain={"catalogue": source})
    categories = {"ids": cat_ids.tolist(), "starts": [*starts.tolist(), len(pids)],
                  "paths": paths}
    schema = products.schema.with_metadata({
        b"manifest": json.dumps(manifest).encode(),
        b"categories": json.dumps(categories, ensure_ascii=False).encode()})

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            # One batch: every column is one contiguous buffer, mapped as a numpy array.
            writer.write_batch(products.to_batches(max_chunksize=None)[0]
                               if len(products) else pa.RecordBatch.from_pylist([], schema))

    path = artifacts.atomic_write(folder / SERVING_FILE, write)
    log.info("%s: %s products, %.1f MB, written in %.1f s", path, f"{len(pids):,}",
             path.stat().st_size / 1e6, time.perf_counter() - t0)
    return path


def _stale(path: Path, folder: Path) -> str | None:
    """Why the serving file at ``path`` cannot serve the catalogue in ``folder`` (None: it
    can): missing, another format, or made from another catalogue."""
    if not path.is_file():
        return "not written yet"
    try:
        with pa.memory_map(str(path), "r") as f:
            meta = pa.ipc.open_file(f).schema.metadata or {}
        manifest = json.loads(meta[b"manifest"])
        artifacts.check_manifest(manifest, {"format": FORMAT,
                                            "chain": {"catalogue": _source_of(folder)}},
                                 str(path))
    except artifacts.ArtifactError as exc:
        return str(exc)
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


class ColumnarCatalogue:
    """A `helpers.catalogue.protocol.Catalogue` over a memory-mapped ``catalogue.arrow``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        # Mapped read-only: the pages are the page cache's, shared by every process.
        self._mmap = pa.memory_map(str(self.path), "r")
        reader = pa.ipc.open_file(self._mmap)
        meta = reader.schema.metadata or {}
        self.manifest: dict[str, Any] = json.loads(meta[b"manifest"])
        if self.manifest.get("settings", {}).get("format") != FORMAT:
            raise artifacts.ArtifactError(f"{self.path}: format "
                                          f"{self.manifest.get('settings')}, not {FORMAT}")
        batch = reader.get_batch(0)

        def col(name: str) -> np.ndarray:
            return batch.column(name).to_numpy(zero_copy_only=True)  # a view of the map

        self._pids, self._cats = col("product_id"), col("category_id")
        self._n_images, self._offset, self._length = col("n_images"), col("offset"), \
            col("length")
        bad = batch.column("bad_images")
        self._bad_at = bad.offsets.to_numpy(zero_copy_only=True)
        self._bad = bad.values.to_numpy(zero_copy_only=True)
        self._pid_map = IdMap.from_sorted(col("id_sorted"), col("id_order"))
        self._cat_rows = col("category_rows")
        cats = json.loads(meta[b"categories"])
        self._cat_ids = np.asarray(cats["ids"], np.int64)  # one entry per category: small
        self._cat_starts = np.asarray(cats["starts"], np.int64)
        self._paths: dict[int, CategoryPath | None] = {
            cid: (tuple(p) if p else None) for cid, p in zip(cats["ids"], cats["paths"],
                                                             strict=True)}

    @classmethod
    def open(cls, folder: str | os.PathLike) -> ColumnarCatalogue:
        """The serving catalogue of a catalogue folder, written first if it is missing or
        stale (another format, or a catalogue rebuilt since). CatalogueError for a
        catalogue that is not finished or of an older format; OSError if the folder cannot
        be written."""
        folder = Path(folder)
        if not (folder / scan.META).is_file():
            raise scan.CatalogueError(f"no finished catalogue in {folder} "
                                      "(run build_catalogue first)")
        scan.check_format(folder)
        path = folder / SERVING_FILE
        why = _stale(path, folder)
        if why is not None:
            log.info("%s: %s; writing it", path, why)
            write_serving_file(folder)
        return cls(path)

    # -- protocol --

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["inputs"]["catalogue"])

    def __len__(self) -> int:
        return int(self._pids.shape[0])

    def __repr__(self) -> str:
        return f"ColumnarCatalogue({len(self):,} products, {self.path})"

    def rows(self, product_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Catalogue rows of product ids; UnknownProductError names the missing ones."""
        return rows_of(self._pid_map, product_ids)

    def product(self, product_id: int) -> Product:
        return self._at(self.rows([as_product_id(product_id)]))[0]

    def products(self, product_ids: Sequence[int]) -> list[Product]:
        return self._at(self.rows(product_ids))

    def page(self, offset: int = 0, limit: int = 100) -> list[Product]:
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be >= 0, got {offset}, {limit}")
        return self._at(np.arange(offset, min(len(self), offset + limit)))

    def by_category(self, category_id: int, offset: int = 0,
                    limit: int | None = 100) -> list[Product]:
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError(f"offset and limit must be >= 0, got {offset}, {limit}")
        i = int(np.searchsorted(self._cat_ids, np.int64(category_id)))
        if i == len(self._cat_ids) or self._cat_ids[i] != int(category_id):
            return []
        start, end = int(self._cat_starts[i]) + offset, int(self._cat_starts[i + 1])
        if limit is not None:
            end = min(end, start + limit)
        return self._at(self._cat_rows[start:end])

    def category_path(self, category_id: int) -> CategoryPath | None:
        return self._paths.get(int(category_id))

    def category_ids(self, product_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        shape = np.shape(product_ids)
        return self._cats[self.rows(product_ids)].reshape(shape)

    def ids(self) -> np.ndarray:
        return self._pids  # a read-only view of the map

    # -- extras of this implementation --

    def category_sizes(self) -> pd.Series:
        """Products per category id, largest first (from the category table: no scan)."""
        sizes = pd.Series(np.diff(self._cat_starts), index=self._cat_ids, name="count")
        return sizes.sort_values(ascending=False, kind="stable")

    def _at(self, rows: np.ndarray) -> list[Product]:
        """The products of catalogue rows, in that order: one gather per column."""
        rows = np.asarray(rows, np.int64)
        lo, hi = self._bad_at[rows].tolist(), self._bad_at[rows + 1].tolist()
        out = []
        for pid, cid, n, off, length, a, b in zip(
                self._pids[rows].tolist(), self._cats[rows].tolist(),
                self._n_images[rows].tolist(), self._offset[rows].tolist(),
                self._length[rows].tolist(), lo, hi, strict=True):
            out.append(Product(product_id=pid, category_id=None if cid < 0 else cid,
                               category_path=self._paths.get(cid), n_images=n,
                               bad_images=tuple(self._bad[a:b].tolist()) if b > a else (),
                               offset=off, length=length))
        return out
