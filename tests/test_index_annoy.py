"""Annoy specifics: cosine scores from angular distances, immutability, the category filter
(exact over a small category's members, capped over-fetching for a big one), reduced and
on-disk builds with their size estimate, and the mmapped file shared between processes."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers.core.artifacts import resolve_version
from helpers.index import NotSupportedError, build_index, load_index
from helpers.index.annoy_index import AnnoyIndex, annoy_footprint


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3000, 24)).astype(np.float32)
    categories = rng.integers(0, 4, 3000)
    categories[rng.choice(3000, 20, replace=False)] = 9  # rare: 0.7% of items
    return {"vectors": vectors, "ids": np.arange(3000) + 10**6, "categories": categories}


@pytest.fixture(scope="module")
def index(data) -> AnnoyIndex:
    return build_index("annoy", data["vectors"], data["ids"], data["categories"], n_trees=10)


def test_scores_are_cosine(index, data):
    res = index.search(data["vectors"][:5], 10)
    unit = data["vectors"] / np.linalg.norm(data["vectors"], axis=1, keepdims=True)
    want = np.einsum("qd,qkd->qk", unit[:5], unit[res.ids - 10**6])
    np.testing.assert_allclose(res.scores, want, atol=1e-5)
    np.testing.assert_allclose(res.scores[:, 0], 1, atol=1e-5)  # each vector finds itself


def test_immutable(index, data):
    with pytest.raises(NotSupportedError, match="rebuild instead"):
        index.remove(data["ids"][:1])
    with pytest.raises(NotSupportedError, match="rebuild instead"):
        index.add(data["vectors"][:1], [1], [0])
    assert len(index) == 3000


def test_rare_category_is_searched_exactly(index, data):
    """20 members (<= exact_below): their vectors are ranked exactly, whatever the
    over-fetch cap: only members, the exact top k, every member when k = all of them."""
    q = np.random.default_rng(1).standard_normal((20, 24)).astype(np.float32)
    rare = data["ids"][data["categories"] == 9]
    exact = build_index("exact", data["vectors"], data["ids"], data["categories"])
    index.params["max_candidates"] = 1  # over-fetching could not find them
    try:
        res = index.search(q, 10, category=9)
        everything = index.search(q, 20, category=9)
    finally:
        index.params["max_candidates"] = 10_000
    assert res.ids.shape == (20, 10) and np.isin(res.ids, rare).all()
    want = exact.search(q, 10, category=9)
    np.testing.assert_array_equal(res.ids, want.ids)
    np.testing.assert_allclose(res.scores, want.scores, atol=1e-5)
    assert (np.sort(everything.ids, axis=1) == np.sort(rare)).all()


def test_over_fetching_stops_at_the_budget(index, data, caplog):
    """exact_below 0: the rare category is over-fetched, inspecting at most
    max(search_k, max_candidates) candidates. With both at 100, a query gets the members
    among the 100 candidates an unfiltered search of 100 inspects, and no more: padded
    (-1, -inf), counted in short_results and logged. A budget of n_trees * n is a full
    scan: k members each, the exact ones."""
    q = np.random.default_rng(3).standard_normal((20, 24)).astype(np.float32)
    rare = data["ids"][data["categories"] == 9]
    exact = build_index("exact", data["vectors"], data["ids"], data["categories"])
    before = index.short_results
    index.params.update(exact_below=0, max_candidates=1, search_k=100)
    try:
        unfiltered = index.search(q, 100).ids  # the same Annoy call: 100 of 100 candidates
        with caplog.at_level(logging.WARNING, "helpers.index.annoy_index"):
            capped = index.search(q, 10, category=9)
        index.params["max_candidates"] = 10 * len(index)
        full = index.search(q, 10, category=9)
    finally:
        index.params.update(exact_below=2_000, max_candidates=10_000, search_k=-1)
    for row, got in zip(unfiltered, capped.ids, strict=True):
        want = row[np.isin(row, rare)][:10]
        np.testing.assert_array_equal(got[: len(want)], want)
        assert (got[len(want):] == -1).all()
    found = capped.found.sum(axis=1)
    assert (found < 10).all()  # 0.7% members: 100 candidates hold about one
    assert (capped.scores[~capped.found] == -np.inf).all()
    assert index.short_results - before == 20
    assert "within 100 candidates" in caplog.text
    np.testing.assert_array_equal(full.ids, exact.search(q, 10, category=9).ids)
    assert index.short_results - before == 20  # the full scan was not short


def test_search_k_is_a_live_knob(index, data):
    q = data["vectors"][:50] + np.random.default_rng(2).standard_normal((50, 24)).astype("f4")
    exact = build_index("exact", data["vectors"], data["ids"]).search(q, 10).ids
    hits = []
    for search_k in (10, 10 * 3000):
        index.params["search_k"] = search_k
        hits.append((index.search(q, 10).ids == exact).mean())
    index.params["search_k"] = -1
    assert hits[0] < hits[1] == 1.0, hits


_CHILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import helpers.index.annoy_index  # noqa: F401 (import cost out of the measurement)
    from helpers.index import load_index

    def rss_kib():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])

    before = rss_kib()
    index = load_index(sys.argv[1])
    after_load = rss_kib()
    # Touch every page of the file: a full scan (search_k = n_trees * n).
    index.params["search_k"] = 10 * len(index)
    index.search(np.ones((1, index.dim), np.float32), len(index))
    print(after_load - before, flush=True)
    sys.stdin.readline()  # stay alive while the parent reads /proc/<pid>/smaps
    """
)


def _smaps(pid: int, path: Path) -> list[dict[str, str]]:
    """The /proc/<pid>/smaps entries mapping `path`: header perms and the kB fields."""
    out, entry = [], None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping header line
            entry = {"perms": head[1]} if line.endswith(str(path)) else None
            if entry is not None:
                out.append(entry)
        elif entry is not None and head[0].endswith(":") and len(head) >= 2:
            entry[head[0][:-1]] = head[1]
    return out


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_loaded_file_is_shared_between_processes(tmp_path):
    """Two processes load one saved index: the file is mapped MAP_SHARED read-only ('r--s'),
    loading costs no memory for it, and after both scan it every page is shared (one copy
    in the page cache, Pss = Rss / 2), none private."""
    rng = np.random.default_rng(0)
    v = rng.standard_normal((20_000, 128)).astype(np.float32)
    build_index("annoy", v, np.arange(20_000), n_trees=10).save(tmp_path)
    ann = (resolve_version(tmp_path) / "index.ann").resolve()
    size_kib = ann.stat().st_size // 1024
    assert size_kib > 10_000  # big enough for a private copy to show

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        load_growth = [int(p.stdout.readline()) for p in procs]  # both loaded and scanned
        maps = [_smaps(p.pid, ann) for p in procs]
    finally:
        for p in procs:
            p.communicate("\n", timeout=30)
    for growth, entries in zip(load_growth, maps, strict=True):
        assert growth < size_kib / 10, f"load grew RSS by {growth} KiB, file {size_kib} KiB"
        assert entries and all(e["perms"] == "r--s" for e in entries), entries
        rss = sum(int(e["Rss"]) for e in entries)
        # Shared_Dirty when the page cache has not written the fresh file back yet.
        shared = sum(int(e["Shared_Clean"]) + int(e["Shared_Dirty"]) for e in entries)
        private = sum(int(e["Private_Clean"]) + int(e["Private_Dirty"]) for e in entries)
        pss = sum(int(e["Pss"]) for e in entries)  # each page's size / processes mapping it
        assert rss > size_kib * 0.9, "the scan should have touched the whole file"
        assert shared > rss * 0.9 and private < rss * 0.1, entries
        assert pss < rss * 0.6, "two processes should split the pages: Pss ~ Rss / 2"


def test_loaded_index_searches_like_the_built_one(index, data, tmp_path):
    index.save(tmp_path)
    loaded = load_index(tmp_path)
    assert isinstance(loaded.ids, np.ndarray) and not loaded.ids.flags.writeable
    q = data["vectors"][:10]
    for cat in (None, 9):
        a, b = index.search(q, 5, category=cat), loaded.search(q, 5, category=cat)
        np.testing.assert_array_equal(a.ids, b.ids)
        assert type(b.ids) is np.ndarray  # not a memmap view of ids.npy


def _clustered(n: int, d: int, rank: int, seed: int) -> np.ndarray:
    """Clusters in a `rank`-dimensional subspace of R^d, plus a little noise."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d)).astype(np.float32)
    centres = rng.standard_normal((40, rank)).astype(np.float32) * 3
    z = centres[rng.integers(0, 40, n)] + rng.standard_normal((n, rank)).astype(np.float32)
    return z @ basis + 0.05 * rng.standard_normal((n, d)).astype(np.float32)


def test_reduced_on_disk_build_round_trips(tmp_path):
    """PCA 96 -> 16 and an on-disk build: the forest is built in the scratch file, saved
    (moved) with the PCA into the version folder, and the loaded index answers as the
    built one; recall@10 against exact cosine in 96-d stays high."""
    x = _clustered(4000, 96, 12, seed=7)
    ids, cats = np.arange(4000) + 5, np.arange(4000) % 3
    scratch = tmp_path / "scratch" / "forest.ann"
    index = build_index("annoy", x[:3800], ids[:3800], cats[:3800], n_trees=10, pca_dim=16,
                        on_disk_build=scratch)
    assert scratch.stat().st_size > 3800 * (16 + 4 * 16)  # the items are in the file
    assert index.dim == 96 and index.pca.out_dim == 16 and index.pca.kept > 0.99
    index.params["search_k"] = 4000
    q = x[3800:]
    exact = build_index("exact", x[:3800], ids[:3800], cats[:3800])
    truth = exact.search(q, 10)
    res = index.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(res.ids, truth.ids,
                                                                  strict=True)])
    assert recall > 0.9, recall
    rows = np.searchsorted(ids, res.ids)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosine = np.einsum("qd,qkd->qk", unit[3800:], unit[rows])
    np.testing.assert_allclose(res.scores, cosine, atol=0.02)  # the reduced vectors' cosine

    index.save(tmp_path / "index")
    assert not scratch.exists()  # moved into the index, free for the next build
    version = resolve_version(tmp_path / "index")
    assert (version / "index.ann").is_file() and (version / "pca.npz").is_file()
    loaded = load_index(tmp_path / "index")
    assert loaded.build_params["pca_dim"] == 16 and loaded.params == index.params
    for a, b in [(index.search(q, 10), loaded.search(q, 10)),
                 (index.search(q, 10, category=1), loaded.search(q, 10, category=1)),
                 (index.search_by_id(ids[:5], 10), loaded.search_by_id(ids[:5], 10))]:
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    by_id = loaded.search_by_id(ids[:5], 10)
    assert not (by_id.ids == ids[:5, None]).any()
    np.testing.assert_array_equal(by_id.ids, loaded.search(x[:5], 11).ids[:, 1:])
    loaded.save(tmp_path / "again")  # a loaded reduced index saves again, PCA included
    np.testing.assert_array_equal(load_index(tmp_path / "again").search(q, 10).ids, res.ids)


@pytest.mark.parametrize("pca_dim", [None, 16])
def test_footprint_estimates_the_file(pca_dim, tmp_path):
    x = _clustered(20_000, 64, 12, seed=pca_dim or 0)
    build_index("annoy", x, np.arange(20_000), n_trees=10, pca_dim=pca_dim).save(tmp_path)
    version = resolve_version(tmp_path)
    size = sum((version / f).stat().st_size for f in ("index.ann", "pca.npz")
               if (version / f).exists())
    est = annoy_footprint(20_000, 64, 10, pca_dim)
    assert est.items == 20_000 * ((12 if pca_dim is None else 16) + 4 * (pca_dim or 64))
    assert abs(est.total - size) < 0.15 * size, (est, size)
    assert annoy_footprint(20_000, 64, 20, pca_dim).forest == pytest.approx(2 * est.forest,
                                                                            rel=1e-3)


def test_one_random_projection_tree_splits_into_small_near_leaves():
    """helpers.index.trees: the leaves partition the points, none above leaf_size, and a
    point's leaf mates are nearer to it than random points are."""
    from helpers.index.trees import rp_tree

    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2000, 2))
    leaves = rp_tree(pts, leaf_size=20, seed=1)
    rows = np.concatenate(leaves)
    assert sorted(rows.tolist()) == list(range(2000))  # every point in exactly one leaf
    assert max(len(leaf) for leaf in leaves) <= 20
    within = np.mean([np.linalg.norm(pts[leaf] - pts[leaf].mean(0), axis=1).mean()
                      for leaf in leaves])
    spread = np.linalg.norm(pts - pts.mean(0), axis=1).mean()
    assert within < spread / 5
    with pytest.raises(ValueError):
        rp_tree(pts, leaf_size=0)
