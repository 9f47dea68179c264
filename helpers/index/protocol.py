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
    index = build_index("faiss", store.vectors, ..., source=store)  # a memmap: read in chunks
    index.params["efSearch"] = 128                         # runtime knobs, no rebuild
    index.save("artifacts/index/hnsw")                     # a directory, see LocalIndex.save
    index = load_index("artifacts/index/hnsw")

Up to k results: a search returns k columns; when fewer than k items can be returned (a
category with fewer members, a small index) the missing slots are padded with id -1 and
score -inf (`SearchResult.found` marks the real ones). No count query is needed first,
which a remote engine (Elasticsearch) could not afford per search.

Building reads the vectors in chunks (`UnitChunks`): a memory-mapped store of any size is
normalised block by block into the engine, never copied whole into RAM first.

Saving is atomic as a set: engine file, ids, categories, meta.json and manifest.json go
into a new immutable version folder, then `path/current` is swapped to point at it.

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
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np

from helpers.core import artifacts

META_FILE = "meta.json"
IDS_FILE = "ids.npy"
CATEGORIES_FILE = "categories.npy"
FORMAT_VERSION = 1
METRIC = "cosine"
PAD_ID = -1
PAD_SCORE = -np.inf
CHUNK_ROWS = 65_536  # rows normalised at a time when building (64k x 1280 x 4 B = 320 MB)

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

    ids: np.ndarray  # int64 [nq, k], product ids; -1 pads a missing result
    scores: np.ndarray  # float32 [nq, k], cosine similarity, higher = closer; -inf pads

    @property
    def found(self) -> np.ndarray:
        """bool [nq, k]: True for real results, False for padding."""
        return self.ids >= 0


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


def check_k(k: Any, available: int | None = None, where: str = "") -> int:
    """k as an int >= 1 (and <= available, when given: bare-array searches)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidKError(f"k must be an int, got {k!r}")
    if k <= 0:
        raise InvalidKError(f"k must be >= 1, got {k}")
    if available is not None and k > available:
        raise InvalidKError(f"k={k} but only {available} items{where} can be returned")
    return int(k)


def pad_result(res: SearchResult, k: int) -> SearchResult:
    """Widen a result to k columns with padding (id -1, score -inf)."""
    have = res.ids.shape[1]
    if have >= k:
        return res
    nq = res.ids.shape[0]
    ids = np.full((nq, k), PAD_ID, np.int64)
    scores = np.full((nq, k), PAD_SCORE, np.float32)
    ids[:, :have], scores[:, :have] = res.ids, res.scores
    return SearchResult(ids, scores)


class UnitChunks:
    """A [n, d] array (ndarray or memmap) read as unit-norm float32 blocks of `rows` rows.

    What engines build from: iterate for (start, block) pairs, `sample(m)` for training
    rows, `all()` when the engine keeps every vector anyway. Each block is validated as it
    is read (NaN, zero rows: InvalidVectorError naming the rows).
    """

    def __init__(self, vectors: Any, rows: int = CHUNK_ROWS) -> None:
        v = vectors if hasattr(vectors, "shape") else np.asarray(vectors)
        if len(v.shape) != 2:
            raise DimensionError(f"vectors must be 2-D [n, d], got shape {v.shape}")
        self.v, self.rows = v, max(1, int(rows))
        self.n, self.dim = int(v.shape[0]), int(v.shape[1])

    def block(self, start: int, stop: int) -> np.ndarray:
        try:
            return as_unit_vectors(np.asarray(self.v[start:stop]))
        except InvalidVectorError as e:
            raise InvalidVectorError(f"{e}, in the block from row {start}") from None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.n, self.rows):
            yield start, self.block(start, min(self.n, start + self.rows))

    def sample(self, m: int | None, seed: int = 1234) -> np.ndarray:
        """m rows chosen at random (sorted, so a memmap is read forward); all if m >= n."""
        if m is None or m >= self.n:
            return self.all()
        rows = np.sort(np.random.default_rng(seed).choice(self.n, m, replace=False))
        return as_unit_vectors(np.asarray(self.v[rows]))

    def all(self) -> np.ndarray:
        """Every row, normalised, in one preallocated array (no second full copy)."""
        out = np.empty((self.n, self.dim), np.float32)
        for start, block in self:
            out[start:start + len(block)] = block
        return out


class GrowableArray:
    """An int64 array with amortised O(1) appends (capacity doubles), for ids on add()."""

    def __init__(self, values: np.ndarray) -> None:
        self._buf = np.array(values, np.int64)
        self._n = len(self._buf)

    @property
    def values(self) -> np.ndarray:
        return self._buf[: self._n]

    def extend(self, more: np.ndarray) -> None:
        need = self._n + len(more)
        if need > len(self._buf):
            grown = np.empty(max(need, 2 * len(self._buf), 16), np.int64)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n:need] = more
        self._n = need


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
    """The meta.json of a saved index directory (its current version)."""
    f = artifacts.resolve_version(path) / META_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a saved index: no {META_FILE}")
    meta = artifacts.read_json(f)
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
    diff = artifacts.settings_diff(meta_source, expect or {})
    if diff:
        raise IndexMismatchError(f"{where} was built from other vectors: "
                                 + artifacts.describe_diff(diff, "index has", "expected"))


def check_vectors(meta: Mapping[str, Any], vectors: Any, where: str) -> None:
    """Refuse an index built from another vector store than ``vectors`` (a VectorStore or
    its manifest), naming the settings that differ (image size, level, backend, catalogue)."""
    want = getattr(vectors, "manifest", vectors)
    manifest = meta.get("manifest") or {}
    built_from = manifest.get("inputs", {}).get("vectors")
    if built_from == want.get("id"):
        return
    have = manifest.get("chain", {}).get("vectors", {})
    diff = artifacts.settings_diff(have, want.get("settings", {}))
    cat_have = manifest.get("chain", {}).get("catalogue", {})
    cat_want = want.get("chain", {}).get("catalogue", {})
    diff |= {f"catalogue {k}": v for k, v in artifacts.settings_diff(cat_have, cat_want).items()}
    why = artifacts.describe_diff(diff, "index has", "store has") if diff else \
        f"vectors {built_from!r}, not {want.get('id')!r}"
    raise IndexMismatchError(f"{where} was built from other vectors: {why}")


def atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    """write(tmp) then rename over `target` (see helpers.core.artifacts.atomic_write)."""
    artifacts.atomic_write(target, write)


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
        self._id_buf: GrowableArray | None = None  # made on first add()
        self._cat_buf: GrowableArray | None = None
        self._manifest: dict[str, Any] | None = None  # set by build(source=store) / load
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
        src = _json_safe(source or {}, "source")
        index = cls._build(chunks, ids_, cats, src, **params)
        index._manifest = _index_manifest(index, store_manifest)
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
        returned. Up to k results: slots beyond the matching items are padded (id -1,
        score -inf).
        """
        q = as_unit_vectors(queries, self.dim, "queries")
        k = check_k(k)
        mask, _ = self._filter(category)
        available = len(self) if mask is None else int(np.count_nonzero(mask))
        if available == 0:
            return pad_result(_empty(len(q)), k)
        return pad_result(self._search(q, min(k, available), mask), k)

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
        mask, _ = self._filter(category)
        available = len(self) if mask is None else int(np.count_nonzero(mask))
        ids = np.full((len(rows), k), PAD_ID, np.int64)
        scores = np.full((len(rows), k), PAD_SCORE, np.float32)
        if available == 0 or len(rows) == 0:
            return SearchResult(ids, scores)
        q = self._vectors(pids.astype(np.int64), rows)
        # The query item takes one slot when it passes the filter: ask one more, drop it.
        res = self._search(q, min(k + 1, available), mask)
        for i, pid in enumerate(pids.tolist()):
            keep = res.ids[i] != pid
            got_ids, got_scores = res.ids[i][keep][:k], res.scores[i][keep][:k]
            ids[i, : len(got_ids)], scores[i, : len(got_ids)] = got_ids, got_scores
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
        self._sorter = None
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
        self._sorter = None
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
        categories), meta.json (format, method, metric, dim, n, params, build_params,
        source, engine_version, files, manifest) and manifest.json (settings + the vector
        store it was built from). The version is written whole, then `current` is swapped:
        a reader never pairs new engine data with old ids, and processes serving the
        previous version keep it (the two newest versions are kept).
        """
        files: dict[str, str | None] = {
            "engine": self.engine_file,
            "ids": IDS_FILE,
            "categories": CATEGORIES_FILE if self._categories is not None else None,
        }
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
            "manifest": self.manifest,
        }

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
            self._manifest = _index_manifest(self, None)
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


def _empty(nq: int) -> SearchResult:
    return SearchResult(np.zeros((nq, 0), np.int64), np.zeros((nq, 0), np.float32))


def _index_manifest(index: LocalIndex, store: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = {"method": index.method, "build_params": index.build_params, "dim": index.dim,
                "n": len(index)}
    if store is None:
        return artifacts.make_manifest("index", settings)
    return artifacts.make_manifest(
        "index", settings, inputs={"vectors": store["id"]},
        chain={"vectors": store.get("settings", {}),
               "catalogue": store.get("chain", {}).get("catalogue", {})})


def _save_npy(path: Path, a: np.ndarray) -> None:
    # np.save appends ".npy" to names without it: write through a file object instead.
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(a))
