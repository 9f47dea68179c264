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

This module holds the protocol and what every engine shares to honour it: `SearchResult`,
`Knobs`, the `VectorIndex` protocol and the input validation (`as_unit_vectors`, `as_ids`,
`check_k` ...). It imports numpy, `helpers.core.ids` and `helpers.index.errors` only.
Elsewhere in the layer:
- `helpers.index.errors`: the exceptions.
- `helpers.index.chunks`: `UnitChunks`, building reads the vectors in chunks: a
  memory-mapped store of any size is normalised block by block into the engine, never
  copied whole into RAM first.
- `helpers.index.local`: `LocalIndex`, the base class of in-process engines (exact, FAISS,
  Annoy). It keeps ids and categories as numpy arrays next to the engine and does the
  validation, id lookup, category filter rows (`helpers.index.categories`, once per index
  version) and the save/load layout once, so an engine only implements `_search` & co.
  Saving is atomic as a set: engine file, ids, categories, meta.json and manifest.json go
  into a new immutable version folder, then `path/current` is swapped to point at it.
- `helpers.index.manifest`: meta.json and the manifest chain (which vectors built an index).
Engines that keep ids, categories and vectors themselves (an Elasticsearch index: product
id = document id, category = a keyword field used as a kNN filter, `params` =
{"num_candidates"}) implement `VectorIndex` directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

from helpers.core.ids import describe
from helpers.index.errors import (
    CategoryError,
    DimensionError,
    DuplicateIdError,
    IndexInputError,
    InvalidKError,
    InvalidVectorError,
)

METRIC = "cosine"
PAD_ID = -1
PAD_SCORE = -np.inf

Category = int | Iterable[int] | None


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
        raise InvalidVectorError(
            f"{what} contain NaN or inf (rows {describe(np.flatnonzero(bad))})")
    zero = norms == 0
    if zero.any():
        raise InvalidVectorError(
            f"{what} contain all-zero rows {describe(np.flatnonzero(zero))}: cosine is undefined"
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
        raise DuplicateIdError(f"duplicate {what}: {describe(uniq[counts > 1])}")
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


def without_items(res: SearchResult, item_ids: np.ndarray, k: int) -> SearchResult:
    """Row i of `res` without id `item_ids[i]`, cut or padded to k columns: by-id search
    asks one result more, and the query item (when found) gives its slot back."""
    nq = len(item_ids)
    ids = np.full((nq, k), PAD_ID, np.int64)
    scores = np.full((nq, k), PAD_SCORE, np.float32)
    for i, pid in enumerate(np.asarray(item_ids).tolist()):
        keep = res.ids[i] != pid
        got_ids, got_scores = res.ids[i][keep][:k], res.scores[i][keep][:k]
        ids[i, : len(got_ids)], scores[i, : len(got_ids)] = got_ids, got_scores
    return SearchResult(ids, scores)


def _is_iterable(x: Any) -> bool:
    return isinstance(x, Iterable) and not isinstance(x, str | bytes)



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
