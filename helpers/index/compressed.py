"""`faiss_compressed`: the full catalogue (12.4 M pictures) on one node, by cosine.

12.4 M x 1280 float32 is 63 GB; a node has 24 GB. The engine keeps short codes only and
proposes candidates; the exact vectors stay in the vector store on disk and rank them:

    unit vector (1280) -> PCA to 256-d, randomly rotated -> IVF lists -> PQ codes (64 B)
      -> k_factor x k candidates -> their rows read from the memory-mapped store
      -> exact cosine on the full vectors -> top k

    index = build_index("faiss_compressed", store.vectors, store.item_ids, cats,
                        source=store, nlist=16384, train_size=250_000)
    index.params["nprobe"] = 256        # knobs nprobe, k_factor: applied per call
    index.save("artifacts/index/full")
    index = load_index("artifacts/index/full", vectors=store)   # or it reopens the store

Build parameters: dim (the reduced dimension, 256), nlist (IVF lists, default 4 sqrt(n)),
pq (bytes a code, default dim / 4; dim must divide by it), opq (OPQ's learned rotation
instead of PCA + a random one: 7x the training time for no better recall on simulated
MobileNetV2 vectors, so off), train_size (rows sampled for training), seed. Measured in
bench/bench_scale.py: recall is bounded by the lists scanned (nprobe), not by the codes.

Memory: a PQ code and an 8-byte id a vector in the inverted lists (72 B with pq=64:
0.9 GB at 12.4 M), the coarse centroids, ids.npy and categories.npy (memory-mapped), and,
from the first filtered search, 4 B a row for the category rows and 2 B a row for each
row's IVF list: a filter probes only the lists holding its members. The engine file is read
with faiss.IO_FLAG_MMAP: the inverted lists stay in the page cache, one copy for every
process serving the same version (gunicorn workers). FAISS's precomputed IVF-PQ table
(nlist x pq x 256 floats a process: 1 GB at nlist 16384, pq 64) is not made.

Exact vectors: built with source=store (a VectorStore or ShardedVectorStore whose
`vectors` are the ones indexed), the index re-ranks from that store: its folder and
content id go into meta.json and manifest.json; `load_index(path, vectors=store)` takes the
store, or the index reopens it from its folder, memory-mapped; a store with another
content id is refused. Built from plain arrays, and for items added later, the index keeps
the unit vectors itself (vectors.npy, memory-mapped at load).

The engine ranks by L2 distance in the reduced space: on unit vectors, the order of
cosine, and a projection keeps L2 distances (a PCA's centring changes inner products). It
holds row numbers, not product ids (rows map to ids through ids.npy). Add: yes (a loaded
index first reads its lists into RAM; add and save are for one writer, not concurrent with
searches, as in FAISS). Remove: no, rebuild.

Imports faiss, numpy, `helpers.vectors` (to reopen the store; nothing else of it) and the
index layer (faiss_index, faiss_layers, chunks, categories, manifest, protocol, errors).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from helpers.core.mmap import RowReader
from helpers.index.categories import Selection
from helpers.index.chunks import GrowableArray, UnitChunks
from helpers.index.errors import IndexInputError, IndexMismatchError, NotSupportedError
from helpers.index.exact import _top_k
from helpers.index.faiss_index import FaissIndex, _faiss_msg, _train
from helpers.index.faiss_layers import find, layers, list_of_ids, search_in_lists
from helpers.index.manifest import check_vectors, index_manifest
from helpers.index.protocol import PAD_ID, Knobs, SearchResult

DEFAULT_DIM = 256
DEFAULT_DSUB = 4  # dimensions a PQ byte codes: pq = dim / 4, 64 bytes at dim 256
DEFAULT_OPQ = False
DEFAULT_NPROBE = 128  # recall@10 0.957 vs exact 1280-d at 1 M, nlist 4096 (64: 0.916)
DEFAULT_K_FACTOR = 10
TRAIN_CAP = 250_000  # default training rows: 1.3 GB of 1280-d float32 in RAM while training
OWN_FILE = "vectors.npy"  # the unit vectors the index keeps itself
RERANK_ROWS = 8192  # candidate rows gathered at a time when re-ranking (42 MB at 1280-d)
# The inverted lists memory-mapped from the engine file; the precomputed table not made.
READ_FLAGS = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE


class CompressedIndex(FaissIndex):
    """PCA (or OPQ) + IVF-PQ candidates re-ranked with the exact vectors; see the module.

    Knobs (index.params): nprobe (IVF lists scanned, default 128), k_factor (candidates
    re-ranked per result, default 10).
    """

    method = "faiss_compressed"
    engine_file = "index.faiss"
    mmap_arrays = True

    def __init__(self, index: faiss.Index, *args: Any, own: np.ndarray,
                 store: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(index, *args, **kwargs)
        self._row_ids = True  # the engine holds row numbers: selectors take rows
        self._own = own  # unit vectors of rows n_base.., kept by the index
        self._own_buf: GrowableArray | None = None  # made on first add()
        self._store_rec = dict(store) if store else None  # path, id, rows of the store
        self._n_base = self._store_rec["rows"] if store else 0
        self._base: Any = None  # the store's vectors (rows < n_base), set by _attach
        self._store_manifest: dict[str, Any] | None = None
        self._lists_of_rows: np.ndarray | None = None  # on the first filtered search

    # -- construction --

    @classmethod
    def build(cls, vectors: Any, ids: Any, categories: Any = None, *,
              source: Any = None, **params: Any) -> CompressedIndex:
        """As `LocalIndex.build`; source=store re-ranks from that store on disk (its
        `vectors` must be the ones given), anything else keeps a copy of the unit vectors."""
        store = source if hasattr(source, "vectors") and hasattr(source, "manifest") else None
        if store is not None:
            vectors = store.vectors if vectors is store else vectors
            _check_store_rows(vectors, store)
        index = super().build(vectors, ids, categories, source=source, **params)
        if store is None:
            index._own = UnitChunks(vectors).all()
        else:
            index._store_rec = {"path": str(Path(store.folder).resolve()), "id": store.id,
                                "rows": len(store)}
            index._n_base = len(store)
            index._attach(store)
        return index

    @classmethod
    def _build(
        cls,
        chunks: UnitChunks,
        ids: np.ndarray,
        categories: np.ndarray | None,
        source: dict[str, Any],
        *,
        dim: int | None = None,
        nlist: int | None = None,
        pq: int | None = None,
        opq: bool = DEFAULT_OPQ,
        train_size: int | None = None,
        seed: int = 1234,
        **knobs: int,
    ) -> CompressedIndex:
        unknown = set(knobs) - {"nprobe", "k_factor"}
        if unknown:
            raise IndexInputError(
                f"unknown faiss_compressed parameters {sorted(unknown)}: build parameters are "
                "dim, nlist, pq, opq, train_size, seed; knobs nprobe, k_factor")
        d, n = chunks.dim, chunks.n
        dim = min(DEFAULT_DIM, d) if dim is None else int(dim)
        nlist = max(1, round(4 * math.sqrt(n))) if nlist is None else int(nlist)
        pq = max(1, dim // DEFAULT_DSUB) if pq is None else int(pq)
        if not 1 <= dim <= d:
            raise IndexInputError(f"dim={dim}: the reduced dimension must be in 1..{d}")
        if pq < 1 or dim % pq:
            raise IndexInputError(f"pq={pq} bytes a code must divide dim={dim}")
        if nlist < 1:
            raise IndexInputError(f"nlist must be >= 1, got {nlist}")
        factory = _factory(d, dim, nlist, pq, bool(opq))
        try:
            index = faiss.index_factory(d, factory, faiss.METRIC_L2)
        except RuntimeError as e:
            raise IndexInputError(f"FAISS refused {factory!r}: {_faiss_msg(e)}") from None
        for layer in layers(index):
            if isinstance(layer, faiss.IndexIVFPQ):
                # Polysemous training (5x the k-means time) serves Hamming filtering, unused.
                layer.do_polysemous_training = False
        size = min(n, TRAIN_CAP if train_size is None else int(train_size))
        _train(index, chunks.sample(size, seed), factory)
        # The same search path as a loaded index: no precomputed table (RAM per process).
        _drop_table(index)
        for start, block in chunks:  # bounded memory: one block of unit vectors at a time
            index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
        build_params = {"factory": factory, "dim": dim, "nlist": nlist, "pq": pq,
                        "opq": bool(opq), "train_size": size, "seed": seed}
        own = np.zeros((0, d), np.float32)
        return cls(index, ids, categories, _knobs(index, knobs), build_params, source, own=own)

    # -- the exact vectors --

    def _attach(self, store: Any) -> None:
        self._base = store.vectors
        self._reader = RowReader(store.vectors)  # re-ranking: scattered rows, not mapped
        self._store_manifest = store.manifest

    @property
    def manifest(self) -> dict[str, Any]:
        """As LocalIndex's, always chained to the store: added items do not change that the
        index needs it."""
        if self._manifest is None:
            self._manifest = index_manifest(self, self._store_manifest)
        return self._manifest

    def _exact(self, rows: np.ndarray) -> np.ndarray:
        """Unit vectors of rows: read from the store (rows < n_base) or the index's own."""
        rows = np.asarray(rows, np.int64)
        base = rows < self._n_base
        if base.all():
            out = self._reader[rows]
        else:
            out = np.empty((len(rows), self.dim), np.float32)
            if base.any():
                out[base] = self._reader[rows[base]]
            out[~base] = self._own_rows()[rows[~base] - self._n_base]
        out /= np.linalg.norm(out, axis=1, keepdims=True)  # checked non-zero at build
        return out

    def _own_rows(self) -> np.ndarray:
        return self._own if self._own_buf is None else self._own_buf.values

    # -- search --

    def _search(self, q: np.ndarray, k: int, sel: Selection | None) -> SearchResult:
        available = len(self) if sel is None else len(sel)
        fetch = min(available, self.params["k_factor"] * k)
        if sel is None:
            _, cand = self._candidates(q, fetch, k, None)
        else:
            cand = self._in_member_lists(q, fetch, k, sel)
        rows, scores = self._rerank(q, cand, k)
        ids = np.where(rows >= 0, np.asarray(self._ids)[np.maximum(rows, 0)], PAD_ID)
        return SearchResult(ids, scores)

    def _in_member_lists(self, q: np.ndarray, fetch: int, need: int,
                         sel: Selection) -> np.ndarray:
        """Candidate rows of a filtered search from the IVF lists that hold members only, the
        nprobe nearest of them; x4 for the queries that find fewer than `need`, up to all.
        (The lists nearest a query may hold no member of a rare category: probing them, then
        widening to every list, cost 0.2-0.7 s a query at 1 M and found few of its best.)"""
        lists = sel.memo("lists", lambda: np.unique(self._row_lists()[sel.rows]))
        lists_sel = sel.memo("lists_sel", lambda: faiss.IDSelectorBatch(lists))
        members = sel.memo("faiss", lambda: self._selector(sel))
        nprobe = self.params["nprobe"]
        _, cand = search_in_lists(self._index, q, fetch, lists, lists_sel, members, nprobe)
        todo = np.flatnonzero((cand[:, :need] < 0).any(axis=1))
        while todo.size and nprobe < len(lists):
            nprobe = min(len(lists), nprobe * 4)
            _, c = search_in_lists(self._index, q[todo], fetch, lists, lists_sel, members,
                                   nprobe)
            cand[todo] = c
            todo = todo[(c[:, :need] < 0).any(axis=1)]
        return cand

    def _row_lists(self) -> np.ndarray:
        """The IVF list of each row, read from the lists once per index version."""
        if self._lists_of_rows is None:
            self._lists_of_rows = list_of_ids(find(self._index, faiss.IndexIVF), len(self))
        return self._lists_of_rows

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best k of each query's candidate rows by exact cosine: (rows, scores), -1 pads."""
        nq, fetch = cand.shape
        rows = np.full((nq, k), PAD_ID, np.int64)
        scores = np.full((nq, k), -np.inf, np.float32)
        step = max(1, RERANK_ROWS // max(1, fetch))
        for s in range(0, nq, step):
            c = cand[s:s + step]
            ok = c >= 0
            uniq, inv = np.unique(c[ok], return_inverse=True)  # sorted: the store read forward
            if not len(uniq):
                continue
            sim = np.full(c.shape, -np.inf, np.float32)
            sim[ok] = (q[s:s + step] @ self._exact(uniq).T)[np.nonzero(ok)[0], inv]
            cols, best = _top_k(sim, min(k, fetch))
            rows[s:s + step, :cols.shape[1]] = np.where(
                np.isfinite(best), np.take_along_axis(c, cols, axis=1), PAD_ID)
            scores[s:s + step, :cols.shape[1]] = best
        return rows, scores

    def _vectors(self, pids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self._exact(rows)

    # -- mutation --

    def _add(self, v: np.ndarray, ids: np.ndarray, categories: np.ndarray | None) -> None:
        start = len(self)
        _lists_in_ram(self._index)
        self._index.add_with_ids(v, np.arange(start, start + len(v), dtype=np.int64))
        self._lists_of_rows = None
        if self._own_buf is None:
            self._own_buf = GrowableArray(self._own, np.float32)
        self._own_buf.extend(v)

    def _remove(self, pids: np.ndarray, rows: np.ndarray) -> None:
        raise NotSupportedError(f"{self.method}: rows are the store's rows, they cannot be "
                                "removed: rebuild instead")

    # -- persistence --

    def _save_engine(self, target: Path) -> None:
        _lists_in_ram(self._index)  # FAISS cannot write memory-mapped lists
        faiss.write_index(self._index, str(target))
        own = self._own_rows()
        if len(own):
            with open(target.parent / OWN_FILE, "wb") as f:
                np.save(f, np.ascontiguousarray(own))

    def _engine_meta(self) -> dict[str, Any]:
        return {"store": self._store_rec, "vectors": OWN_FILE if len(self._own_rows()) else None}

    @classmethod
    def _load(cls, d: Path, meta: dict[str, Any], ids: np.ndarray,
              categories: np.ndarray | None) -> CompressedIndex:
        index = faiss.read_index(str(d / cls.engine_file), READ_FLAGS)
        if index.ntotal != len(ids):
            raise IndexMismatchError(
                f"{d}: {cls.engine_file} has {index.ntotal} vectors, ids {len(ids)}")
        engine = meta.get("engine") or {}
        own = (np.load(d / engine["vectors"], mmap_mode="r") if engine.get("vectors")
               else np.zeros((0, index.d), np.float32))
        store = engine.get("store")
        if (store["rows"] if store else 0) + len(own) != len(ids):
            raise IndexMismatchError(f"{d}: the store's rows and {OWN_FILE} do not add up "
                                     f"to the {len(ids)} items")
        return cls(index, ids, categories, _knobs(index, meta["params"]), meta["build_params"],
                   meta["source"], own=own, store=store)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect_source: Mapping[str, Any] | None = None,
             vectors: Any = None) -> CompressedIndex:
        """As `LocalIndex.load`; vectors: the store the index re-ranks from, else it is
        reopened from the folder recorded at build (IndexMismatchError when it is gone or
        is another store)."""
        index = super().load(path, expect_source=expect_source, vectors=vectors)
        rec = index._store_rec
        if rec is None:
            return index
        store = vectors  # checked against the manifest by LocalIndex.load
        if not hasattr(store, "vectors"):  # none, or only its manifest: reopen it
            store = _open_store(rec, path)
            check_vectors({"manifest": index._manifest}, store, str(path))
        if len(store) < rec["rows"] or store.dim != index.dim:
            raise IndexMismatchError(
                f"{path} re-ranks with {rec['rows']} rows of {index.dim}-d vectors; the store "
                f"{store.folder} has {len(store)} of {store.dim}-d")
        index._attach(store)
        return index

    def _engine_version(self) -> str:
        return f"faiss {faiss.__version__}"


def _factory(d: int, dim: int, nlist: int, pq: int, opq: bool) -> str:
    """The FAISS factory string: the projection, then IVF-PQ."""
    if opq:
        pre = f"OPQ{pq}_{dim},"
    else:
        pre = f"PCAR{dim}," if dim < d else ""
    return f"{pre}IVF{nlist},PQ{pq}"


def _knobs(index: faiss.Index, values: Mapping[str, int]) -> Knobs:
    nlist = find(index, faiss.IndexIVF).nlist
    defaults = {"nprobe": min(DEFAULT_NPROBE, nlist), "k_factor": DEFAULT_K_FACTOR}
    return Knobs({"nprobe": 1, "k_factor": 1}, defaults | dict(values))


def _drop_table(index: faiss.Index) -> None:
    for layer in layers(index):
        if isinstance(layer, faiss.IndexIVFPQ):
            layer.use_precomputed_table = -1
            layer.precomputed_table.resize(0)


def _lists_in_ram(index: faiss.Index) -> None:
    """Replace memory-mapped inverted lists (read-only) by a copy in RAM, in place."""
    ivf = find(index, faiss.IndexIVF)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if isinstance(lists, faiss.OnDiskInvertedLists):
        ram = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        lists.copy_subset_to(ram, faiss.InvertedLists.SUBSET_TYPE_ID_RANGE, 0, 2**62)
        ivf.replace_invlists(ram, True)
        ram.this.disown()  # the IVF owns it now


def _check_store_rows(vectors: Any, store: Any) -> None:
    """The vectors indexed must be the store's: its rows are what re-ranking reads."""
    if vectors is store.vectors:
        return
    have, want = tuple(np.shape(vectors)), tuple(store.vectors.shape)
    if have != want:
        raise IndexInputError(f"vectors {have} are not the store's {want}: pass store.vectors "
                              "with source=store (re-ranking reads the store's rows)")
    probe = sorted({0, want[0] // 2, want[0] - 1})
    if not np.array_equal(np.asarray(vectors[probe]), np.asarray(store.vectors[probe])):
        raise IndexInputError("vectors differ from the store's rows: pass store.vectors with "
                              "source=store (re-ranking reads the store's rows)")


def _open_store(rec: Mapping[str, Any], where: str | os.PathLike) -> Any:
    from helpers.vectors import open_store  # the reader of both store layouts

    try:
        return open_store(rec["path"])
    except (OSError, ValueError) as e:
        raise IndexMismatchError(
            f"{where} re-ranks with the vector store {rec['path']} (id {rec['id']}), which "
            f"cannot be opened ({e}): pass load_index(path, vectors=store)") from None
