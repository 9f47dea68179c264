"""The exact answers that recall is judged against, for a sample of queries, at any size.

    query_ids = query_sample(ids, 1000, seed=0)           # all ids when there are fewer
    truth = exact_truth(store.vectors, ids, query_ids, k=10)
    recall_at_k(index.search(queries, 11).ids, truth, 10, query_ids=query_ids)
    table = knob_sweep(index, "nprobe", [8, 32], queries, truth, 10, query_ids=query_ids)

The items are read block by block from the (memory-mapped) store, so the truth of 1,000
queries over 12.4 M vectors needs one block in RAM, not a Flat copy of everything nor a
search of every item (N^2). Each query is an item of the store and is left out of its own
answers, as every recall of the notebooks leaves it out. Imports numpy, helpers.core.ids,
helpers.evaluate.metrics and helpers.index.exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from helpers.core.ids import IdMap
from helpers.evaluate.metrics import TIE_SLACK
from helpers.index.exact import streamed_top_k
from helpers.index.protocol import SearchResult


def query_sample(ids: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` ids drawn without replacement (seeded), in store order; every id when fewer."""
    ids = np.asarray(ids, np.int64)
    if n >= len(ids):
        return ids.copy()
    rows = np.sort(np.random.default_rng(seed).choice(len(ids), n, replace=False))
    return ids[rows]


def query_vectors(vectors: Any, ids: Any, query_ids: Any) -> np.ndarray:
    """The stored vectors of ``query_ids`` (rows read in order: a memmap is read forward)."""
    rows = IdMap(ids).rows(np.asarray(query_ids, np.int64))
    order = np.argsort(rows)
    out = np.empty((len(rows), vectors.shape[1]), np.float32)
    out[order] = np.asarray(vectors[rows[order]], np.float32)
    return out


def exact_truth(vectors: Any, ids: Any, query_ids: Any, k: int,
                rows: int | None = None) -> SearchResult:
    """Exact cosine top ``k`` of each query id among all items but itself, and TIE_SLACK
    more (as many as there are), so that ``recall_at_k`` sees ties across the k-th place."""
    ids = np.asarray(ids, np.int64)
    qrows = IdMap(ids).rows(np.asarray(query_ids, np.int64))
    kw = {} if rows is None else {"rows": rows}
    deep = max(1, min(k + TIE_SLACK, len(ids) - 1))
    top, scores = streamed_top_k(query_vectors(vectors, ids, query_ids), vectors, deep,
                                 exclude_rows=qrows, **kw)
    return SearchResult(ids[top], scores)
