"""`LocalIndex`: ids, categories, validation and versioned save/load around an in-process
engine (exact, FAISS, Annoy), so that an engine only implements `_build`, `_search`,
`_vectors` and its own file.

Layout of a saved index: see `LocalIndex.save`. Imports numpy, `helpers.core` and the
rest of the index layer (protocol, errors, chunks, manifest); never an engine or a model.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from helpers.core import artifacts
from helpers.core.ids import IdMap, describe
from helpers.index.categories import CategoryRows, Selection
from helpers.index.chunks import GrowableArray, UnitChunks
from helpers.index.errors import (
    CategoryError,
    DimensionError,
    DuplicateIdError,
    EmptyIndexError,
    IndexMismatchError,
    NotSupportedError,
    UnknownIdError,
)
from helpers.index.manifest import (
    META_FILE,
    check_source,
    check_vectors,
    index_manifest,
    index_meta,
    json_safe,
    read_meta,
)
from helpers.index.protocol import (
    Category,
    Knobs,
    SearchResult,
    as_categories,
    as_category_filter,
    as_ids,
    as_unit_vectors,
    check_k,
    pad_result,
    without_items,
)

IDS_FILE = "ids.npy"
CATEGORIES_FILE = "categories.npy"


L = TypeVar("L", bound="LocalIndex")


class LocalIndex(ABC):
    """Ids, categories, validation and save/load around an in-process engine.

    Subclasses implement `_build`, `_search`, `_vectors` and the engine file I/O;
    `_add` / `_remove` raise NotSupportedError where the engine cannot. Row i of `self.ids`
    and `self.categories` is the i-th item added (removals compact); exact and Annoy use it
    as their row number, FAISS stores the product ids themselves.
    """

    method: ClassVar[str]
    engine_file: ClassVar[str | None] = None  # file name inside the saved directory
    mmap_arrays: ClassVar[bool] = False  # load ids/categories.npy with mmap (read-only engines)

    def __init__(
        self,
        dim: int,
        ids: np.ndarray,
        categories: np.ndarray | None,
        params: Knobs,
        build_params: Mapping[str, Any],
        source: Mapping[str, Any] | None,
    ) -> None:
        self._dim = int(dim)
        self._ids = ids
        self._categories = categories
        self._id_buf: GrowableArray | None = None  # made on first add()
        self._cat_buf: GrowableArray | None = None
        self._manifest: dict[str, Any] | None = None  # set by build(source=store) / load
        self.params = params
        self.build_params = dict(build_params)
        self._source = dict(source or {})
        self._id_map: IdMap | None = None  # id -> row, built on first lookup
        self._cat_rows: CategoryRows | None = None  # category -> rows, on first filter

    # -- construction --

    @classmethod
    def build(
        cls: type[L],
        vectors: np.ndarray,
        ids: np.ndarray,
        categories: np.ndarray | None = None,
        *,
        source: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> L:
        """Index `vectors` [n, d] (L2-normalised here, in chunks) under product `ids` [n].

        vectors: an array or a memmap (e.g. VectorStore.vectors): read CHUNK_ROWS rows at a
            time, so building never holds a second full copy of a large store.
        categories: [n] int category ids, or None (then no category filter).
        source: the VectorStore the vectors come from (its manifest is kept, and
            `load_index(path, vectors=store)` refuses an index of other vectors), or plain
            JSON metadata saved in meta.json, checked by `load_index(expect_source=...)`.
        params: the engine's build parameters and initial search knobs.
        """
        chunks = UnitChunks(vectors)
        if chunks.n == 0:
            raise EmptyIndexError(
                f"cannot build an index from zero vectors (shape {(0, chunks.dim)})")
        if chunks.dim == 0:
            raise DimensionError("vectors have dimension 0")
        ids_ = as_ids(ids, chunks.n)
        cats = None if categories is None else as_categories(categories, chunks.n)
        store_manifest = getattr(source, "manifest", None)
        if store_manifest is not None:
            source = getattr(source, "made_by", {})
        src = json_safe(source or {}, "source")
        index = cls._build(chunks, ids_, cats, src, **params)
        index._manifest = index_manifest(index, store_manifest)
        return index

    @classmethod
    @abstractmethod
    def _build(
        cls: type[L],
        chunks: UnitChunks,
        ids: np.ndarray,
        categories: np.ndarray | None,
        source: dict[str, Any],
        **params: Any,
    ) -> L:
        """Build from unit vectors read block by block; consume and check `params`."""

    # -- properties --

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ids(self) -> np.ndarray:
        """Product ids in row order (read-only view)."""
        return _read_only(self._ids)

    @property
    def categories(self) -> np.ndarray | None:
        """Category of each row (read-only view), None if built without categories."""
        return None if self._categories is None else _read_only(self._categories)

    @property
    def source(self) -> dict[str, Any]:
        """The `source` metadata given at build (e.g. which model made the vectors)."""
        return dict(self._source)

    def __repr__(self) -> str:
        args = [f"n={len(self)}", f"dim={self.dim}"]
        args += [f"{k}={v!r}" for k, v in {**self.build_params, **self.params}.items()]
        return f"{type(self).__name__}({', '.join(args)})"

    # -- search --

    def search(self, queries: np.ndarray, k: int, category: Category = None) -> SearchResult:
        """Top-k cosine neighbours of each query [nq, d] (or one query [d] -> nq = 1).

        category: an int or an iterable of ints: only items of those categories are
        returned. Up to k results: slots beyond the matching items are padded (id -1,
        score -inf).
        """
        q = as_unit_vectors(queries, self.dim, "queries")
        k = check_k(k)
        sel = self._select(category)
        available = len(self) if sel is None else len(sel)
        if available == 0:
            return pad_result(_empty(len(q)), k)
        return pad_result(self._search(q, min(k, available), sel), k)

    def search_by_id(self, product_ids: Any, k: int, category: Category = None) -> SearchResult:
        """Top-k neighbours of items already in the index, the items themselves left out.

        product_ids: one id or a sequence of ids -> result rows [len(ids), k], padded as
        `search` pads.
        """
        pids = np.atleast_1d(np.asarray(product_ids))
        if pids.ndim != 1 or (pids.size and not np.issubdtype(pids.dtype, np.integer)):
            raise UnknownIdError(f"product ids must be ints, got {product_ids!r}")
        k = check_k(k)
        rows = self._rows(pids)
        sel = self._select(category)
        available = len(self) if sel is None else len(sel)
        if available == 0 or len(rows) == 0:
            return pad_result(_empty(len(rows)), k)
        q = self._vectors(pids.astype(np.int64), rows)
        # The query item takes one slot when it passes the filter: ask one more, drop it.
        return without_items(self._search(q, min(k + 1, available), sel), pids, k)

    def _select(self, category: Category) -> Selection | None:
        """The rows of the category filter (None = no filter), cached per index version."""
        cats = as_category_filter(category)
        if cats is None:
            return None
        if self._categories is None:
            raise CategoryError("this index was built without categories: cannot filter")
        rows = self._cat_rows
        if rows is None:
            rows = self._cat_rows = CategoryRows(self._categories)
        return rows.select(cats)

    def _rows(self, pids: np.ndarray) -> np.ndarray:
        """Rows of product ids; UnknownIdError names the missing ones."""
        rows = self._ids_map().rows(pids, missing=-1)
        if (rows < 0).any():
            raise UnknownIdError(f"unknown product ids: {describe(pids[rows < 0])}")
        return rows

    def _ids_map(self) -> IdMap:
        if self._id_map is None:
            self._id_map = IdMap(self._ids)
        return self._id_map

    @abstractmethod
    def _search(self, q: np.ndarray, k: int, sel: Selection | None) -> SearchResult:
        """Top-k of unit queries q among the rows of `sel` (all rows if None); k is valid."""

    @abstractmethod
    def _vectors(self, pids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The stored (unit, or engine-approximated) vectors of known items."""

    # -- mutation --

    def add(
        self, vectors: np.ndarray, ids: np.ndarray, categories: np.ndarray | None = None
    ) -> None:
        """Add items; ids must be new. Categories are required iff the index has them."""
        v = as_unit_vectors(vectors, self.dim)
        new_ids = as_ids(ids, v.shape[0])
        # np.isin, not the id map: the map is rebuilt after every add (a sort of all ids),
        # isin's table of small int ranges keeps adding in chunks linear.
        clash = new_ids[np.isin(new_ids, self._ids)]
        if clash.size:
            raise DuplicateIdError(f"ids already in the index: {describe(clash)}")
        if (categories is None) != (self._categories is None):
            has = "has" if self._categories is not None else "has no"
            raise CategoryError(f"this index {has} categories: pass categories= accordingly")
        cats = None if categories is None else as_categories(categories, v.shape[0])
        self._add(v, new_ids, cats)
        # Amortised O(1) appends: adding in chunks stays linear in the items added.
        if self._id_buf is None:
            self._id_buf = GrowableArray(self._ids)
        self._id_buf.extend(new_ids)
        self._ids = self._id_buf.values
        if cats is not None:
            if self._cat_buf is None:
                self._cat_buf = GrowableArray(self._categories)
            self._cat_buf.extend(cats)
            self._categories = self._cat_buf.values
        self._id_map = None
        self._cat_rows = None  # a new version: its category rows are worked out again
        self._manifest = None  # no longer the index of one vector store

    def remove(self, ids: Any) -> None:
        """Remove items by product id (UnknownIdError if one is not in the index)."""
        pids = as_ids(ids, len(np.atleast_1d(np.asarray(ids))), "ids to remove")
        rows = self._rows(pids)
        self._remove(pids, rows)
        keep = np.ones(len(self), bool)
        keep[rows] = False
        self._ids = self._ids[keep]
        self._id_buf = None
        if self._categories is not None:
            self._categories = self._categories[keep]
            self._cat_buf = None
        self._id_map = None
        self._cat_rows = None
        self._manifest = None

    def _add(self, v: np.ndarray, ids: np.ndarray, categories: np.ndarray | None) -> None:
        raise NotSupportedError(f"{self.method} cannot add items: rebuild instead")

    def _remove(self, pids: np.ndarray, rows: np.ndarray) -> None:
        raise NotSupportedError(f"{self.method} cannot remove items: rebuild instead")

    # -- persistence --

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index under directory `path` as a new version; return `path`.

        Layout: `path/current` -> `path/v-<time>/` holding <engine_file> (the engine's own
        format, if any), ids.npy [n] int64, categories.npy [n] int64 (only if built with
        categories), meta.json (see `manifest.index_meta`) and manifest.json (settings + the vector
        store it was built from). The version is written whole, then `current` is swapped:
        a reader never pairs new engine data with old ids, and processes serving the
        previous version keep it (the two newest versions are kept).
        """
        files: dict[str, str | None] = {
            "engine": self.engine_file,
            "ids": IDS_FILE,
            "categories": CATEGORIES_FILE if self._categories is not None else None,
        }
        meta = index_meta(self, files, self._engine_version(), self._engine_meta())

        def write(d: Path) -> None:
            if self.engine_file:
                self._save_engine(d / self.engine_file)
            _save_npy(d / IDS_FILE, self._ids)
            if self._categories is not None:
                _save_npy(d / CATEGORIES_FILE, self._categories)
            artifacts.write_manifest(d, self.manifest)
            artifacts.write_json(d / META_FILE, meta)

        artifacts.publish_version(Path(path), write)
        return Path(path)

    @property
    def manifest(self) -> dict[str, Any]:
        """What built this index: method, build parameters, and the vectors it came from."""
        if self._manifest is None:
            self._manifest = index_manifest(self, None)
        return self._manifest

    @classmethod
    def load(
        cls: type[L],
        path: str | os.PathLike,
        *,
        expect_source: Mapping[str, Any] | None = None,
        vectors: Any = None,
    ) -> L:
        """Load a directory written by `save` (its current version).

        vectors: the VectorStore (or its manifest) the index must have been built from:
            an index of another image size, level, backend or catalogue is refused
            (IndexMismatchError naming the difference).
        expect_source: refuse unless meta.json's source has these values.
        """
        d = artifacts.resolve_version(path)
        meta = read_meta(d)
        if meta["method"] != cls.method:
            raise IndexMismatchError(f"{d} holds a {meta['method']!r} index, not {cls.method!r}")
        check_source(meta.get("source", {}), expect_source, str(d))
        if vectors is not None:
            check_vectors(meta, vectors, str(path))
        mode = "r" if cls.mmap_arrays else None
        ids = np.load(d / IDS_FILE, mmap_mode=mode)
        cats = np.load(d / CATEGORIES_FILE, mmap_mode=mode) if meta["files"]["categories"] else None
        if len(ids) != meta["n"] or (cats is not None and len(cats) != meta["n"]):
            raise IndexMismatchError(f"{d}: meta.json says n={meta['n']}, ids.npy has {len(ids)}")
        index = cls._load(d, meta, ids, cats)
        index._manifest = meta.get("manifest")
        if index.dim != meta["dim"]:
            raise IndexMismatchError(
                f"{d}: engine file has dim {index.dim}, meta.json {meta['dim']}"
            )
        return index

    @classmethod
    @abstractmethod
    def _load(
        cls: type[L], d: Path, meta: dict[str, Any], ids: np.ndarray, categories: np.ndarray | None
    ) -> L:
        """Read the engine file and return the index (meta.json already checked)."""

    def _save_engine(self, target: Path) -> None:
        raise NotImplementedError

    def _engine_version(self) -> str | None:
        return None

    def _engine_meta(self) -> dict[str, Any]:
        """What the engine keeps in meta.json beside its file (`meta["engine"]` at load)."""
        return {}


def _read_only(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def _empty(nq: int) -> SearchResult:
    return SearchResult(np.zeros((nq, 0), np.int64), np.zeros((nq, 0), np.float32))


def _save_npy(path: Path, a: np.ndarray) -> None:
    # np.save appends ".npy" to names without it: write through a file object instead.
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(a))
