"""Nearest-neighbour indexes over product vectors, by cosine similarity.

    from helpers.index import build_index, load_index
    index = build_index("faiss", vectors, ids, categories, factory="IVF1024,Flat")
    ids, scores = index.search(queries, k=10, category=1000010653)
    index.save("artifacts/index/ivf")
    index = load_index("artifacts/index/ivf", expect_source={"model": "resnet50"})

Methods (METHODS): "exact" (numpy brute force), "faiss" (any factory string),
"annoy" (mmapped random-projection forest), "elasticsearch" (a node's dense_vector kNN),
"faiss_compressed" (the full catalogue on one node: PCA + IVF-PQ candidates re-ranked
with the exact vectors read from the memory-mapped vector store it was built from):

    index = build_index("faiss_compressed", store.vectors, store.item_ids, cats,
                        source=store, nlist=16384, train_size=250_000)
    index = load_index(path, vectors=store)   # or load_index(path): reopens the store

Layout: `protocol` (SearchResult, Knobs, VectorIndex, input validation), `errors`,
`chunks` (reading vectors block by block), `pca` (a reduction fitted on a sample and
saved with the index), `local` (LocalIndex: ids, categories, versioned
save/load), `categories` (a category filter's rows, once per index version), `manifest`
(meta.json, which vectors built an index), `faiss_layers` (walking nested FAISS indexes,
ID selectors), `hits` (the one `Hit`: result rows as hits); engines `exact`,
`faiss_index`, `annoy_index`, `elasticsearch_index` (+ `elasticsearch_node`,
`elasticsearch_bulk`), and `compressed` (faiss_compressed). Indexes never import models;
`compressed` alone reads the vector store's files (`helpers.vectors`, the layer below).

Adding a method: one module here with a class implementing `VectorIndex` (usually by
deriving `LocalIndex`), and one line in METHODS below. Engines are imported on first use,
so `import helpers.index` needs only numpy, and never TensorFlow or model code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from helpers.core.registry import Registry
from helpers.index.errors import (
    CategoryError,
    DimensionError,
    DuplicateIdError,
    EmptyIndexError,
    IndexInputError,
    IndexMismatchError,
    InvalidKError,
    InvalidVectorError,
    NotSupportedError,
    TrainingError,
    UnknownIdError,
)
from helpers.index.local import LocalIndex
from helpers.index.manifest import read_meta
from helpers.index.protocol import Knobs, SearchResult, VectorIndex

METHODS = Registry(
    "index method",
    {
        "exact": "helpers.index.exact:ExactIndex",
        "faiss": "helpers.index.faiss_index:FaissIndex",
        "annoy": "helpers.index.annoy_index:AnnoyIndex",
        "elasticsearch": "helpers.index.elasticsearch_index:ElasticsearchIndex",
        "faiss_compressed": "helpers.index.compressed:CompressedIndex",
    }
)
_CLASSES = {"ExactIndex": "exact", "FaissIndex": "faiss", "AnnoyIndex": "annoy",
            "ElasticsearchIndex": "elasticsearch", "CompressedIndex": "faiss_compressed"}


def build_index(
    method: str,
    vectors: np.ndarray,
    ids: np.ndarray,
    categories: np.ndarray | None = None,
    **params: Any,
) -> VectorIndex:
    """Build an index of `method` (a name of METHODS).

    vectors [n, d] (L2-normalised inside), ids [n] int64 product ids, categories [n] int64
    or None. params: source= (the VectorStore of the vectors, or metadata saved in
    meta.json) and the method's own parameters, e.g. factory="HNSW32", efSearch=64 (faiss),
    n_trees=50, search_k=-1, pca_dim=128 (annoy) or nlist=4096, pq=64, nprobe=128
    (faiss_compressed).
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
