"""Annoy specifics: cosine scores from angular distances, immutability, the over-fetching
category filter, and the mmapped file shared between processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers.core.artifacts import resolve_version
from helpers.index import NotSupportedError, build_index, load_index
from helpers.index.annoy_index import AnnoyIndex


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


def test_rare_category_by_over_fetching(index, data):
    """Default search_k (n_trees * k) would see ~0.7% members among its candidates: the
    fetch grows until k members are found."""
    q = np.random.default_rng(1).standard_normal((20, 24)).astype(np.float32)
    rare = data["ids"][data["categories"] == 9]
    res = index.search(q, 10, category=9)
    assert res.ids.shape == (20, 10) and np.isin(res.ids, rare).all()
    assert (np.diff(res.scores, axis=1) <= 1e-6).all()  # best first
    everything = index.search(q, 20, category=9)  # k = all members: a full scan
    assert (np.sort(everything.ids, axis=1) == np.sort(rare)).all()


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
