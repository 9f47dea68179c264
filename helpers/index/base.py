"""The index protocol: k-nearest-neighbour search by cosine similarity over product vectors.

Cosine throughout. Every index L2-normalises vectors on build, add and search, then ranks by
inner product: on unit vectors, inner product == cosine similarity. (In FAISS terms: the
engine runs METRIC_INNER_PRODUCT on normalised vectors; it is not an L2 distance.)
Scores returned are cosine similarities in [-1, 1], higher = closer.

Every index holds product ids (int64 >= 0) and, optionally, one category id (int64) per item:

    index = build_index("faiss", vectors, ids, categories, factory="HNSW32")
    ids, scores = index.search(queries, k=10)              # [nq, k] each
    ids, scores = index.search(queries, 10, category=7)    # only items of category 7
    ids, scores = index.search_by_id(product_id, 10)       # the item itself is left out
    index.params["efSearch"] = 128                         # runtime knobs, no rebuild
    index.save("artifacts/index/hnsw")                     # a directory, see LocalIndex.save
    index = load_index("artifacts/index/hnsw")

Two layers:
- `VectorIndex`: the protocol every method implements, including engines that keep ids,
  categories and vectors themselves (an Elasticsearch index: product id = document id,
  category = a keyword field used as a kNN filter, `params` = {"num_candidates"}).
- `LocalIndex`: the base class of in-process engines (exact, FAISS, Annoy). It keeps ids and
  categories as numpy arrays next to the engine and does the validation, id lookup,
  category masks and the save/load layout once, so an engine only implements `_search` & co.
"""

from __future__ import annotations

import json
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np

META_FILE = "meta.json"
IDS_FILE = "ids.npy"
CATEGORIES_FILE = "categories.npy"
FORMAT_VERSION = 1
METRIC = "cosine"

Category = int | Iterable[int] | None


# -- errors ---------------------------------------------------------------------------------
# Bad input is a ValueError subclass, so `except ValueError` catches all of them.


class IndexInputError(ValueError):
    """Base class of the errors raised for bad arguments to an index."""


class DimensionError(IndexInputError):
    """Vectors do not have the index dimension."""


class InvalidVectorError(IndexInputError):
    """A vector holds NaN/inf or is all zeros (cosine is undefined)."""


class InvalidKError(IndexInputError):
    """k <= 0, or more neighbours asked than items (in the filtered categories)."""


class UnknownIdError(IndexInputError):
    """A product id is not in the index."""


class DuplicateIdError(IndexInputError):
    """A product id is given twice, or is already in the index."""


class EmptyIndexError(IndexInputError):
    """Building from zero vectors."""


class CategoryError(IndexInputError):
    """Category filter or categories that do not fit the index."""


class TrainingError(IndexInputError):
    """Too few vectors to train the index (e.g. fewer than nlist for IVF)."""


class IndexMismatchError(ValueError):
    """A saved index is not what the caller expects (other method, model, dimension...)."""


class NotSupportedError(NotImplementedError):
    """The engine cannot do this (e.g. remove from Annoy or from a FAISS HNSW graph)."""


# -- results and knobs ----------------------------------------------------------------------


class SearchResult(NamedTuple):
    """Top-k per query, best first. Unpacks: `ids, scores = index.search(q, k)`."""

    ids: np.ndarray  # int64 [nq, k], product ids
    scores: np.ndarray  # float32 [nq, k], cosine similarity, higher = closer


class Knobs(dict):
    """Runtime search knobs (nprobe, efSearch, search_k ...): a dict, read at each search.

    Refuses names the index does not have and values below the knob's minimum, so
    `index.params["nprob"] = 8` fails loudly instead of being ignored.
    """

    def __init__(self, minimum: Mapping[str, int], values: Mapping[str, int]) -> None:
        super().__init__()
        self._minimum = dict(minimum)
        self.update(values)

    def __setitem__(self, name: str, value: int) -> None:
        if name not in self._minimum:
            known = ", ".join(sorted(self._minimum)) or "none"
            raise KeyError(f"unknown search knob {name!r}; this index has: {known}")
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"knob {name!r} must be an int, got {value!r}")
        if value < self._minimum[name]:
            raise ValueError(f"knob {name!r} must be >= {self._minimum[name]}, got {value}")
        super().__setitem__(name, int(value))

    def update(self, *args: Any, **kwargs: Any) -> None:
        # dict.update bypasses __setitem__: route it through the checks.
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, name: str, value: int) -> int:  # type: ignore[override]
        if name not in self:
            self[name] = value
        return self[name]

    def __delitem__(self, name: str) -> None:
        raise TypeError("search knobs cannot be deleted; set them instead")


# -- validation helpers (shared with engines that do not derive from LocalIndex) -------------


def as_unit_vectors(x: Any, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """float32 C-contiguous [n, d] copy of `x`, each row scaled to unit L2 norm.

    A single vector [d] becomes [1, d]. Raises DimensionError / InvalidVectorError.
    The caller's array is never modified.
    """
    v = np.asarray(x)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise DimensionError(f"{what} must be 2-D [n, d], got shape {v.shape}")
    if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
        raise InvalidVectorError(f"{what} must be numeric, got dtype {v.dtype}")
    if dim is not None and v.shape[1] != dim:
        raise DimensionError(f"{what} have dimension {v.shape[1]}, the index has {dim}")
    v = v.astype(np.float32, copy=False)
    # float64 norms: no overflow for large finite entries; NaN/inf propagate into the norm.
    norms = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float64))
    bad = ~np.isfinite(norms)
    if bad.any():
        raise InvalidVectorError(f"{what} contain NaN or inf (rows {_head(np.flatnonzero(bad))})")
    zero = norms == 0
    if zero.any():
        raise InvalidVectorError(
            f"{what} contain all-zero rows {_head(np.flatnonzero(zero))}: cosine is undefined"
        )
    return np.ascontiguousarray(v * (1.0 / norms).astype(np.float32)[:, None])


def as_ids(ids: Any, n: int, what: str = "ids") -> np.ndarray:
    """int64 [n] product ids: integers >= 0 (-1 means 'no result'), no duplicates."""
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a[None]
    if a.ndim != 1 or a.shape[0] != n:
        raise IndexInputError(f"{what} must be 1-D with {n} entries, got shape {a.shape}")
    if n and not np.issubdtype(a.dtype, np.integer):
        raise IndexInputError(f"{what} must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if n and a.min() < 0:
        raise IndexInputError(f"{what} must be >= 0 (-1 marks 'no result'), got {a.min()}")
    uniq, counts = np.unique(a, return_counts=True)
    if uniq.size != a.size:
        raise DuplicateIdError(f"duplicate {what}: {_head(uniq[counts > 1])}")
    return a


def as_categories(categories: Any, n: int) -> np.ndarray:
    """int64 [n] category ids."""
    c = np.asarray(categories)
    if c.ndim != 1 or c.shape[0] != n:
        raise CategoryError(f"categories must be 1-D with {n} entries, got shape {c.shape}")
    if n and not np.issubdtype(c.dtype, np.integer):
        raise CategoryError(f"categories must be integers, got dtype {c.dtype}")
    return c.astype(np.int64, copy=False)


def as_category_filter(category: Category) -> np.ndarray | None:
    """None, or the sorted unique category ids of an int / iterable of ints."""
    if category is None:
        return None
    c = np.atleast_1d(np.asarray(list(category) if _is_iterable(category) else category))
    if c.ndim != 1 or c.size == 0 or not np.issubdtype(c.dtype, np.integer):
        raise CategoryError(
            f"category must be an int or a non-empty iterable of ints: {category!r}"
        )
    return np.unique(c.astype(np.int64))


def check_k(k: Any, available: int, where: str = "") -> int:
    """k as an int in [1, available]; `where` says what was filtered, for the message."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidKError(f"k must be an int, got {k!r}")
    if k <= 0:
        raise InvalidKError(f"k must be >= 1, got {k}")
    if k > available:
        raise InvalidKError(f"k={k} but only {available} items{where} can be returned")
    return int(k)


def _is_iterable(x: Any) -> bool:
    return isinstance(x, Iterable) and not isinstance(x, str | bytes)


def _head(a: np.ndarray, n: int = 5) -> str:
    items = ", ".join(str(v) for v in a[:n].tolist())
    return f"[{items}{', ...' if len(a) > n else ''}] ({len(a)} in all)"


# -- the protocol ---------------------------------------------------------------------------


@runtime_checkable
class VectorIndex(Protocol):
    """What every index method implements. See the module docstring for an example."""

    method: ClassVar[str]  # registry name, written to meta.json
    params: Knobs  # runtime knobs, changeable after build (nprobe, efSearch, search_k ...)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        categories: np.ndarray | None = None,
        *,
        source: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> VectorIndex: ...

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, expect_source: Mapping[str, Any] | None = None
    ) -> VectorIndex: ...

    @property
    def dim(self) -> int: ...

    @property
    def source(self) -> dict[str, Any]: ...

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int, category: Category = None) -> SearchResult: ...

    def search_by_id(self, product_ids: Any, k: int, category: Category = None) -> SearchResult: ...

    def add(
        self, vectors: np.ndarray, ids: np.ndarray, categories: np.ndarray | None = None
    ) -> None: ...

    def remove(self, ids: Any) -> None: ...

    def save(self, path: str | os.PathLike) -> Path: ...


# -- meta.json ------------------------------------------------------------------------------


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The meta.json of a saved index directory."""
    f = Path(path) / META_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a saved index: no {META_FILE}")
    meta = json.loads(f.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{f}: index format {meta.get('format')}, expected {FORMAT_VERSION}"
        )
    if meta.get("metric") != METRIC:
        raise IndexMismatchError(f"{f}: metric {meta.get('metric')!r}, expected {METRIC!r}")
    return meta


def check_source(
    meta_source: Mapping[str, Any], expect: Mapping[str, Any] | None, where: str
) -> None:
    """Refuse an index built from other vectors: every key of `expect` must match."""
    if not expect:
        return
    diff = {
        k: (meta_source.get(k, "<missing>"), v)
        for k, v in expect.items()
        if meta_source.get(k) != v
    }
    if diff:
        lines = "; ".join(
            f"{k}: index has {got!r}, expected {want!r}" for k, (got, want) in diff.items()
        )
        raise IndexMismatchError(f"{where} was built from other vectors: {lines}")


def atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    """write(tmp) then rename over `target`: readers (other processes, mmaps) keep the old
    file's inode, and a crash never leaves a half-written file under the final name."""
    # A fresh name, not mkstemp: the writer creates the file, with the umask's permissions
    # (mkstemp's 0600 would hide the index from a server running as another user).
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_safe(d: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(d)))
    except TypeError as e:
        raise TypeError(f"{what} must be JSON-serialisable: {e}") from None


# -- base class of the in-process engines ---------------------------------------------------

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
        self.params = params
        self.build_params = dict(build_params)
        self._source = dict(source or {})
        self._sorter: np.ndarray | None = None  # argsort of ids, built on first lookup

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
        """Index `vectors` [n, d] (L2-normalised here) under product `ids` [n].

        categories: [n] int category ids, or None (then no category filter).
        source: JSON metadata saved in meta.json (e.g. the vector store's model meta),
            checked by `load_index(path, expect_source=...)`.
        params: the engine's build parameters and initial search knobs.
        """
        v = np.asarray(vectors)
        if v.ndim != 2:
            raise DimensionError(f"vectors must be 2-D [n, d], got shape {v.shape}")
        if v.shape[0] == 0:
            raise EmptyIndexError(f"cannot build an index from zero vectors (shape {v.shape})")
        if v.shape[1] == 0:
            raise DimensionError("vectors have dimension 0")
        v = as_unit_vectors(v)
        n = v.shape[0]
        ids_ = as_ids(ids, n)
        cats = None if categories is None else as_categories(categories, n)
        src = _json_safe(source or {}, "source")
        return cls._build(v, ids_, cats, src, **params)

    @classmethod
    @abstractmethod
    def _build(
        cls: type[L],
        vectors: np.ndarray,
        ids: np.ndarray,
        categories: np.ndarray | None,
        source: dict[str, Any],
        **params: Any,
    ) -> L:
        """Build from validated unit vectors; consume and check `params`."""

    # -- properties --

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ids(self) -> np.ndarray:
        """Product ids in row order (read-only view)."""
        v = self._ids.view()
        v.flags.writeable = False
        return v

    @property
    def categories(self) -> np.ndarray | None:
        """Category of each row (read-only view), None if built without categories."""
        if self._categories is None:
            return None
        v = self._categories.view()
        v.flags.writeable = False
        return v

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
        returned; k results whenever at least k items match (else InvalidKError).
        """
        q = as_unit_vectors(queries, self.dim, "queries")
        mask, where = self._filter(category)
        available = len(self) if mask is None else int(np.count_nonzero(mask))
        k = check_k(k, available, where)
        return self._search(q, k, mask)

    def search_by_id(self, product_ids: Any, k: int, category: Category = None) -> SearchResult:
        """Top-k neighbours of items already in the index, the items themselves left out.

        product_ids: one id or a sequence of ids -> result rows [len(ids), k].
        """
        pids = np.atleast_1d(np.asarray(product_ids))
        if pids.ndim != 1 or (pids.size and not np.issubdtype(pids.dtype, np.integer)):
            raise UnknownIdError(f"product ids must be ints, got {product_ids!r}")
        rows = self._rows(pids)
        mask, where = self._filter(category)
        # The query item takes one slot when it passes the filter: ask one more, drop it.
        self_in = np.ones(len(rows), bool) if mask is None else mask[rows]
        available = (len(self) if mask is None else int(np.count_nonzero(mask))) - int(
            self_in.any()
        )
        k = check_k(k, available, f"{where} (the query item excluded)")
        q = self._vectors(pids.astype(np.int64), rows)
        res = self._search(q, min(k + 1, available + int(self_in.any())), mask)
        ids = np.empty((len(rows), k), np.int64)
        scores = np.empty((len(rows), k), np.float32)
        for i, pid in enumerate(pids.tolist()):
            keep = res.ids[i] != pid
            ids[i], scores[i] = res.ids[i][keep][:k], res.scores[i][keep][:k]
        return SearchResult(ids, scores)

    def _filter(self, category: Category) -> tuple[np.ndarray | None, str]:
        """Row mask of the category filter (None = no filter) and a phrase for messages."""
        cats = as_category_filter(category)
        if cats is None:
            return None, ""
        if self._categories is None:
            raise CategoryError("this index was built without categories: cannot filter")
        mask = np.isin(self._categories, cats)
        return (None, "") if mask.all() else (mask, f" in category {cats.tolist()}")

    def _rows(self, pids: np.ndarray) -> np.ndarray:
        """Rows of product ids; UnknownIdError names the missing ones."""
        if self._sorter is None:
            self._sorter = np.argsort(self._ids, kind="stable")
        sorted_ids = self._ids[self._sorter]
        pos = np.searchsorted(sorted_ids, pids).clip(0, max(len(self) - 1, 0))
        found = (sorted_ids[pos] == pids) if len(self) else np.zeros(len(pids), bool)
        if not found.all():
            raise UnknownIdError(f"unknown product ids: {_head(pids[~found])}")
        return self._sorter[pos]

    @abstractmethod
    def _search(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> SearchResult:
        """Top-k of unit queries q among rows where mask (all rows if None); k is valid."""

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
        clash = new_ids[np.isin(new_ids, self._ids)]
        if clash.size:
            raise DuplicateIdError(f"ids already in the index: {_head(clash)}")
        if (categories is None) != (self._categories is None):
            has = "has" if self._categories is not None else "has no"
            raise CategoryError(f"this index {has} categories: pass categories= accordingly")
        cats = None if categories is None else as_categories(categories, v.shape[0])
        self._add(v, new_ids, cats)
        self._ids = np.concatenate([self._ids, new_ids])
        if cats is not None:
            self._categories = np.concatenate([self._categories, cats])
        self._sorter = None

    def remove(self, ids: Any) -> None:
        """Remove items by product id (UnknownIdError if one is not in the index)."""
        pids = as_ids(ids, len(np.atleast_1d(np.asarray(ids))), "ids to remove")
        rows = self._rows(pids)
        self._remove(pids, rows)
        keep = np.ones(len(self), bool)
        keep[rows] = False
        self._ids = self._ids[keep]
        if self._categories is not None:
            self._categories = self._categories[keep]
        self._sorter = None

    def _add(self, v: np.ndarray, ids: np.ndarray, categories: np.ndarray | None) -> None:
        raise NotSupportedError(f"{self.method} cannot add items: rebuild instead")

    def _remove(self, pids: np.ndarray, rows: np.ndarray) -> None:
        raise NotSupportedError(f"{self.method} cannot remove items: rebuild instead")

    # -- persistence --

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to directory `path` (created if needed) and return it.

        Layout: <engine_file> (the engine's own format, if any), ids.npy [n] int64,
        categories.npy [n] int64 (only if built with categories), and meta.json:
        format, method, metric, dim, n, params (runtime knobs), build_params, source,
        engine_version, files. Each file is written to a temp name then renamed, meta.json
        last: processes serving the old files keep them, and no half-written index loads.
        """
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        files: dict[str, str | None] = {
            "engine": self.engine_file,
            "ids": IDS_FILE,
            "categories": None,
        }
        if self.engine_file:
            atomic_write(d / self.engine_file, self._save_engine)
        atomic_write(d / IDS_FILE, lambda p: _save_npy(p, self._ids))
        if self._categories is not None:
            atomic_write(d / CATEGORIES_FILE, lambda p: _save_npy(p, self._categories))
            files["categories"] = CATEGORIES_FILE
        else:
            (d / CATEGORIES_FILE).unlink(missing_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            "method": self.method,
            "metric": METRIC,
            "dim": self.dim,
            "n": len(self),
            "params": dict(self.params),
            "build_params": self.build_params,
            "source": self._source,
            "engine_version": self._engine_version(),
            "files": files,
        }
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        atomic_write(d / META_FILE, lambda p: p.write_text(text))
        return d

    @classmethod
    def load(
        cls: type[L], path: str | os.PathLike, *, expect_source: Mapping[str, Any] | None = None
    ) -> L:
        """Load a directory written by `save`. expect_source: refuse (IndexMismatchError)
        unless meta.json's source has these values, e.g. {"model": "resnet50"}."""
        d = Path(path)
        meta = read_meta(d)
        if meta["method"] != cls.method:
            raise IndexMismatchError(f"{d} holds a {meta['method']!r} index, not {cls.method!r}")
        check_source(meta.get("source", {}), expect_source, str(d))
        mode = "r" if cls.mmap_arrays else None
        ids = np.load(d / IDS_FILE, mmap_mode=mode)
        cats = np.load(d / CATEGORIES_FILE, mmap_mode=mode) if meta["files"]["categories"] else None
        if len(ids) != meta["n"] or (cats is not None and len(cats) != meta["n"]):
            raise IndexMismatchError(f"{d}: meta.json says n={meta['n']}, ids.npy has {len(ids)}")
        index = cls._load(d, meta, ids, cats)
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


def _save_npy(path: Path, a: np.ndarray) -> None:
    # np.save appends ".npy" to names without it: write through a file object instead.
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(a))
