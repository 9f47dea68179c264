"""Annoy indexes: a forest of random-projection trees, read straight from an mmapped file.

    index = AnnoyIndex.build(vectors, ids, n_trees=50)
    index.params["search_k"] = 20_000    # more nodes inspected: slower, better recall
    index.save("artifacts/index/annoy")
    # the full catalogue (12.4 M x 1280-d = 63 GB, a 24 GB node): reduced, built on disk
    index = AnnoyIndex.build(store.vectors, ids, cats, n_trees=10, pca_dim=128,
                             on_disk_build="artifacts/annoy.build")
    annoy_footprint(12_371_293, 1280, n_trees=10, pca_dim=128).total   # bytes, before building

Metric: Annoy's "angular" distance on unit vectors is sqrt(2 - 2 cos); scores are
converted back to cosine similarity (1 - dist^2 / 2), higher = closer. With `pca_dim`, the
unit vectors are reduced by a centred PCA (helpers.index.pca, fitted on `pca_sample` rows,
applied chunk by chunk) and Annoy ranks by "euclidean" distance: the PCA keeps L2
distances, which on unit vectors follow cosine; scores are then the cosine of the reduced
vectors (1 - dist^2 / 2). The PCA is saved beside the engine file (pca.npz) and applied to
every query.

Big builds: `on_disk_build` is Annoy's own: the items and the forest are written into that
file (mmapped) instead of RAM, so building needs memory for one chunk of vectors and the
tree builder's work lists, not the index; `save` moves the file into the index directory.

Shared memory: `load` mmaps index.ann (MAP_SHARED, read-only), ids.npy and categories.npy
(np.load mmap_mode="r"). Loading is O(1) in memory and time, pages are read on demand, and
every process that loads the same directory (gunicorn workers, notebooks) shares one copy
in the page cache instead of holding its own. tests/test_index_annoy.py checks this in
/proc/<pid>/smaps.

Immutable: an Annoy forest cannot add or remove items after build (NotSupportedError):
rebuild instead. Knobs: search_k (default -1 = Annoy's n_trees * k), n_threads (default 0 =
all cores; Annoy releases the GIL, so a batch of queries runs in threads), and for the
category filter exact_below and max_candidates (see AnnoyIndex).

Imports annoy, numpy and the index layer (local, protocol, errors, chunks, pca); never models.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import annoy
import numpy as np

from helpers.index.categories import Selection
from helpers.index.chunks import UnitChunks
from helpers.index.errors import IndexInputError, IndexMismatchError, NotSupportedError
from helpers.index.local import LocalIndex
from helpers.index.pca import DEFAULT_SAMPLE, Pca
from helpers.index.protocol import PAD_ID, Knobs, SearchResult

logger = logging.getLogger(__name__)

DEFAULT_N_TREES = 50  # Annoy has no default; more trees = better recall, bigger file
FILTER_OVERFETCH = 2  # first fetch for a filter: 2x the expected number of candidates
GROWTH = 4  # then x4 until k matches are found or the candidate budget is spent
PCA_FILE = "pca.npz"
# Search knobs: default and minimum. A filtered search over at most `exact_below` items
# reads their vectors once a call (get_item_vector, ~20 us each at 128-d: 40 ms for 2,000)
# and ranks them exactly. A bigger category over-fetches, inspecting at most
# max(search_k, max_candidates) candidates a query (Annoy's search_k; -1 counts as
# n_trees * k): never less than an unfiltered search, and never a scan of the forest.
KNOBS = {"search_k": (-1, -1), "n_threads": (0, 0), "exact_below": (2_000, 0),
         "max_candidates": (10_000, 1)}

_READ_ONLY = "Annoy indexes are immutable after build: rebuild instead"


class AnnoyIndex(LocalIndex):
    """Annoy forest over unit (or PCA-reduced) vectors, row i = Annoy item i. See the
    module docstring.

    Category filter, Annoy having none. A category of at most `exact_below` items: their
    vectors are read from the forest and ranked exactly (full recall, cost bounded by the
    knob). A bigger one: over-fetching: search asks Annoy for 2 k n / n_matching
    neighbours (search_k scaled alike, as Annoy's default n_trees * k is), keeps the
    matching ones and grows x4 until k are found or the budget, max(search_k,
    max_candidates) candidates inspected, is spent. A query still short of k then gets
    what was found, padded (id -1, score -inf: `SearchResult.found`); `short_results`
    counts such queries and each search that has some logs a warning. A budget of
    n_trees * n or more allows a full scan (exact). Recall within the category is that of
    an unfiltered search for that many neighbours, below FAISS's selector-based filtering.
    """

    method = "annoy"
    engine_file = "index.ann"
    mmap_arrays = True

    def __init__(self, engine: annoy.AnnoyIndex, dim: int, *args: Any, pca: Pca | None = None,
                 build_file: Path | None = None, **kwargs: Any) -> None:
        super().__init__(dim, *args, **kwargs)
        self._engine = engine
        self._n_trees = engine.get_n_trees()
        self._pca = pca
        self._build_file = build_file  # the on-disk build's file, until save moves it
        self.short_results = 0  # queries cut short by max_candidates since build / load

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
        pca_dim: int | None = None,
        pca_sample: int = DEFAULT_SAMPLE,
        on_disk_build: str | os.PathLike | None = None,
        **knobs: int,
    ) -> AnnoyIndex:
        """n_trees: forest size (no Annoy default; 10-100 typical). seed: tree splits
        (Annoy's default is random). n_jobs: build threads, -1 = all cores.
        pca_dim: reduce to this many dimensions (PCA fitted on `pca_sample` rows).
        on_disk_build: a scratch file (on a disk, not tmpfs) Annoy builds in instead of
        RAM; save() moves it into the index. knobs: initial search knobs (KNOBS)."""
        if n_trees < 1:
            raise IndexInputError(f"n_trees must be >= 1, got {n_trees}")
        params = _knobs(knobs)
        pca = None if pca_dim is None else Pca.fit(chunks, pca_dim, pca_sample, seed)
        if pca is not None:
            logger.info("annoy build: PCA %d -> %d fitted on %d rows, keeps %.1f%% of the "
                        "variance", chunks.dim, pca_dim, min(pca_sample, chunks.n), 100 * pca.kept)
        engine = _engine(chunks.dim if pca is None else pca.out_dim, pca)
        engine.set_seed(seed)
        build_file = None
        if on_disk_build is not None:
            build_file = Path(on_disk_build)
            build_file.parent.mkdir(parents=True, exist_ok=True)
            engine.on_disk_build(str(build_file))  # before any add_item; raises OSError
        for start, block in chunks:
            if pca is not None:
                block = pca.apply(block)
            for i, v in enumerate(block, start):
                engine.add_item(i, v)
        logger.info("annoy build: %d items added", chunks.n)  # long builds: progress
        engine.build(n_trees, n_jobs=n_jobs)
        logger.info("annoy build: %d trees built", n_trees)
        build_params: dict[str, Any] = {"n_trees": n_trees, "seed": seed}
        if pca is not None:
            build_params |= {"pca_dim": pca.out_dim, "pca_sample": pca_sample}
        return cls(engine, chunks.dim, ids, categories, params, build_params, source, pca=pca,
                   build_file=build_file)

    @property
    def pca(self) -> Pca | None:
        """The reduction applied to vectors and queries, None when there is none."""
        return self._pca

    # -- search --

    def _search(self, q: np.ndarray, k: int, sel: Selection | None) -> SearchResult:
        n = len(self)
        z = q if self._pca is None else self._pca.apply(q)
        mask = None if sel is None else sel.mask  # made once per category set, then cached
        matching = n if sel is None else len(sel)
        if sel is not None and matching <= self.params["exact_below"]:
            rows, dist2 = self._exact(z, k, sel.rows)
        else:
            rows, dist2 = self._approximate(z, k, mask, matching)
        found = rows >= 0
        ids = np.where(found, np.asarray(self._ids)[np.where(found, rows, 0)], PAD_ID)
        return SearchResult(ids, (1 - dist2 / 2).astype(np.float32))

    def _exact(self, z: np.ndarray, k: int, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and squared distances of the top k of `members`, by reading their vectors."""
        v = np.array([self._engine.get_item_vector(int(r)) for r in members], np.float32)
        # |z - v|^2 as Annoy measures it; angular vectors are unit: 2 - 2 z.v.
        d2 = (z * z).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2 * z @ v.T
        top = np.argpartition(d2, k - 1, axis=1)[:, :k]  # k <= len(members): LocalIndex
        d2 = np.take_along_axis(d2, top, 1)
        order = np.argsort(d2, axis=1, kind="stable")
        return members[np.take_along_axis(top, order, 1)], np.maximum(
            np.take_along_axis(d2, order, 1), 0)

    def _approximate(self, z: np.ndarray, k: int, mask: np.ndarray | None,
                     matching: int) -> tuple[np.ndarray, np.ndarray]:
        n, search_k = len(self), self.params["search_k"]
        base = search_k if search_k > 0 else self._n_trees * k  # Annoy's default for -1
        if mask is None:  # grows only when Annoy returns fewer than k (a tiny search_k)
            first, budget = k, max(base, self._n_trees * n)
        else:
            first = math.ceil(FILTER_OVERFETCH * k * n / matching)
            budget = max(base, self.params["max_candidates"])

        def one(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self._one(v, k, mask, first, base, budget)

        threads = self.params["n_threads"] or len(os.sched_getaffinity(0))
        if threads > 1 and len(z) > 1:
            with ThreadPoolExecutor(threads) as pool:
                got = list(pool.map(one, z))
        else:
            got = [one(v) for v in z]
        rows = np.full((len(z), k), -1, np.int64)
        dist = np.full((len(z), k), np.inf, np.float32)
        for i, (r, d) in enumerate(got):
            rows[i, : len(r)], dist[i, : len(r)] = r, d
        short = sum(len(r) < k for r, _ in got)
        if short:
            self.short_results += short
            logger.warning("annoy: %d of %d queries found fewer than %d of the %d matching "
                           "items within %d candidates (max(search_k, max_candidates)): "
                           "padded with id -1", short, len(z), k, matching, budget)
        return rows, dist * dist

    def _one(self, v: np.ndarray, k: int, mask: np.ndarray | None, first: int, base: int,
             budget: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and distances of v's top k among the rows of `mask`, inspecting at most
        `budget` candidates (Annoy's search_k)."""
        n = len(self)
        last = min(n, budget)  # Annoy returns no more neighbours than it inspects
        fetch = min(first, last)
        while True:
            # n_trees * n candidates visit every leaf of every tree: an exact scan.
            want = self._n_trees * n if fetch >= n else math.ceil(base * fetch / k)
            sk = min(budget, want)
            items, dist = self._engine.get_nns_by_vector(v, fetch, sk, include_distances=True)
            items, dist = np.asarray(items, np.int64), np.asarray(dist, np.float32)
            if mask is not None:
                keep = mask[items]
                items, dist = items[keep], dist[keep]
            if len(items) >= k or fetch >= last:
                return items[:k], dist[:k]
            fetch = min(last, fetch * GROWTH)

    def _vectors(self, pids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        v = np.array([self._engine.get_item_vector(int(r)) for r in rows], np.float32)
        return v if self._pca is None else self._pca.restore(v)  # _search reduces it again

    # -- mutation: none --

    def add(self, vectors: Any, ids: Any, categories: Any = None) -> None:
        raise NotSupportedError(f"{_READ_ONLY} (build_index('annoy', ...) with all items)")

    def remove(self, ids: Any) -> None:
        raise NotSupportedError(f"{_READ_ONLY} (build_index('annoy', ...) without these items)")

    # -- persistence --

    def _save_engine(self, target: Path) -> None:
        if self._pca is not None:
            self._pca.save(target.parent / PCA_FILE)
        if self._build_file is not None:
            # Annoy's save() of an on-disk build writes nothing: the forest is that file.
            # Move it (a rename on one file system: no copy of a 10 GB file), then map the
            # saved one read-only; the scratch path is free for the next build.
            shutil.move(self._build_file, target)
            self._engine.unload()
            self._build_file = None
            self._engine.load(str(target), prefault=False)
            return
        # Annoy writes the file, then reloads itself from it (mmap).
        if not self._engine.save(str(target)):
            raise OSError(f"Annoy could not save {target}")

    @classmethod
    def _load(
        cls, d: Path, meta: dict[str, Any], ids: np.ndarray, categories: np.ndarray | None
    ) -> AnnoyIndex:
        pca = Pca.load(d / PCA_FILE) if meta["build_params"].get("pca_dim") else None
        engine = _engine(meta["dim"] if pca is None else pca.out_dim, pca)
        engine.load(str(d / cls.engine_file), prefault=False)  # mmap, pages read on demand
        if engine.get_n_items() != len(ids):
            raise IndexMismatchError(
                f"{d}: {cls.engine_file} has {engine.get_n_items()} items, ids.npy {len(ids)}"
            )
        return cls(engine, meta["dim"], ids, categories, _knobs(meta["params"]),
                   meta["build_params"], meta["source"], pca=pca)

    def _engine_version(self) -> str:
        return f"annoy {version('annoy')}"


class AnnoyFootprint(NamedTuple):
    """Bytes of an Annoy index file (what a fresh build writes, and what serving maps)."""

    items: int  # one node per item: header + the (reduced) vector
    forest: int  # the trees' split and leaf nodes
    pca: int  # the PCA matrix (pca.npz), 0 without

    @property
    def total(self) -> int:
        return self.items + self.forest + self.pca


# A tree has ~2.7-3.2 n / K nodes (K = d + 2 items fit in a leaf node), measured on
# Gaussian and clustered data from 20k to 1M items: 3 is the estimate.
TREE_NODES_PER_LEAF_CAPACITY = 3.0


def annoy_footprint(n: int, d: int, n_trees: int, pca_dim: int | None = None) -> AnnoyFootprint:
    """Size of an Annoy index of `n` items of dimension `d` (reduced to `pca_dim`).

    Annoy stores every item and every tree node in one node size: a 12-byte header
    (16 with "euclidean", used with a PCA) and the vector, 4 bytes a dimension. Leaf nodes
    hold up to d + 2 item numbers, so a tree costs ~12 bytes an item whatever d: the
    items dominate, and the forest grows with n_trees. Served from a memory-mapped file,
    this is page cache shared by every process, not private memory; an on-disk build
    needs the same bytes of disk and little RAM.
    """
    f = d if pca_dim is None else pca_dim
    node = (12 if pca_dim is None else 16) + 4 * f
    tree_nodes = TREE_NODES_PER_LEAF_CAPACITY * n / (f + 2)
    pca = 0 if pca_dim is None else 4 * (d + d * pca_dim) + 1024  # + npz framing
    return AnnoyFootprint(n * node, int(n_trees * (tree_nodes + 1) * node), pca)


def _engine(dim: int, pca: Pca | None) -> annoy.AnnoyIndex:
    return annoy.AnnoyIndex(dim, "angular" if pca is None else "euclidean")


def _knobs(values: dict[str, int]) -> Knobs:
    unknown = set(values) - set(KNOBS)
    if unknown:
        raise IndexInputError(f"unknown Annoy parameters {sorted(unknown)}; knobs: {list(KNOBS)}")
    defaults = {name: default for name, (default, _) in KNOBS.items()}
    return Knobs({name: low for name, (_, low) in KNOBS.items()}, defaults | values)
