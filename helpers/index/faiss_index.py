"""FAISS indexes, any index-factory string, searched by cosine similarity.

Vectors are L2-normalised and the index uses METRIC_INNER_PRODUCT, so FAISS "distances"
are cosine similarities, higher = closer (not L2 distances).

    index = FaissIndex.build(vectors, ids, categories, factory="IVF1024,Flat", nprobe=16)
    index.params["nprobe"] = 64          # more lists scanned: slower, better recall

Factory strings (d = dimension, n = items):
- "Flat": exact, the baseline. Supports remove.
- "HNSW32": graph, M=32 links per node; knob efSearch; build param efConstruction.
  No training. No remove in FAISS: rebuild instead.
- "IVF1024,Flat": k-means into nlist=1024 lists (rule of thumb nlist ~ 4 sqrt(n), at least
  39 training vectors per list); knob nprobe = lists scanned per query. Supports remove.
- "IVF1024,PQ32": as IVF, vectors compressed to 32 bytes (d must divide by 32): lossy,
  recall tops out below 1 however large nprobe. Supports remove.
- "IVF1024,PQ32,RFlat": IVF-PQ candidates re-ranked with the exact vectors; knob
  k_factor = candidates per result. "Refine(SQ8)" instead of "RFlat" re-ranks with 8-bit
  codes (4x smaller). No remove.

Ids: IVF indexes store product ids themselves (add_with_ids); other types are wrapped in an
IndexIDMap2. Category filter: an ID selector of the matching ids, passed in the search
parameters, so the engine only ever returns matching items (no post-filtering); it is made
once per set of categories and index version (`helpers.index.categories`), not per query.
When the filter leaves fewer than k results (IVF lists or HNSW beams with too few matches)
the search is retried on those queries with nprobe / efSearch x4, up to a full scan.

Threads: a batch of queries runs on every core (OpenMP; faiss.omp_set_num_threads to
change). On a machine shared with other busy processes set OMP_WAIT_POLICY=PASSIVE before
FAISS loads: spinning OpenMP threads otherwise make short searches up to 10x slower.

Imports faiss, numpy and the index layer (local, protocol, errors, faiss_layers, exact);
never models.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from helpers.index.categories import Selection
from helpers.index.chunks import UnitChunks
from helpers.index.errors import (
    IndexInputError,
    IndexMismatchError,
    NotSupportedError,
    TrainingError,
)
from helpers.index.exact import _top_k
from helpers.index.faiss_layers import find, has, id_selector, layers, search_params
from helpers.index.local import LocalIndex
from helpers.index.protocol import Knobs, SearchResult

DEFAULT_FACTORY = "HNSW32"
# Knob defaults: FAISS's own (nprobe=1, efSearch=16, k_factor=1) give recall@10 well below
# 0.95 on embeddings; these reach about 0.95 on bench/bench_ann.py data at nlist ~ 4 sqrt(n).
DEFAULT_NPROBE = 32
DEFAULT_EF_SEARCH = 64
DEFAULT_K_FACTOR = 4
MIN_POINTS_PER_LIST = 39  # below this FAISS k-means warns; we warn too
TRAIN_CAP = 500_000  # default training sample: k-means and PQ gain nothing from more
TRAIN_BLAS_THRESHOLD = 20  # FAISS's value before 1.15: BLAS for 20 points and more


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    return find(index, faiss.IndexIVF)


def _native_ids(index: faiss.Index) -> bool:
    """IVF (possibly under a PreTransform) stores arbitrary ids itself; others need IDMap2."""
    path = layers(index)
    return isinstance(path[-1], faiss.IndexIVF) and not any(
        isinstance(x, faiss.IndexRefine) for x in path
    )


class FaissIndex(LocalIndex):
    """A FAISS index from a factory string; see the module docstring.

    Knobs (index.params), present only where the index has the layer:
    nprobe (IVF, default 32, FAISS's 1), efSearch (HNSW, default 64, FAISS's 16),
    k_factor (Refine, default 4, FAISS's 1).
    """

    method = "faiss"
    engine_file = "index.faiss"

    def __init__(self, index: faiss.Index, *args: Any, **kwargs: Any) -> None:
        super().__init__(index.d, *args, **kwargs)
        self._index = index
        self._refine = has(index, faiss.IndexRefine)
        # Refine hides ids from the IDMap2 above it: its selector takes rows (= insertion
        # order), as an engine that stores row numbers (faiss_compressed) does.
        self._row_ids = self._refine

    @classmethod
    def _build(
        cls,
        chunks: UnitChunks,
        ids: np.ndarray,
        categories: np.ndarray | None,
        source: dict[str, Any],
        *,
        factory: str = DEFAULT_FACTORY,
        efConstruction: int | None = None,
        train_size: int | None = None,
        seed: int = 1234,
        **knobs: int,
    ) -> FaissIndex:
        """factory: FAISS index-factory string, e.g. "HNSW32", "IVF1024,Flat".
        efConstruction: HNSW build beam (FAISS default 40): higher = better graph, slower.
        train_size: train IVF/PQ on a random sample of this many vectors (default: all
            up to TRAIN_CAP; FAISS k-means itself samples 256 per list).
        seed: for that sample. knobs: initial nprobe / efSearch / k_factor.
        """
        unknown = set(knobs) - {"nprobe", "efSearch", "k_factor"}
        if unknown:
            raise IndexInputError(
                f"unknown faiss parameters {sorted(unknown)}: build parameters are factory, "
                "efConstruction, train_size, seed; knobs nprobe, efSearch, k_factor"
            )
        if re.search(r"IDMap", factory, re.IGNORECASE):
            raise IndexInputError(f"factory {factory!r}: drop 'IDMap', product ids are mapped here")
        d = chunks.dim
        try:
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise IndexInputError(
                f"bad FAISS factory string {factory!r}: {_faiss_msg(e)}"
            ) from None
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexInputError(f"factory {factory!r} does not support inner product")
        hnsw = find(index, faiss.IndexHNSW)
        if efConstruction is not None:
            if hnsw is None:
                raise IndexInputError(f"efConstruction applies to HNSW, not {factory!r}")
            hnsw.hnsw.efConstruction = int(efConstruction)
        for layer in layers(index):
            if isinstance(layer, faiss.IndexIVFPQ | faiss.IndexPQ):
                # The factory turns on polysemous training for PQ (an annealing that takes
                # 5x the k-means time); it only serves Hamming pre-filtering, unused here.
                layer.do_polysemous_training = False
        if not index.is_trained:
            size = train_size if train_size is not None else min(chunks.n, TRAIN_CAP)
            _train(index, chunks.sample(size, seed), factory)
        ivf = _ivf(index)
        if _native_ids(index):
            # Hashtable direct map: reconstruct(product id), which search_by_id needs.
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        else:
            index = faiss.IndexIDMap2(index)
        for start, block in chunks:  # bounded memory: one block of unit vectors at a time
            index.add_with_ids(block, ids[start:start + len(block)])
        build_params = {"factory": factory}
        if hnsw is not None:
            build_params["efConstruction"] = int(hnsw.hnsw.efConstruction)
        if train_size is not None:
            build_params |= {"train_size": int(train_size), "seed": int(seed)}
        out = cls(index, ids, categories, _knobs(index, {}), build_params, source)
        for name, value in knobs.items():
            if name not in out.params:
                raise IndexInputError(
                    f"{name} is not a knob of {factory!r}: it has {list(out.params)}"
                )
            out.params[name] = value
        return out

    # -- search --

    def _search(self, q: np.ndarray, k: int, sel: Selection | None) -> SearchResult:
        scores, ids = self._candidates(q, k, k, sel)
        todo = np.flatnonzero((ids < 0).any(axis=1))
        if todo.size:
            # Still short (an HNSW graph region the beam cannot reach): exact over matches.
            sub = self._ids if sel is None else self._ids[sel.rows]
            rows, s = _top_k(q[todo] @ self._index.reconstruct_batch(sub).T, k)
            scores[todo], ids[todo] = s, sub[rows]
        return SearchResult(ids, scores)

    def _candidates(
        self, q: np.ndarray, fetch: int, need: int, sel: Selection | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The engine's (scores, ids) of the top `fetch` of each query; queries with fewer
        than `need` found (a filter, small IVF lists) are searched again with wider knobs,
        for this call only."""
        knobs = dict(self.params)
        scores, ids = self._run(q, fetch, sel, knobs)
        todo = np.flatnonzero((ids[:, :need] < 0).any(axis=1))
        while todo.size and self._widen(knobs):
            s, i = self._run(q[todo], fetch, sel, knobs)
            scores[todo], ids[todo] = s, i
            todo = todo[(i[:, :need] < 0).any(axis=1)]
        return scores, ids

    def _run(
        self, q: np.ndarray, k: int, sel: Selection | None, knobs: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        selector = None if sel is None else sel.memo("faiss", lambda: self._selector(sel))
        params, keep = search_params(self._index, knobs, selector)
        found = self._index.search(q, k, params=params)
        del keep  # the nested parameters may go only after the search
        return found

    def _selector(self, sel: Selection) -> faiss.IDSelector:
        if self._row_ids:
            return id_selector(sel.rows, len(self))
        return id_selector(self._ids[sel.rows])

    def _widen(self, knobs: dict[str, int]) -> bool:
        """Multiply the knobs by 4 (capped at a full scan); False when nothing can grow."""
        # k_factor stays: the base layer's nprobe / efSearch decide how many candidates exist.
        caps = {"efSearch": max(len(self), 16), "k_factor": knobs.get("k_factor", 1)}
        if "nprobe" in knobs:
            caps["nprobe"] = _ivf(self._index).nlist
        grown = False
        for name, value in knobs.items():
            if value < caps[name]:
                knobs[name] = min(caps[name], value * 4)
                grown = True
        return grown

    def _vectors(self, pids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        try:
            v = self._index.reconstruct_batch(pids)
        except RuntimeError as e:
            raise NotSupportedError(
                f"{self.build_params['factory']} cannot return stored vectors: {_faiss_msg(e)}"
            ) from None
        # Lossy codes (PQ, SQ) reconstruct approximately: renormalise the query.
        return v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)

    # -- mutation --

    def _add(self, v: np.ndarray, ids: np.ndarray, categories: np.ndarray | None) -> None:
        self._index.add_with_ids(v, ids)

    def _remove(self, pids: np.ndarray, rows: np.ndarray) -> None:
        factory = self.build_params["factory"]
        if has(self._index, faiss.IndexHNSW):
            raise NotSupportedError(f"{factory}: FAISS HNSW graphs cannot remove: rebuild instead")
        if self._refine:
            raise NotSupportedError(f"{factory}: FAISS Refine cannot remove: rebuild instead")
        try:
            # The wrapper picks IDSelectorArray, which an IVF direct-map hashtable needs.
            removed = self._index.remove_ids(pids)
        except RuntimeError as e:
            msg = _faiss_msg(e)
            raise NotSupportedError(f"{factory} cannot remove ({msg}): rebuild instead") from None
        if removed != len(pids):  # ids were checked: the engine lost track of some
            raise RuntimeError(f"{factory}: removed {removed} of {len(pids)} ids")

    # -- persistence --

    def _save_engine(self, target: Path) -> None:
        faiss.write_index(self._index, str(target))

    @classmethod
    def _load(
        cls, d: Path, meta: dict[str, Any], ids: np.ndarray, categories: np.ndarray | None
    ) -> FaissIndex:
        index = faiss.read_index(str(d / cls.engine_file))
        if index.ntotal != len(ids):
            raise IndexMismatchError(
                f"{d}: {cls.engine_file} has {index.ntotal} vectors, ids {len(ids)}"
            )
        return cls(
            index,
            ids,
            categories,
            _knobs(index, meta["params"]),
            meta["build_params"],
            meta["source"],
        )

    def _engine_version(self) -> str:
        return f"faiss {faiss.__version__}"


def _knobs(index: faiss.Index, values: dict[str, int]) -> Knobs:
    """The knobs this index has, with defaults, then `values` on top."""
    minimum, defaults = {}, {}
    if _ivf(index) is not None:
        minimum["nprobe"], defaults["nprobe"] = 1, min(DEFAULT_NPROBE, _ivf(index).nlist)
    if has(index, faiss.IndexHNSW):
        minimum["efSearch"], defaults["efSearch"] = 1, DEFAULT_EF_SEARCH
    if has(index, faiss.IndexRefine):
        minimum["k_factor"], defaults["k_factor"] = 1, DEFAULT_K_FACTOR
    return Knobs(minimum, defaults | values)


def _train(index: faiss.Index, v: np.ndarray, factory: str) -> None:
    ivf = _ivf(index)
    if ivf is not None and len(v) < ivf.nlist:
        raise TrainingError(
            f"{factory}: {len(v)} training vectors for nlist={ivf.nlist} lists; need at least "
            f"nlist (ideally {MIN_POINTS_PER_LIST}x). Use nlist ~ 4*sqrt(n) = "
            f"{max(1, int(4 * len(v) ** 0.5))}, or Flat / HNSW"
        )
    if ivf is not None and len(v) < MIN_POINTS_PER_LIST * ivf.nlist:
        warnings.warn(
            f"{factory}: {len(v)} training vectors for {ivf.nlist} lists "
            f"(< {MIN_POINTS_PER_LIST} per list): k-means lists will be poor",
            stacklevel=4,
        )
    # FAISS 1.15 computes distances without BLAS below nq x d = 128,000: k-means on PQ
    # sub-vectors (d = 4 or 8) then takes 10x longer on few threads (faiss#4925, #5109).
    # Training only, and put back after: the process-wide value of searches stays.
    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = TRAIN_BLAS_THRESHOLD
    try:
        index.train(v)
    except RuntimeError as e:
        raise TrainingError(f"{factory}: training failed: {_faiss_msg(e)}") from None
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def _faiss_msg(e: RuntimeError) -> str:
    """The useful last line of a FAISS C++ exception."""
    lines = [s for s in str(e).strip().splitlines() if s.strip()]
    return lines[-1].split(": ", 1)[-1] if lines else repr(e)
