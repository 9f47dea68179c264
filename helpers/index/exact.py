"""Exact cosine search with numpy: one matrix product per block of queries.

The reference every approximate index is measured against, and the vectorised cosine
search for small stores (style vectors, a few 10k items): no training, no knobs but memory.

    index = ExactIndex.build(vectors, ids)     # stores unit vectors, float32 [n, d]
    ids, scores = index.search(queries, k=10)  # scores = cosine similarity

`cosine_top_k` is the same search on bare arrays (row numbers instead of product ids);
`streamed_top_k` reads the items block by block instead (a memory-mapped store of any size:
the ground truth of a sample of queries at full scale, without a copy of every vector).
Imports numpy and the index layer (local, protocol, chunks); never models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from helpers.index.categories import Selection
from helpers.index.chunks import CHUNK_ROWS, UnitChunks
from helpers.index.local import LocalIndex
from helpers.index.protocol import Knobs, SearchResult, as_unit_vectors, check_k

DEFAULT_BLOCK_MIB = 64  # memory for one block of query x item scores


def cosine_top_k(
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    *,
    normalized: bool = False,
    block_mib: int = DEFAULT_BLOCK_MIB,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `vectors` [n, d] by cosine similarity to each query [nq, d].

    Returns (rows int64 [nq, k], scores float32 [nq, k]), best first.
    normalized=True: both inputs are already unit-norm float32 (skips a copy).
    """
    if not normalized:
        vectors = as_unit_vectors(vectors)
        queries = as_unit_vectors(queries, vectors.shape[1], "queries")
    k = check_k(k, vectors.shape[0])
    return _top_k_blocks(queries, vectors, k, block_mib)


def streamed_top_k(
    queries: np.ndarray,
    vectors: Any,
    k: int,
    *,
    exclude_rows: np.ndarray | None = None,
    rows: int = CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """`cosine_top_k` over `vectors` read `rows` at a time (ndarray, memmap, sharded store):
    RAM holds one block of items and the running top k, never the whole matrix.

    exclude_rows: one row per query never returned for it (the query's own row: -1 for
    none). Returns (rows int64 [nq, k], scores float32 [nq, k]), best first.
    """
    chunks = UnitChunks(vectors, rows)
    q = as_unit_vectors(queries, chunks.dim, "queries")
    k = check_k(k, chunks.n - (0 if exclude_rows is None else 1))
    best_rows = np.full((q.shape[0], 0), -1, np.int64)
    best = np.full((q.shape[0], 0), -np.inf, np.float32)
    own = None if exclude_rows is None else np.asarray(exclude_rows, np.int64).reshape(-1)
    for start, block in chunks:
        sim = q @ block.T
        if own is not None:
            hit = np.flatnonzero((own >= start) & (own < start + len(block)))
            sim[hit, own[hit] - start] = -np.inf
        top, scores = _top_k(sim, min(k, sim.shape[1]))
        # Merge with the running best: 2k candidates per query, keep k.
        cand = np.concatenate([best_rows, top + start], axis=1)
        cand_s = np.concatenate([best, scores], axis=1)
        keep, best = _top_k(cand_s, min(k, cand.shape[1]))
        best_rows = np.take_along_axis(cand, keep, axis=1)
    return best_rows, best


def _top_k_blocks(
    q: np.ndarray, v: np.ndarray, k: int, block_mib: int
) -> tuple[np.ndarray, np.ndarray]:
    n = v.shape[0]
    # Queries per block so that the [block, n] float32 score matrix fits in block_mib.
    block = max(1, (block_mib << 20) // (4 * n))
    rows = np.empty((q.shape[0], k), np.int64)
    scores = np.empty((q.shape[0], k), np.float32)
    for s in range(0, q.shape[0], block):
        sim = q[s : s + block] @ v.T  # one BLAS call: inner product == cosine on unit rows
        rows[s : s + block], scores[s : s + block] = _top_k(sim, k)
    return rows, scores


def _top_k(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k columns per row of a score matrix, sorted: argpartition O(n), then sort k."""
    if k < sim.shape[1]:
        part = np.argpartition(sim, -k, axis=1)[:, -k:]
    else:
        part = np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
    top = np.take_along_axis(sim, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


class ExactIndex(LocalIndex):
    """Brute-force cosine index: unit vectors in one float32 [n, d] array.

    Knob: block_mib (default 64), memory for one block of scores; results do not depend
    on it. Category filter: masks scores (or searches the matching rows alone when they
    are few). Supports add and remove (each copies the array: O(n d)).
    """

    method = "exact"
    engine_file = "vectors.npy"

    def __init__(self, vectors: np.ndarray, *args: Any, **kwargs: Any) -> None:
        super().__init__(vectors.shape[1], *args, **kwargs)
        self._v = vectors

    @classmethod
    def _build(
        cls,
        chunks: UnitChunks,
        ids: np.ndarray,
        categories: np.ndarray | None,
        source: dict[str, Any],
        *,
        block_mib: int = DEFAULT_BLOCK_MIB,
    ) -> ExactIndex:
        knobs = Knobs({"block_mib": 1}, {"block_mib": block_mib})
        return cls(chunks.all(), ids, categories, knobs, {}, source)

    def _search(self, q: np.ndarray, k: int, sel: Selection | None) -> SearchResult:
        block = self.params["block_mib"]
        if sel is None:
            rows, scores = _top_k_blocks(q, self._v, k, block)
            return SearchResult(self._ids[rows], scores)
        if len(sel) <= len(self) // 4:
            # Few matching rows: copying them is cheaper than scoring all n.
            rows, scores = _top_k_blocks(q, self._v[sel.rows], k, block)
            return SearchResult(self._ids[sel.rows[rows]], scores)
        mask = sel.mask
        out_ids = np.empty((q.shape[0], k), np.int64)
        out_scores = np.empty((q.shape[0], k), np.float32)
        step = max(1, (block << 20) // (4 * len(self)))
        for s in range(0, q.shape[0], step):
            sim = q[s : s + step] @ self._v.T
            sim[:, ~mask] = -np.inf  # below any cosine: never in the top-k (k <= matches)
            rows, out_scores[s : s + step] = _top_k(sim, k)
            out_ids[s : s + step] = self._ids[rows]
        return SearchResult(out_ids, out_scores)

    def _vectors(self, pids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self._v[rows]

    def _add(self, v: np.ndarray, ids: np.ndarray, categories: np.ndarray | None) -> None:
        self._v = np.concatenate([self._v, v])

    def _remove(self, pids: np.ndarray, rows: np.ndarray) -> None:
        self._v = np.delete(self._v, rows, axis=0)

    def _save_engine(self, target: Path) -> None:
        with open(target, "wb") as f:
            np.save(f, self._v)

    @classmethod
    def _load(
        cls, d: Path, meta: dict[str, Any], ids: np.ndarray, categories: np.ndarray | None
    ) -> ExactIndex:
        v = np.load(d / cls.engine_file)
        knobs = Knobs({"block_mib": 1}, meta["params"])
        return cls(v, ids, categories, knobs, meta["build_params"], meta["source"])

    def _engine_version(self) -> str:
        return f"numpy {np.__version__}"
