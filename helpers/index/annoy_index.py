"""Annoy indexes: a forest of random-projection trees, read straight from an mmapped file.

    index = AnnoyIndex.build(vectors, ids, n_trees=50)
    index.params["search_k"] = 20_000    # more nodes inspected: slower, better recall
    index.save("artifacts/index/annoy")

Metric: Annoy's "angular" distance on unit vectors is sqrt(2 - 2 cos); scores are
converted back to cosine similarity (1 - dist^2 / 2), higher = closer.

Shared memory: `load` mmaps index.ann (MAP_SHARED, read-only), ids.npy and categories.npy
(np.load mmap_mode="r"). Loading is O(1) in memory and time, pages are read on demand, and
every process that loads the same directory (gunicorn workers, notebooks) shares one copy
in the page cache instead of holding its own. tests/test_index_annoy.py checks this in
/proc/<pid>/smaps.

Immutable: an Annoy forest cannot add or remove items after build (NotSupportedError):
rebuild instead. Knobs: search_k (default -1 = Annoy's n_trees * k), n_threads (default 0 =
all cores; Annoy releases the GIL, so a batch of queries runs in threads).

Imports annoy, numpy and the index layer (local, protocol, errors, chunks); never models.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import annoy
import numpy as np

from helpers.index.categories import Selection
from helpers.index.chunks import UnitChunks
from helpers.index.errors import IndexInputError, IndexMismatchError, NotSupportedError
from helpers.index.local import LocalIndex
from helpers.index.protocol import Knobs, SearchResult

DEFAULT_N_TREES = 50  # Annoy has no default; more trees = better recall, bigger file
FILTER_OVERFETCH = 2  # first fetch for a filter: 2x the expected number of candidates
GROWTH = 4  # then x4 until k matches are found or every item was scanned

_READ_ONLY = "Annoy indexes are immutable after build: rebuild instead"


class AnnoyIndex(LocalIndex):
    """Annoy forest over unit vectors, row i = Annoy item i. See the module docstring.

    Category filter by over-fetching: Annoy has no filter, so search fetches
    2 k n / n_matching candidates (search_k scaled alike), keeps the matching ones and
    grows x4 until k are found, up to scanning every item. Cost: a rare category fetches
    many candidates (up to a full scan for one that is a tiny share of n), and recall
    within the category is that of an unfiltered search for that many neighbours, below
    FAISS's selector-based filtering at the same search budget.
    """

    method = "annoy"
    engine_file = "index.ann"
    mmap_arrays = True

    def __init__(self, engine: annoy.AnnoyIndex, dim: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(dim, *args, **kwargs)
        self._engine = engine
        self._n_trees = engine.get_n_trees()

    @classmethod
    def _build(
        cls,
        chunks: UnitChunks,
        ids: np.ndarray,
        categories: np.ndarray | None,
        source: dict[str, Any],
        *,
        n_trees: int = DEFAULT_N_TREES,
        seed: int = 42,
        n_jobs: int = -1,
        search_k: int = -1,
        n_threads: int = 0,
    ) -> AnnoyIndex:
        """n_trees: forest size (no Annoy default; 10-100 typical). seed: tree splits
        (Annoy's default is random). n_jobs: build threads, -1 = all cores."""
        if n_trees < 1:
            raise IndexInputError(f"n_trees must be >= 1, got {n_trees}")
        d = chunks.dim
        engine = annoy.AnnoyIndex(d, "angular")
        engine.set_seed(seed)
        for start, block in chunks:
            for i, v in enumerate(block, start):
                engine.add_item(i, v)
        engine.build(n_trees, n_jobs=n_jobs)
        knobs = _knobs({"search_k": search_k, "n_threads": n_threads})
        build_params = {"n_trees": n_trees, "seed": seed}
        return cls(engine, d, ids, categories, knobs, build_params, source)

    # -- search --

    def _search(self, q: np.ndarray, k: int, sel: Selection | None) -> SearchResult:
        n = len(self)
        mask = None if sel is None else sel.mask  # made once per category set, then cached
        matching = n if sel is None else len(sel)
        first = k if mask is None else math.ceil(FILTER_OVERFETCH * k * n / matching)

        def one(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self._one(v, k, mask, min(n, first))

        threads = self.params["n_threads"] or len(os.sched_getaffinity(0))
        if threads > 1 and len(q) > 1:
            with ThreadPoolExecutor(threads) as pool:
                rows = list(pool.map(one, q))
        else:
            rows = [one(v) for v in q]
        ids = np.asarray(self._ids)[np.stack([r for r, _ in rows])]
        dist = np.stack([s for _, s in rows])
        return SearchResult(ids, (1 - dist * dist / 2).astype(np.float32))

    def _one(
        self, v: np.ndarray, k: int, mask: np.ndarray | None, fetch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and angular distances of v's top-k, over-fetching until k pass the mask."""
        n, search_k = len(self), self.params["search_k"]
        while True:
            # search_k grows with the fetch, as Annoy's default n_trees * fetch does;
            # at fetch = n, n_trees * n visits every leaf: an exact scan.
            sk = -1 if search_k < 0 else math.ceil(search_k * fetch / k)
            if fetch >= n:
                sk = max(sk, self._n_trees * n)
            items, dist = self._engine.get_nns_by_vector(v, fetch, sk, include_distances=True)
            items, dist = np.asarray(items, np.int64), np.asarray(dist, np.float32)
            if mask is not None:
                keep = mask[items]
                items, dist = items[keep], dist[keep]
            if len(items) >= k or fetch >= n:
                return items[:k], dist[:k]
            fetch = min(n, fetch * GROWTH)

    def _vectors(self, pids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.array([self._engine.get_item_vector(int(r)) for r in rows], np.float32)

    # -- mutation: none --

    def add(self, vectors: Any, ids: Any, categories: Any = None) -> None:
        raise NotSupportedError(f"{_READ_ONLY} (build_index('annoy', ...) with all items)")

    def remove(self, ids: Any) -> None:
        raise NotSupportedError(f"{_READ_ONLY} (build_index('annoy', ...) without these items)")

    # -- persistence --

    def _save_engine(self, target: Path) -> None:
        # Annoy writes the file, then reloads itself from it (mmap).
        if not self._engine.save(str(target)):
            raise OSError(f"Annoy could not save {target}")

    @classmethod
    def _load(
        cls, d: Path, meta: dict[str, Any], ids: np.ndarray, categories: np.ndarray | None
    ) -> AnnoyIndex:
        engine = annoy.AnnoyIndex(meta["dim"], "angular")
        engine.load(str(d / cls.engine_file), prefault=False)  # mmap, pages read on demand
        if engine.get_n_items() != len(ids):
            raise IndexMismatchError(
                f"{d}: {cls.engine_file} has {engine.get_n_items()} items, ids.npy {len(ids)}"
            )
        knobs = _knobs(meta["params"])
        return cls(
            engine, meta["dim"], ids, categories, knobs, meta["build_params"], meta["source"]
        )

    def _engine_version(self) -> str:
        return f"annoy {version('annoy')}"


def _knobs(values: dict[str, int]) -> Knobs:
    return Knobs({"search_k": -1, "n_threads": 0}, {"search_k": -1, "n_threads": 0} | values)
