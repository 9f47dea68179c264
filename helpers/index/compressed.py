"""A compressed FAISS index for the full catalogue (12.4 M pictures) on one node.

12.4 M x 1280 float32 is 63 GB; a node has 24 GB. So the vectors are reduced and
compressed, trained on a sample and added chunk by chunk straight from the memory-mapped
(sharded) store, never loaded whole:

    unit vector (1280) -> PCA (256) -> IVF lists -> PQ codes (32 B) -> candidates
                                                 -> re-ranked with SQ8 codes (256 B)

    index = compressed_index(nlist=16384)
    train(index, store.vectors, train_size=500_000)
    add_chunks(index, store.vectors, store.item_ids)
    scores, ids = search(index, queries, k=10, nprobe=32, k_factor=8)  # per call: thread-safe

About 304 bytes a vector (PQ code 32 + its IVF id 8 + SQ8 refine code 256 + id 8), so
12.4 M vectors take 3.5 GiB; ``dim=128`` gives 176 bytes (2.0 GiB) for some recall.
The metric is L2 on unit vectors: the same order as cosine similarity in 1280-d, and
the PCA keeps L2 distances (unlike inner products, which its centring changes).
``bench/bench_scale.py`` measures recall@10 against exact search on the same reduced
vectors and on the full 1280-d ones.

Imports faiss, numpy and the index layer's `chunks` (row blocks) and `faiss_layers` (the
layer walker); never models.
"""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np

from helpers.index.chunks import row_blocks
from helpers.index.faiss_layers import find, layers, search_params

logger = logging.getLogger(__name__)


def compressed_index(d: int = 1280, dim: int = 256, nlist: int = 4096, pq: int = 32,
                     refine: str = "SQ8") -> faiss.Index:
    """IDMap(PCA ``d``->``dim``, IVF ``nlist`` + PQ ``pq`` bytes, refined by ``refine``
    codes in the reduced space). Train it, then add."""
    pca = faiss.PCAMatrix(d, dim)
    inner = faiss.index_factory(dim, f"IVF{nlist},PQ{pq},Refine({refine})", faiss.METRIC_L2)
    for layer in layers(inner):
        if isinstance(layer, faiss.IndexIVFPQ):
            layer.do_polysemous_training = False  # Hamming pre-filter, unused: 5x training
    return faiss.IndexIDMap(faiss.IndexPreTransform(pca, inner))


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, as float32 (a copy: stores are read-only memmaps)."""
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def train(index: faiss.Index, vectors: Any, train_size: int = 500_000, seed: int = 0,
          limit: int | None = None) -> None:
    """Train PCA, IVF centroids and PQ codebooks on a random sample of rows (of the
    first ``limit``); only the sample is read into RAM."""
    n = len(vectors) if limit is None else min(limit, len(vectors))
    rows = np.sort(np.random.default_rng(seed).choice(n, min(train_size, n), replace=False))
    index.train(unit(vectors[rows]))


def add_chunks(index: faiss.Index, vectors: Any, ids: np.ndarray, rows: int = 65536,
               limit: int | None = None) -> None:
    """Add ``vectors`` (a memmap, a ShardedMatrix) ``rows`` at a time: RAM holds one
    chunk (rows x 1280 x 4 bytes) beside the index, whatever the store's size."""
    ids = np.asarray(ids, np.int64)
    n = len(vectors) if limit is None else min(limit, len(vectors))
    for start, block in row_blocks(vectors, rows):
        if start >= n:
            break
        block = block[: n - start]
        index.add_with_ids(unit(block), ids[start : start + len(block)])
        logger.debug("added %d / %d", start + len(block), n)


def set_knobs(index: faiss.Index, nprobe: int | None = None,
              k_factor: int | None = None) -> None:
    """Set the index's own defaults (not thread-safe: for one owner, e.g. before saving);
    `search` takes per-call values instead."""
    for layer in layers(index):
        if nprobe is not None and isinstance(layer, faiss.IndexIVF):
            layer.nprobe = nprobe
        if k_factor is not None and isinstance(layer, faiss.IndexRefine):
            layer.k_factor = k_factor


def search(index: faiss.Index, queries: np.ndarray, k: int = 10, nprobe: int = 32,
           k_factor: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(squared L2 distances between unit vectors, ids); cosine = 1 - distance / 2.

    nprobe and k_factor hold for this call only: the index is shared between threads (an
    app's workers), so setting them on it would let one call search with another's."""
    params, keep_alive = search_params(index, {"nprobe": nprobe, "k_factor": k_factor})
    distances, ids = index.search(unit(queries), k, params=params)
    del keep_alive  # the nested parameters may go only after the search
    return distances, ids


def reduce(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """The reduced vectors the index sees (unit, then PCA): for exact ground truth."""
    pre = find(index, faiss.IndexPreTransform)
    x = unit(x)
    for i in range(pre.chain.size()):
        x = faiss.downcast_VectorTransform(pre.chain.at(i)).apply(x)
    return x


def nbytes(index: faiss.Index) -> int:
    """Bytes of the index as stored (what ``read_index`` allocates)."""
    return int(faiss.serialize_index(index).nbytes)


def list_imbalance(index: faiss.Index) -> float:
    """FAISS's IVF imbalance factor (1 = even lists; search cost grows with it)."""
    ivf = find(index, faiss.IndexIVF)
    return float(ivf.invlists.imbalance_factor())
