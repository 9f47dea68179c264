"""The index protocol, checked on every method: exact top-k at maximum knobs, category
filter, search_by_id, add/remove, save/load, and the errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cosine as scipy_cosine

from helpers.core.artifacts import resolve_version
from helpers.index import (
    METHODS,
    CategoryError,
    DimensionError,
    DuplicateIdError,
    EmptyIndexError,
    IndexMismatchError,
    InvalidKError,
    InvalidVectorError,
    NotSupportedError,
    UnknownIdError,
    VectorIndex,
    build_index,
    load_index,
)
from helpers.index.exact import ExactIndex, cosine_top_k

N, D, NQ, K = 2000, 32, 20, 10
RARE = 7  # a category with 15 items

# (name, method, params with every knob at its maximum: the search is exhaustive)
CONFIGS = [
    ("exact", "exact", {}),
    ("faiss-flat", "faiss", {"factory": "Flat"}),
    ("faiss-hnsw", "faiss", {"factory": "HNSW16", "efSearch": N}),
    ("faiss-ivf", "faiss", {"factory": "IVF32,Flat", "nprobe": 32}),
    # PQ alone is lossy at any knob; with an exact re-rank of all candidates it is exact.
    # (4-bit codes: 8-bit PQ k-means on 2000 points takes ~10 s and gains nothing here.)
    ("faiss-ivfpq-rflat", "faiss", {"factory": "IVF32,PQ8x4,RFlat", "nprobe": 32, "k_factor": N}),
    ("annoy", "annoy", {"n_trees": 8, "search_k": 8 * N}),
    # Candidates from PCA + IVF-PQ, every one re-ranked with the exact vectors: exact.
    ("faiss-compressed", "faiss_compressed",
     {"dim": 16, "pq": 2, "nlist": 16, "opq": False, "nprobe": 16, "k_factor": N}),
    # Small categories are ranked exactly (exact_below): this one over-fetches instead,
    # within max(search_k, max_candidates) candidates: n_trees * N allows a full scan.
    ("annoy-overfetch", "annoy", {"n_trees": 8, "search_k": 8 * N, "exact_below": 0}),
]
NAMES = [c[0] for c in CONFIGS]
CAN_REMOVE = {"exact", "faiss-flat", "faiss-ivf"}
CAN_ADD = {"exact", "faiss-flat", "faiss-hnsw", "faiss-ivf", "faiss-ivfpq-rflat",
           "faiss-compressed"}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, D)).astype(np.float32)
    ids = rng.choice(10**9, N, replace=False).astype(np.int64)  # sparse, unordered ids
    categories = rng.integers(0, 5, N)
    categories[rng.choice(N, 15, replace=False)] = RARE
    queries = rng.standard_normal((NQ, D)).astype(np.float32)
    return {"vectors": vectors, "ids": ids, "categories": categories, "queries": queries}


def _build(name: str, data: dict[str, np.ndarray], **extra) -> VectorIndex:
    _, method, params = CONFIGS[NAMES.index(name)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FAISS PQ k-means on 2000 points warns
        return build_index(
            method, data["vectors"], data["ids"], data["categories"], **params, **extra
        )


@pytest.fixture(scope="module", params=NAMES)
def built(request, data) -> tuple[str, VectorIndex]:
    return request.param, _build(request.param, data)


@pytest.fixture(scope="module")
def exact(data) -> ExactIndex:
    return ExactIndex.build(data["vectors"], data["ids"], data["categories"])


def _reference(data, queries, k, category=None, exclude=None):
    """Top-k by an explicit loop over scipy's cosine distance: the original project's way."""
    keep = np.ones(N, bool) if category is None else np.isin(data["categories"], category)
    out = []
    for i, q in enumerate(queries):
        sims = [
            (1 - scipy_cosine(q, v), pid)
            for v, pid, ok in zip(data["vectors"], data["ids"], keep, strict=True)
            if ok and (exclude is None or pid != exclude[i])
        ]
        sims.sort(key=lambda t: -t[0])
        out.append([pid for _, pid in sims[:k]])
    return np.array(out)


# -- exact search is right ---------------------------------------------------------------------


def test_exact_equals_scipy_loop(data, exact):
    ref = _reference(data, data["queries"], K)
    np.testing.assert_array_equal(exact.search(data["queries"], K).ids, ref)


def test_exact_scores_are_cosine(data, exact):
    res = exact.search(data["queries"][:3], K)
    rows = np.searchsorted(np.sort(data["ids"]), res.ids)
    vec = data["vectors"][np.argsort(data["ids"])][rows]
    for q, v, s in zip(data["queries"][:3], vec, res.scores, strict=True):
        np.testing.assert_allclose(s, [1 - scipy_cosine(q, x) for x in v], atol=1e-6)
    assert res.ids.dtype == np.int64 and res.scores.dtype == np.float32


def test_cosine_top_k_on_bare_arrays(data):
    rows, scores = cosine_top_k(data["queries"], data["vectors"], K)
    np.testing.assert_array_equal(data["ids"][rows], _reference(data, data["queries"], K))
    # Block size changes memory, not results.
    rows1, _ = cosine_top_k(data["queries"], data["vectors"], K, block_mib=1)
    np.testing.assert_array_equal(rows, rows1)


def test_exact_filtered_equals_reference(data, exact):
    ref = _reference(data, data["queries"][:5], K, category=[1, RARE])
    np.testing.assert_array_equal(exact.search(data["queries"][:5], K, category=[1, RARE]).ids, ref)
    # A big category takes the masking path instead of the subset path: same answer.
    ref = _reference(data, data["queries"][:5], K, category=[0, 1, 2])
    np.testing.assert_array_equal(exact.search(data["queries"][:5], K, [0, 1, 2]).ids, ref)


# -- every method, knobs at maximum = exact ----------------------------------------------------


def test_max_knobs_give_exact_top_k(built, data, exact):
    name, index = built
    want = exact.search(data["queries"], K)
    got = index.search(data["queries"], K)
    np.testing.assert_array_equal(got.ids, want.ids, err_msg=name)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5, err_msg=name)


def test_protocol_surface(built, data):
    name, index = built
    assert isinstance(index, VectorIndex)
    assert len(index) == N and index.dim == D
    assert index.method == CONFIGS[NAMES.index(name)][1]
    with pytest.raises(KeyError, match="unknown search knob"):
        index.params["no_such_knob"] = 1
    one = index.search(data["queries"][0], K)  # a single vector [d]
    assert one.ids.shape == (1, K) and one.scores.shape == (1, K)


def test_category_filter(built, data, exact):
    name, index = built
    for cat in (2, [1, RARE], np.array([RARE])):
        res = index.search(data["queries"], K, category=cat)
        assert res.ids.shape == (NQ, K)
        allowed = data["ids"][np.isin(data["categories"], cat)]
        assert np.isin(res.ids, allowed).all(), name
        np.testing.assert_array_equal(res.ids, exact.search(data["queries"], K, cat).ids)
    # Exactly as many results as the rare category holds.
    res = index.search(data["queries"], 15, category=RARE)
    assert (np.sort(res.ids, axis=1) == np.sort(data["ids"][data["categories"] == RARE])).all()


def test_search_by_id_excludes_the_item(built, data, exact):
    name, index = built
    pids = data["ids"][:5]
    res = index.search_by_id(pids, K)
    assert res.ids.shape == (5, K)
    assert not (res.ids == pids[:, None]).any()
    ref = _reference(data, data["vectors"][:5], K, exclude=pids)
    np.testing.assert_array_equal(res.ids, ref, err_msg=name)
    single = index.search_by_id(int(pids[0]), K)
    np.testing.assert_array_equal(single.ids, res.ids[:1])
    # In a category: the item's own category loses one slot, another category does not.
    cat = int(data["categories"][0])
    by_cat = index.search_by_id(pids[0], K, category=cat)
    assert np.isin(by_cat.ids, data["ids"][data["categories"] == cat]).all()
    assert pids[0] not in by_cat.ids
    np.testing.assert_array_equal(by_cat.ids, exact.search_by_id(pids[0], K, category=cat).ids)
    n_cat = int((data["categories"] == cat).sum())
    assert index.search_by_id(pids[0], n_cat - 1, category=cat).ids.shape == (1, n_cat - 1)
    # Up to k: one more than the category's other members pads the last slot.
    padded = index.search_by_id(pids[0], n_cat, category=cat)
    assert padded.ids[0, -1] == -1 and padded.scores[0, -1] == -np.inf
    assert padded.found[0].sum() == n_cat - 1
    np.testing.assert_array_equal(padded.ids[0, :-1],
                                  exact.search_by_id(pids[0], n_cat - 1, category=cat).ids[0])


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, data, tmp_path):
    source = {"model": "resnet50", "dim": D, "store": "vectors/v1"}
    index = _build(name, data, source=source)
    path = tmp_path / name
    assert index.save(path) == path
    version = resolve_version(path)  # path/current -> path/v-<time>/: one whole version
    assert (path / "current").is_symlink() and version.parent == path and version != path
    path = version
    meta = json.loads((path / "meta.json").read_text())
    assert meta["method"] == index.method and meta["metric"] == "cosine"
    assert meta["dim"] == D and meta["n"] == N and meta["source"] == source
    assert meta["params"] == dict(index.params) and meta["build_params"] == index.build_params
    assert (path / "ids.npy").is_file() and (path / "categories.npy").is_file()
    assert (path / meta["files"]["engine"]).is_file()
    assert json.loads((path / "manifest.json").read_text())["kind"] == "index"
    umask = os.umask(0o077)  # even under a strict umask:
    try:
        index.save(tmp_path / "strict")
    finally:
        os.umask(umask)
    for f in resolve_version(tmp_path / "strict").iterdir():  # a server as another user reads
        assert f.stat().st_mode & 0o777 == 0o644, f
    assert not list(path.glob(".*.tmp"))
    path = tmp_path / name

    loaded = load_index(path, expect_source={"model": "resnet50"})
    assert type(loaded) is type(index) and len(loaded) == N and loaded.params == index.params
    assert loaded.source == source
    q = data["queries"]
    for a, b in [
        (index.search(q, K), loaded.search(q, K)),
        (index.search(q, K, category=[1, 2]), loaded.search(q, K, category=[1, 2])),
        (index.search_by_id(data["ids"][:3], K), loaded.search_by_id(data["ids"][:3], K)),
    ]:
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(IndexMismatchError, match="model"):
        load_index(path, expect_source={"model": "efficientnet"})
    other = next(cls for m, cls in METHODS.items() if m != index.method)
    with pytest.raises(IndexMismatchError, match=f"holds a '{index.method}' index"):
        other.load(path)
    # Saving a loaded index over its own directory (one being served) works.
    loaded.save(path)
    np.testing.assert_array_equal(load_index(path).search(q, K).ids, index.search(q, K).ids)


def test_add_then_search_finds_it(data):
    rng = np.random.default_rng(1)
    new = rng.standard_normal((3, D)).astype(np.float32)
    new_ids = np.array([5, 6, 10**10])
    for name in NAMES:
        index = _build(name, data)
        if name not in CAN_ADD:
            with pytest.raises(NotSupportedError, match="rebuild instead"):
                index.add(new, new_ids, np.array([RARE] * 3))
            continue
        index.search(new, 18, category=RARE)  # category rows cached before the add
        index.add(new, new_ids, np.array([RARE] * 3))
        assert len(index) == N + 3
        res = index.search(new, 1)
        np.testing.assert_array_equal(res.ids[:, 0], new_ids, err_msg=name)
        np.testing.assert_allclose(res.scores[:, 0], 1, atol=1e-5)
        assert np.isin(new_ids, index.search(new, 18, category=RARE).ids).all()
        with pytest.raises(DuplicateIdError):
            index.add(new[:1], new_ids[:1], np.array([0]))


def test_remove_then_it_is_gone(data):
    gone = data["ids"][:4]
    for name in NAMES:
        index = _build(name, data)
        if name not in CAN_REMOVE:
            with pytest.raises(NotSupportedError, match="rebuild instead"):
                index.remove(gone)
            assert len(index) == N
            continue
        index.remove(gone)
        assert len(index) == N - 4
        res = index.search(data["vectors"][:4], K)
        assert not np.isin(res.ids, gone).any(), name
        with pytest.raises(UnknownIdError):
            index.search_by_id(gone[0], K)
        with pytest.raises(UnknownIdError):
            index.remove(gone[:1])
        # Removing then re-adding an id works.
        index.add(data["vectors"][:1], gone[:1], data["categories"][:1])
        assert index.search(data["vectors"][:1], 1).ids[0, 0] == gone[0]


# -- clear errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "faiss", "annoy", "faiss_compressed"])
def test_build_errors(method, data):
    v, ids = data["vectors"][:100], data["ids"][:100]
    with pytest.raises(EmptyIndexError):
        build_index(method, np.empty((0, D), np.float32), np.empty(0, np.int64))
    with pytest.raises(DuplicateIdError, match="duplicate"):
        build_index(method, v, np.r_[ids[:99], ids[0]])
    bad = v.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InvalidVectorError, match="NaN"):
        build_index(method, bad, ids)
    bad[3] = 0
    with pytest.raises(InvalidVectorError, match="zero"):
        build_index(method, bad, ids)
    with pytest.raises(ValueError, match="100 entries"):
        build_index(method, v, ids[:50])
    with pytest.raises(ValueError, match=">= 0"):
        build_index(method, v, np.r_[ids[:99], -1])
    with pytest.raises(CategoryError):
        build_index(method, v, ids, np.zeros(99, np.int64))


def test_search_errors(built, data):
    name, index = built
    q = data["queries"]
    with pytest.raises(DimensionError, match="dimension 31"):
        index.search(q[:, :31], K)
    with pytest.raises(InvalidKError, match=">= 1"):
        index.search(q, 0)
    with pytest.raises(InvalidKError):
        index.search(q, -3)
    # Up to k results: padding (id -1, score -inf) marks the slots nothing can fill.
    res = index.search(q, N + 1)
    assert res.found.sum(axis=1).tolist() == [N] * len(q) and (res.ids[:, -1] == -1).all()
    rare = index.search(q, 16, category=RARE)
    assert rare.found.sum(axis=1).tolist() == [15] * len(q)
    assert np.isin(rare.ids[:, :15], data["ids"][data["categories"] == RARE]).all()
    assert (rare.scores[:, 15] == -np.inf).all()
    none = index.search(q, 1, category=12345)
    assert (none.ids == -1).all() and not none.found.any()
    bad = q.copy()
    bad[0, 0] = np.inf
    with pytest.raises(InvalidVectorError, match="NaN or inf"):
        index.search(bad, K)
    with pytest.raises(UnknownIdError, match="unknown product ids"):
        index.search_by_id(424242, K)
    alone = index.search_by_id(data["ids"][0], N)  # the item itself excluded: N - 1 found
    assert alone.found.sum() == N - 1 and alone.ids[0, -1] == -1
    assert index.search_by_id(data["ids"][0], N - 1).ids.shape == (1, N - 1)
    with pytest.raises(CategoryError):
        index.search(q, K, category="shoes")
    if name in CAN_ADD:
        with pytest.raises(DimensionError):
            index.add(q[:1, :8], [1], [0])
        with pytest.raises(CategoryError, match="has categories"):
            index.add(q[:1], [1])
    if name in CAN_REMOVE:
        with pytest.raises(UnknownIdError):
            index.remove([424242])


@pytest.mark.parametrize("method", ["exact", "faiss", "annoy"])
def test_filter_needs_categories(method, data):
    index = build_index(method, data["vectors"][:200], data["ids"][:200])
    with pytest.raises(CategoryError, match="without categories"):
        index.search(data["queries"], K, category=1)
    assert index.categories is None


def test_unknown_method():
    with pytest.raises(KeyError, match="unknown index method 'elastic'"):
        build_index("elastic", np.ones((2, 2)), [1, 2])


def test_no_tensorflow_or_model_code():
    code = (
        "import sys, numpy as np\n"
        "from helpers.index import build_index\n"
        "v = np.random.default_rng(0).standard_normal((300, 8))\n"
        "for m in ('exact', 'faiss', 'annoy'):\n"
        "    build_index(m, v, np.arange(300)).search(v[:2], 3)\n"
        "bad = [m for m in sys.modules if m.startswith(('tensorflow', 'keras', 'torch',"
        " 'helpers.models', 'onnxruntime'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_indexes_import_only_core_and_themselves():
    """The index layer sits on helpers.core: no module under helpers/index imports models
    (nor serve, evaluate ...), even lazily inside a function. One exception, the layer
    below: faiss_compressed reopens the vector store it re-ranks from (`helpers.vectors`'s
    store readers, which import helpers.core only)."""
    import ast
    from pathlib import Path

    layer = Path(__file__).resolve().parents[1] / "helpers" / "index"
    bad = []
    for path in sorted(layer.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            allowed = ("helpers.core", "helpers.index")
            if path.name == "compressed.py":
                allowed += ("helpers.vectors",)
            bad += [f"{path.name}:{node.lineno} {n}" for n in names
                    if n.startswith("helpers") and not n.startswith(allowed)
                    or n.startswith("helpers.vectors.embed")]
    assert not bad, bad
