"""Nearest-neighbour indexes over product vectors, by cosine similarity.

    from helpers.index import build_index, load_index
    index = build_index("faiss", vectors, ids, categories, factory="IVF1024,Flat")
    ids, scores = index.search(queries, k=10, category=1000010653)
    index.save("artifacts/index/ivf")
    index = load_index("artifacts/index/ivf", expect_source={"model": "resnet50"})

Methods (METHODS): "exact" (numpy brute force), "faiss" (any factory string),
"annoy" (mmapped random-projection forest). The protocol is in `helpers.index.base`.

Adding a method: one module here with a class implementing `VectorIndex` (usually by
deriving `LocalIndex`), and one line in METHODS below. Engines are imported on first use,
so `import helpers.index` needs only numpy, and never TensorFlow or model code.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from helpers.index.base import (
    CategoryError,
    DimensionError,
    DuplicateIdError,
    EmptyIndexError,
    IndexInputError,
    IndexMismatchError,
    InvalidKError,
    InvalidVectorError,
    Knobs,
    LocalIndex,
    NotSupportedError,
    SearchResult,
    TrainingError,
    UnknownIdError,
    VectorIndex,
    read_meta,
)


class _Registry(Mapping[str, type]):
    """name -> index class, imported on first access ("module:Class" until then)."""

    def __init__(self, targets: dict[str, str]) -> None:
        self._targets: dict[str, str | type] = dict(targets)

    def __getitem__(self, name: str) -> type:
        if name not in self._targets:
            raise KeyError(f"unknown index method {name!r}; known: {', '.join(self._targets)}")
        target = self._targets[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = self._targets[name] = getattr(importlib.import_module(module), attr)
        return target

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def register(self, name: str, target: str | type) -> None:
        """Add a method: a class, or "package.module:Class" to import lazily."""
        self._targets[name] = target


METHODS = _Registry(
    {
        "exact": "helpers.index.exact:ExactIndex",
        "faiss": "helpers.index.faiss_index:FaissIndex",
        "annoy": "helpers.index.annoy_index:AnnoyIndex",
        "elasticsearch": "helpers.index.elasticsearch_index:ElasticsearchIndex",
    }
)
_CLASSES = {"ExactIndex": "exact", "FaissIndex": "faiss", "AnnoyIndex": "annoy",
            "ElasticsearchIndex": "elasticsearch"}


def build_index(
    method: str,
    vectors: np.ndarray,
    ids: np.ndarray,
    categories: np.ndarray | None = None,
    **params: Any,
) -> VectorIndex:
    """Build an index of `method` ("exact", "faiss", "annoy").

    vectors [n, d] (L2-normalised inside), ids [n] int64 product ids, categories [n] int64
    or None. params: source= (metadata saved in meta.json) and the method's own parameters,
    e.g. factory="HNSW32", efSearch=64 (faiss) or n_trees=50, search_k=-1 (annoy).
    """
    return METHODS[method].build(vectors, ids, categories, **params)


def load_index(
    path: str | os.PathLike,
    *,
    vectors: Any = None,
    expect_source: Mapping[str, Any] | None = None,
) -> VectorIndex:
    """Load a saved index directory, whatever its method (read from meta.json).

    vectors: the VectorStore the index must have been built from (checked through the
        manifest chain: model, backend, image size, level, catalogue); pass it whenever
        you have it.
    expect_source: refuse (IndexMismatchError) an index whose meta.json `source` differs
        on these keys, e.g. {"model": ...}.
    """
    method = read_meta(path)["method"]
    if method not in METHODS:
        raise IndexMismatchError(f"{path}: unknown index method {method!r}")
    kwargs: dict[str, Any] = {"expect_source": expect_source}
    if vectors is not None:
        kwargs["vectors"] = vectors
    return METHODS[method].load(path, **kwargs)


def __getattr__(name: str) -> type:
    # `from helpers.index import FaissIndex` imports FAISS only then.
    if name in _CLASSES:
        return METHODS[_CLASSES[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METHODS",
    "CategoryError",
    "DimensionError",
    "DuplicateIdError",
    "EmptyIndexError",
    "IndexInputError",
    "IndexMismatchError",
    "InvalidKError",
    "InvalidVectorError",
    "Knobs",
    "LocalIndex",
    "NotSupportedError",
    "SearchResult",
    "TrainingError",
    "UnknownIdError",
    "VectorIndex",
    "build_index",
    "load_index",
]
