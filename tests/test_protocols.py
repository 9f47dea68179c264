"""The catalogue and image-source protocols, the item-id codec, and builds that fit."""

from __future__ import annotations

import ast
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers.catalogue.image_source import BsonImageSource, ImageSource, JpegFolderSource, image
from helpers.catalogue.protocol import (
    Catalogue,
    ParquetCatalogue,
    UnknownProductError,
    iter_products,
)
from helpers.core import ids
from helpers.index import build_index
from helpers.index import chunks as index_chunks
from helpers.ingest import scan as cat
from helpers.vectors.embed import embed_catalogue

HELPERS = Path(__file__).resolve().parents[1] / "helpers"


@pytest.fixture(scope="module")
def catalogue(real_bson, real_categories, tmp_path_factory) -> ParquetCatalogue:
    out = tmp_path_factory.mktemp("cat")
    cat.build_catalogue(real_bson, out, real_categories, progress=False)
    return ParquetCatalogue.open(out)


# -- item ids -------------------------------------------------------------------------------


def test_item_id_codec_round_trips_and_checks_limits():
    pids, idx = np.array([0, 5, 23_000_000, ids.MAX_PRODUCT_ID]), np.array([0, 3, 1, 99])
    packed = ids.encode(pids, idx)
    back_p, back_i = ids.decode(packed, "image")
    np.testing.assert_array_equal(back_p, pids)
    np.testing.assert_array_equal(back_i, idx)
    assert ids.encode([7], [-1]).tolist() == [7]  # a product's own vector keeps its id
    assert ids.decode([7, -1], "product")[0].tolist() == [7, -1]
    assert ids.decode([-1], "image")[0].tolist() == [-1]  # padding stays padding
    assert ids.product_of(503, "image") == (5, 3) and ids.product_of(503, "product") == (503, None)
    with pytest.raises(ids.ItemIdError, match="picture indexes"):
        ids.encode([1], [100])
    with pytest.raises(ids.ItemIdError, match="product ids"):
        ids.encode([ids.MAX_PRODUCT_ID + 1], [0])
    with pytest.raises(ids.ItemIdError, match="level"):
        ids.decode([1], "category")


# -- catalogue ------------------------------------------------------------------------------


def test_parquet_catalogue_implements_the_protocol(catalogue, real_bson):
    assert isinstance(catalogue, Catalogue)
    df = catalogue.df
    pid = int(df["product_id"].iloc[3])
    p = catalogue.product(pid)
    row = df.iloc[3]
    assert (p.product_id, p.category_id, p.n_images) == (pid, row.category_id, row.n_images)
    assert p.category_path == (row.category_level1, row.category_level2, row.category_level3)
    assert catalogue.category_path(p.category_id) == p.category_path
    members = catalogue.by_category(p.category_id, limit=None)
    assert [m.product_id for m in members] == \
        df.loc[df.category_id == p.category_id, "product_id"].tolist()  # catalogue order
    assert catalogue.by_category(p.category_id, offset=1, limit=1) == members[1:2]
    assert [x.product_id for x in catalogue.page(10, 5)] == df["product_id"].iloc[10:15].tolist()
    assert catalogue.page(len(df), 5) == []
    assert [x.product_id for x in iter_products(catalogue, 2, page_size=7)] == \
        df["product_id"].iloc[2:].tolist()
    np.testing.assert_array_equal(catalogue.category_ids([pid, pid]), [p.category_id] * 2)
    with pytest.raises(UnknownProductError, match="not in the catalogue"):
        catalogue.product(10**15)
    with pytest.raises(UnknownProductError):
        catalogue.product("abc")
    assert len(catalogue.fingerprint) == 16


# -- image sources --------------------------------------------------------------------------


def test_a_jpeg_folder_serves_the_same_pictures_as_the_bson(catalogue, real_bson, tmp_path):
    n = cat.export_jpegs(catalogue.df, real_bson, tmp_path / "jpg", progress=False)
    assert n == sum(len(p.usable_images) for p in catalogue.page(0, len(catalogue)))
    bson_src, folder_src = BsonImageSource(real_bson), JpegFolderSource(tmp_path / "jpg")
    for src in (bson_src, folder_src):
        assert isinstance(src, ImageSource)
    for p in catalogue.page(0, 10):
        a, b = bson_src.pictures(p), folder_src.pictures(p)
        assert [a[i] for i in p.usable_images] == [b[i] for i in p.usable_images]
        np.testing.assert_array_equal(image(bson_src, p), image(folder_src, p))


def test_the_embedder_takes_any_image_source(catalogue, real_bson, tmp_path):
    """Same catalogue, pictures from the BSON or from exported JPEGs: the same vectors."""
    cat.export_jpegs(catalogue.df, real_bson, tmp_path / "jpg", progress=False)

    def tiny(batch: np.ndarray) -> np.ndarray:  # a deterministic stand-in for a CNN
        return batch.reshape(len(batch), -1, 3).mean(axis=1) + 1e-3

    head = ParquetCatalogue(catalogue.df.head(20))
    a = embed_catalogue(head, BsonImageSource(real_bson), tiny, tmp_path / "a",
                        image_size=32, progress=False)
    b = embed_catalogue(head, JpegFolderSource(tmp_path / "jpg"), tiny, tmp_path / "b",
                        image_size=32, progress=False)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)


# -- builds that fit the machine ------------------------------------------------------------


def test_building_from_a_memmap_reads_it_in_chunks(tmp_path, monkeypatch):
    """No full in-RAM copy of the store: Python-side memory stays near one chunk."""
    n, d = 200_000, 64  # 51 MB of float32
    path = tmp_path / "v.f32"
    mm = np.memmap(path, np.float32, "w+", shape=(n, d))
    mm[:] = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    mm.flush()
    store = np.memmap(path, np.float32, "r", shape=(n, d))
    monkeypatch.setattr(index_chunks, "CHUNK_ROWS", 2048)  # 0.5 MB blocks
    monkeypatch.setattr(index_chunks.UnitChunks.__init__, "__defaults__", (2048,))
    tracemalloc.start()
    index = build_index("faiss", store, np.arange(n), factory="Flat")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(index) == n
    assert peak < n * d * 4 / 3, f"peak {peak / 1e6:.1f} MB for a {n * d * 4 / 1e6:.0f} MB store"
    q = np.asarray(store[:3])
    assert index.search(q, 1).ids[:, 0].tolist() == [0, 1, 2]


def test_adding_in_chunks_is_linear():
    """Ids grow by doubling, not by copying the whole array on every add."""
    buf = index_chunks.GrowableArray(np.arange(10))
    reallocations, last = 0, buf._buf
    for i in range(2000):
        buf.extend(np.array([100 + i]))
        if buf._buf is not last:
            reallocations, last = reallocations + 1, buf._buf
    assert buf.values.tolist() == list(range(10)) + list(range(100, 2100))
    assert reallocations <= 10  # ~log2(2010 / 10); a concatenate per add would be 2000
    index = build_index("exact", np.eye(4, 8, dtype=np.float32), np.arange(4))
    for i in range(50):
        index.add(np.eye(1, 8, k=i % 8, dtype=np.float32) + 0.1, [10 + i])
    assert len(index) == 54 and index.ids[-1] == 59


# -- packaging ------------------------------------------------------------------------------


def test_library_code_logs_instead_of_printing():
    """print() only in command-line entry points (a module's ``main``), never in the library."""
    offenders = []
    for path in HELPERS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        cli = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
               and f.name in ("main", "_main") for n in ast.walk(f)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
                    and id(node) not in cli):
                offenders.append(f"{path.relative_to(HELPERS)}:{node.lineno}")
    assert not offenders, f"print() in library code: {offenders}"


@pytest.mark.slow
def test_the_wheel_carries_the_sample_and_finds_it(tmp_path):
    """A non-editable install: the sample is package data, not a path into the checkout."""
    import subprocess
    import sys

    root = HELPERS.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "helpers/sample_data/fashion_sample.bson" in names
    assert "helpers/sample_data/fashion_sample_categories.csv" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import helpers.core.paths as p; print(p.SAMPLE_BSON); "
            "assert p.SAMPLE_BSON.is_file(), p.SAMPLE_BSON")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, text=True,
                         capture_output=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin"})
    assert str(site) in out.stdout


def test_registry_membership_imports_nothing():
    from helpers.core.registry import Registry

    reg = Registry("thing", {"ok": "helpers.core.ids:ItemIdError", "gone": "no_such_module:X"})
    assert "gone" in reg and "other" not in reg  # no import of no_such_module
    assert reg["ok"].__name__ == "ItemIdError"
    with pytest.raises(ModuleNotFoundError):
        reg["gone"]
    with pytest.raises(KeyError, match="unknown thing 'other'"):
        reg["other"]
