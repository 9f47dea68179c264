"""faiss_compressed: IVF-PQ candidates re-ranked with the exact vectors of the vector store
on disk. The protocol as other engines honour it, the store it re-ranks from (recorded,
reopened, refused when another), memory-mapped loading, per-call knobs across threads, and
recall against exact cosine with and without the re-rank."""

from __future__ import annotations

import copy
import json
import shutil
import threading
import tracemalloc
import warnings
from pathlib import Path

import faiss
import numpy as np
import pytest

from helpers.core.artifacts import resolve_version
from helpers.core.mmap import RowReader
from helpers.evaluate.metrics import recall_at_k
from helpers.index import (
    DuplicateIdError,
    IndexInputError,
    IndexMismatchError,
    Knobs,
    NotSupportedError,
    TrainingError,
    VectorIndex,
    build_index,
    load_index,
)
from helpers.index import chunks as index_chunks
from helpers.index.faiss_layers import find
from helpers.vectors.sharded import SHARDS, ShardedVectorStore, write_manifest
from helpers.vectors.store import VectorStore, VectorWriter

N, D, NQ, K = 20_000, 64, 100, 10
RARE = 999  # 5 items, 0.025 % of the index
PARAMS = {"dim": 32, "pq": 8, "nlist": 64, "opq": False, "nprobe": 8, "k_factor": 10}
MADE_BY = {"model": "test-net", "level": "product", "image_size": 32}


def _clustered(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like vectors: 200 clusters, spread decaying over the dimensions (as a
    network's spectrum does); categories follow the clusters, loosely."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, D)) * 1.5
    label = rng.integers(0, 200, n)
    spread = 0.93 ** np.arange(D)
    x = (centres[label] + rng.standard_normal((n, D)) * spread).astype(np.float32)
    return x, label % 20


def _write_store(folder: Path, x: np.ndarray, made_by: dict = MADE_BY) -> VectorStore:
    w = VectorWriter(folder, x.shape[1], made_by)
    w.append(x, np.arange(len(x)) * 3 + 7, np.full(len(x), -1), len(x))
    return w.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    x, cats = _clustered(N + NQ)
    cats[[3, 500, 7000, 12000, 19000]] = RARE
    store = _write_store(tmp_path_factory.mktemp("store"), x[:N])
    return {"x": x[:N], "q": x[N:], "cats": cats[:N], "q_cats": cats[N:], "store": store,
            "ids": store.item_ids}


@pytest.fixture(scope="module")
def index(data) -> VectorIndex:
    return build_index("faiss_compressed", data["store"].vectors, data["ids"], data["cats"],
                       source=data["store"], **PARAMS)


@pytest.fixture(scope="module")
def exact(data) -> VectorIndex:
    return build_index("exact", data["x"], data["ids"], data["cats"])


@pytest.fixture(scope="module")
def saved(index, tmp_path_factory) -> Path:
    return index.save(tmp_path_factory.mktemp("index") / "full")


# -- the protocol ---------------------------------------------------------------------------


def test_protocol_surface(index, data):
    assert isinstance(index, VectorIndex) and index.method == "faiss_compressed"
    assert len(index) == N and index.dim == D
    assert dict(index.params) == {"nprobe": 8, "k_factor": 10}
    with pytest.raises(KeyError, match="unknown search knob"):
        index.params["efSearch"] = 8
    res = index.search(data["q"], K)
    assert res.ids.shape == (NQ, K) and res.scores.dtype == np.float32
    assert np.isin(res.ids, data["ids"]).all()  # product ids, not the engine's row numbers
    assert (np.diff(res.scores, axis=1) <= 0).all()  # best first
    # Scores are exact cosine similarities of the 64-d vectors, not PQ estimates.
    rows = data["store"].rows(res.ids[0])
    v = data["x"][rows] / np.linalg.norm(data["x"][rows], axis=1, keepdims=True)
    q = data["q"][0] / np.linalg.norm(data["q"][0])
    np.testing.assert_allclose(res.scores[0], v @ q, atol=1e-5)


def test_category_filter_returns_only_members(index, exact, data):
    members = data["ids"][data["cats"] == 4]
    res = index.search(data["q"], K, category=4)
    assert np.isin(res.ids, members).all()
    # Queries of that category (a category's items lie in its own IVF lists, which the
    # queries of others do not probe first: they get members, further down the ranks).
    mine = data["q_cats"] == 4
    want = exact.search(data["q"][mine], K, category=4).ids
    assert recall_at_k(res.ids[mine], want, K) >= 0.9
    # A rare category (5 items, far from most queries): all of them, exactly, then padding;
    # only the IVF lists holding them are scanned, not those nearest the queries.
    stats = faiss.cvar.indexIVF_stats
    stats.reset()
    rare = index.search(data["q"], K, category=RARE)
    assert 0 < stats.nlist <= 5 * NQ and stats.ndis == 5 * NQ
    assert (np.sort(rare.ids[:, :5], axis=1) == np.sort(data["ids"][data["cats"] == RARE])).all()
    assert (rare.ids[:, 5:] == -1).all() and (rare.scores[:, 5:] == -np.inf).all()
    np.testing.assert_array_equal(rare.ids, exact.search(data["q"], K, category=RARE).ids)
    assert index.params["nprobe"] == 8  # widened for those queries only, for that call
    both = index.search(data["q"][:5], K, category=[4, RARE])
    assert np.isin(both.ids, data["ids"][np.isin(data["cats"], [4, RARE])]).all()


def test_search_by_id_leaves_the_item_out(index, exact, data):
    pids = data["ids"][:20]
    res = index.search_by_id(pids, K)
    assert res.ids.shape == (20, K) and not (res.ids == pids[:, None]).any()
    assert recall_at_k(res.ids, exact.search_by_id(pids, K).ids, K) >= 0.9
    own = index.search_by_id(data["ids"][3], K, category=RARE)  # item 3 is one of the five
    assert own.found.sum() == 4 and data["ids"][3] not in own.ids


def test_add_then_search_finds_it(data):
    grown = build_index("faiss_compressed", data["store"].vectors, data["ids"], data["cats"],
                        source=data["store"], **PARAMS)
    new = _clustered(3, seed=7)[0]
    grown.search(new, K, category=RARE)  # category rows cached before the add...
    grown.add(new, [1, 2, 4], [RARE] * 3)
    assert len(grown) == N + 3
    res = grown.search(new, 1)
    assert res.ids[:, 0].tolist() == [1, 2, 4]
    np.testing.assert_allclose(res.scores[:, 0], 1, atol=1e-5)
    # ... and worked out again for the new version: the added items are members.
    assert np.isin([1, 2, 4], grown.search(new, 8, category=RARE).ids).all()
    with pytest.raises(DuplicateIdError):
        grown.add(new[:1], [1], [RARE])
    with pytest.raises(NotSupportedError, match="rebuild instead"):
        grown.remove([1])


# -- save, load, the store ------------------------------------------------------------------


def test_save_load_round_trip(index, saved, data):
    version = resolve_version(saved)
    assert (saved / "current").is_symlink() and version.parent == saved
    meta = json.loads((version / "meta.json").read_text())
    assert meta["method"] == "faiss_compressed" and meta["build_params"]["pq"] == 8
    store = meta["engine"]["store"]
    assert store == {"path": str(data["store"].folder.resolve()), "id": data["store"].id,
                     "rows": N}
    assert meta["manifest"]["inputs"]["vectors"] == data["store"].id
    assert not (version / "vectors.npy").exists()  # the exact vectors stay in the store
    q = data["q"]
    for loaded in (load_index(saved, vectors=data["store"]), load_index(saved)):
        assert loaded.params == index.params
        for a, b in [(index.search(q, K), loaded.search(q, K)),
                     (index.search(q, K, category=4), loaded.search(q, K, category=4)),
                     (index.search_by_id(data["ids"][:5], K),
                      loaded.search_by_id(data["ids"][:5], K))]:
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_loaded_index_is_memory_mapped(saved, data, tmp_path):
    """The inverted lists are read from the engine file's pages, shared by every process
    serving it; ids and categories too."""
    loaded = load_index(saved)
    ivf = find(loaded._index, faiss.IndexIVF)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    engine = str(resolve_version(saved).resolve() / "index.faiss")
    assert engine in Path("/proc/self/maps").read_text()
    assert isinstance(loaded.ids, np.memmap) or isinstance(loaded.ids.base, np.memmap)
    # Added items go to the index's own vectors file; the lists are read into RAM first.
    new = _clustered(2, seed=9)[0]
    loaded.add(new, [1, 2], [RARE, RARE])
    again = load_index(loaded.save(tmp_path / "grown"))
    assert (resolve_version(tmp_path / "grown") / "vectors.npy").is_file()
    np.testing.assert_array_equal(again.search(new, 1).ids[:, 0], [1, 2])
    assert again.manifest["inputs"]["vectors"] == data["store"].id  # still needs the store
    np.testing.assert_array_equal(again.search(data["q"], K).ids,
                                  load_index(saved).search(data["q"], K).ids)


def test_another_store_is_refused(index, data, tmp_path):
    path = index.save(tmp_path / "idx")
    other = _write_store(tmp_path / "other", data["x"], {**MADE_BY, "image_size": 64})
    with pytest.raises(IndexMismatchError, match="image_size"):
        load_index(path, vectors=other)
    # The recorded store moved away: refused with a clear message, not a crash.
    moved = _write_store(tmp_path / "moved", data["x"])
    idx = build_index("faiss_compressed", moved.vectors, moved.item_ids, source=moved, **PARAMS)
    idx.save(tmp_path / "idx2")
    shutil.rmtree(tmp_path / "moved")
    with pytest.raises(IndexMismatchError, match="cannot be opened"):
        load_index(tmp_path / "idx2")
    # Another store in its place: refused, naming the setting.
    _write_store(tmp_path / "moved", data["x"], {**MADE_BY, "level": "image"})
    with pytest.raises(IndexMismatchError, match="level"):
        load_index(tmp_path / "idx2")
    assert len(load_index(tmp_path / "idx2", vectors=moved)) == N  # the right one: fine


def test_vectors_must_be_the_stores(data):
    x, store = data["x"], data["store"]
    with pytest.raises(IndexInputError, match="not the store's"):
        build_index("faiss_compressed", x[:100], data["ids"][:100], source=store, **PARAMS)
    with pytest.raises(IndexInputError, match="differ from the store's rows"):
        build_index("faiss_compressed", x * 2, data["ids"], source=store, **PARAMS)


# -- knobs, threads -------------------------------------------------------------------------


def test_knobs_per_call_do_not_leak_between_threads(index, data):
    """Two views of one engine with other knobs, searched from two threads at once, get
    what each gets alone: the knobs go into each call's SearchParameters, never onto the
    shared FAISS index."""
    ivf = find(index._index, faiss.IndexIVF)
    before = ivf.nprobe
    narrow, wide = copy.copy(index), copy.copy(index)
    narrow.params = Knobs({"nprobe": 1, "k_factor": 1}, {"nprobe": 1, "k_factor": 1})
    wide.params = Knobs({"nprobe": 1, "k_factor": 1}, {"nprobe": 64, "k_factor": 20})
    q = data["q"][:30]
    want = {"narrow": narrow.search(q, K).ids, "wide": wide.search(q, K).ids}
    assert not np.array_equal(want["narrow"], want["wide"])  # the knobs matter here
    bad: list[str] = []

    def run(name: str, view: VectorIndex) -> None:
        for _ in range(40):
            if not np.array_equal(view.search(q, K).ids, want[name]):
                bad.append(name)

    threads = [threading.Thread(target=run, args=a) for a in (("narrow", narrow),
                                                             ("wide", wide))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad and ivf.nprobe == before


# -- recall ---------------------------------------------------------------------------------


def test_recall_against_exact_cosine_and_the_rerank(index, exact, data):
    """Against exact cosine on the full vectors: the re-rank of 10 candidates a result
    with the exact vectors beats the engine's own PQ order (k_factor 1: no re-rank)."""
    truth = exact.search(data["q"], K).ids
    recall = {}
    for k_factor in (1, 10):
        index.params["k_factor"] = k_factor
        recall[k_factor] = recall_at_k(index.search(data["q"], K).ids, truth, K)
    index.params["k_factor"] = PARAMS["k_factor"]
    assert recall[10] >= 0.95, recall
    assert recall[10] >= recall[1] + 0.15, recall


def test_opq_and_plain_arrays(data):
    """OPQ instead of PCA; built from arrays (no store), the index keeps the vectors."""
    x, ids = data["x"][:5000], data["ids"][:5000]
    idx = build_index("faiss_compressed", x, ids, dim=32, pq=4, nlist=16, opq=True,
                      nprobe=16)
    assert idx.build_params["factory"] == "OPQ4_32,IVF16,PQ4"
    truth = build_index("exact", x, ids).search(data["q"], K).ids
    assert recall_at_k(idx.search(data["q"], K).ids, truth, K) >= 0.95


# -- building ---------------------------------------------------------------------------------


def test_built_in_chunks_from_a_sharded_store(data, tmp_path, monkeypatch):
    """From shards, chunk by chunk, trained on a sample: Python-side memory stays far below
    the store's size, and the index re-ranks from the shards."""
    x = data["x"]
    bounds = [0, 7000, 12000, N]
    shards = []
    for s, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        w = VectorWriter(tmp_path / SHARDS / f"part-{s:05d}", D, MADE_BY)
        w.append(x[a:b], np.arange(a, b) * 3 + 7, np.full(b - a, -1), b)
        w.close()
        shards.append({"path": f"{SHARDS}/part-{s:05d}", "count": b - a, "range": [a, b]})
    write_manifest(tmp_path, dim=D, made_by=MADE_BY, shards=shards)
    store = ShardedVectorStore(tmp_path)
    monkeypatch.setattr(index_chunks.UnitChunks.__init__, "__defaults__", (1024,))
    tracemalloc.start()
    idx = build_index("faiss_compressed", store.vectors, store.item_ids, source=store,
                      **{**PARAMS, "train_size": 3000})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < x.nbytes / 2, f"peak {peak / 1e6:.1f} MB for a {x.nbytes / 1e6:.1f} MB store"
    assert idx.build_params["train_size"] == 3000
    got = idx.search(x[::1000], K).ids[:, 0]
    np.testing.assert_array_equal(got, store.item_ids[::1000])  # each row finds itself
    rows = np.array([19999, 3, 7000, 6999, 3, 12000])  # across shards, unsorted, repeated
    np.testing.assert_array_equal(RowReader(store.vectors)[rows], x[rows])


def test_bad_parameters(data):
    x, ids = data["x"][:2000], data["ids"][:2000]
    with pytest.raises(IndexInputError, match="must divide dim=32"):
        build_index("faiss_compressed", x, ids, dim=32, pq=5)
    with pytest.raises(IndexInputError, match="must be in 1..64"):
        build_index("faiss_compressed", x, ids, dim=128, pq=8)
    with pytest.raises(IndexInputError, match="unknown faiss_compressed parameters"):
        build_index("faiss_compressed", x, ids, factory="IVF16,PQ8")
    with pytest.raises(TrainingError, match="nlist=4096"):
        build_index("faiss_compressed", x, ids, nlist=4096, pq=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 2000 points for 64 lists: FAISS warns
        idx = build_index("faiss_compressed", x, ids, dim=32, pq=4, nlist=64)
    with pytest.raises(ValueError, match=">= 1"):
        idx.params["k_factor"] = 0
