"""A product's vector from its pictures' vectors: the mean of their unit vectors.

The one definition of a product-level vector, used by the embedding pipeline when it
writes a product-level store (``helpers.vectors.embed``) and by ``06_compare`` when it
derives product vectors from an image-level store (``helpers.evaluate.compare``).
Imports numpy only.
"""

from __future__ import annotations

import numpy as np


def product_means(product_ids: np.ndarray,
                  vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(product ids, float32 mean of each product's L2-normalised picture vectors).

    Products come in the order of their first picture; a product's pictures need not be
    next to each other. The mean is not normalised again: its length says how alike the
    pictures are, and every index normalises what it is given.
    """
    pids = np.asarray(product_ids, np.int64).reshape(-1)
    vecs = np.asarray(vectors)
    if len(pids) != len(vecs):
        raise ValueError(f"{len(pids)} product ids for {len(vecs)} vectors")
    if len(pids) == 0:
        return np.zeros(0, np.int64), np.zeros((0, *vecs.shape[1:]), np.float32)
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    uniq, first, inverse = np.unique(pids, return_index=True, return_inverse=True)
    by_first = np.argsort(first)
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(uniq))
    group = rank[inverse.reshape(-1)]
    # Pictures grouped by product, each group in picture order: the identity when the
    # pictures of a product are already together (the pipeline's batches), so that the
    # sums, in the pictures' own precision, are the same as summing them in place.
    rows = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[rows], np.arange(len(uniq)))
    sums = np.add.reduceat(unit[rows], starts, axis=0)
    counts = np.diff(np.append(starts, len(pids)))
    return uniq[by_first], (sums / counts[:, None]).astype(np.float32)
