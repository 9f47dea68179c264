"""The serving catalogue (memory-mapped Arrow): the same answers as the Parquet catalogue,
no per-product objects when opened, rewritten when stale, written once otherwise."""

from __future__ import annotations

import gc
import shutil
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.catalogue.columnar import SERVING_FILE, ColumnarCatalogue
from helpers.catalogue.protocol import (
    Catalogue,
    ParquetCatalogue,
    UnknownProductError,
    iter_products,
)
from helpers.core import artifacts
from helpers.ingest import scan as cat
from helpers.ingest.schema import FORMAT_VERSION, catalogue_fingerprint


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory, sample_bson, sample_categories):
    folder = tmp_path_factory.mktemp("columnar") / "catalogue"
    cat.build_catalogue(sample_bson, folder, sample_categories, progress=False)
    return folder


def write_catalogue(folder, table: pa.Table | pd.DataFrame) -> None:
    """A finished catalogue folder holding ``table`` (what build_catalogue leaves)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write(folder / cat.CATALOGUE, lambda t: pq.write_table(table, t))
    manifest = artifacts.make_manifest("catalogue", {"rows": table.num_rows})
    manifest["fingerprint"] = catalogue_fingerprint(
        table.select(["product_id", "offset"]).to_pandas())
    artifacts.write_manifest(folder, manifest)
    artifacts.write_json(folder / cat.META, {"format_version": FORMAT_VERSION})


def assert_same_answers(a: Catalogue, b: Catalogue) -> None:
    """Every protocol method, on every product and category, with edge offsets."""
    assert len(a) == len(b) and a.fingerprint == b.fingerprint
    ids = b.ids()
    np.testing.assert_array_equal(a.ids(), ids)
    assert a.products(ids) == b.products(ids)
    for pid in ids[::37].tolist():
        assert a.product(pid) == b.product(pid)
    shuffled = np.random.default_rng(0).permutation(ids)[:50]
    assert a.products(shuffled) == b.products(shuffled)
    grid = shuffled[:12].reshape(3, 4)
    np.testing.assert_array_equal(a.category_ids(grid), b.category_ids(grid))
    for offset, limit in ((0, 100), (7, 3), (len(b) - 2, 10), (len(b), 5), (0, 0)):
        assert a.page(offset, limit) == b.page(offset, limit)
    assert list(iter_products(a, 3, page_size=64)) == list(iter_products(b, 3, page_size=64))
    cats = np.unique(b.category_ids(ids)).tolist()
    for c in [*cats, 123456789]:
        assert a.category_path(c) == b.category_path(c)
        assert a.by_category(c, 0, None) == b.by_category(c, 0, None)
        for offset, limit in ((0, 10), (3, 4), (10**6, 5)):
            assert a.by_category(c, offset, limit) == b.by_category(c, offset, limit)
    for bad in (10**15, "abc", None):
        with pytest.raises(UnknownProductError):
            a.product(bad)
    with pytest.raises(UnknownProductError, match="not in the catalogue"):
        a.products([int(ids[0]), 10**15])


def test_same_answers_as_the_parquet_catalogue(sample_dir):
    columnar = ColumnarCatalogue.open(sample_dir)
    assert isinstance(columnar, Catalogue)
    assert_same_answers(columnar, ParquetCatalogue.open(sample_dir))
    assert not columnar.ids().flags.writeable  # a view of the read-only map


def test_unknown_categories_bad_pictures_and_unsorted_ids(sample_dir, tmp_path):
    """What the sample lacks: products without a category (or its names), bad pictures,
    ids out of order."""
    df = pd.read_parquet(sample_dir / cat.CATALOGUE).sample(frac=1, random_state=1)
    df = df.reset_index(drop=True)
    df.loc[:99, "category_id"] = pd.NA
    df.loc[:99, list(cat.LEVELS)] = pd.NA
    nameless = df["category_id"] == df["category_id"][200]
    df.loc[nameless, "category_level2"] = pd.NA  # a category without all its names
    df["bad_images"] = [[1, 3] if i % 7 == 0 else [] for i in range(len(df))]
    write_catalogue(tmp_path / "odd", df)
    columnar = ColumnarCatalogue.open(tmp_path / "odd")
    parquet = ParquetCatalogue.open(tmp_path / "odd")
    assert_same_answers(columnar, parquet)
    assert columnar.product(int(df.product_id[0])).category_id is None
    assert columnar.product(int(df.product_id[7])).bad_images == (1, 3)


def test_a_stale_file_is_rewritten_and_a_fresh_one_is_not(sample_dir, tmp_path):
    folder = tmp_path / "catalogue"
    shutil.copytree(sample_dir, folder)
    (folder / SERVING_FILE).unlink(missing_ok=True)
    first = ColumnarCatalogue.open(folder)
    stat = (folder / SERVING_FILE).stat()
    ColumnarCatalogue.open(folder)
    again = (folder / SERVING_FILE).stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # written once

    # The catalogue is rebuilt in its folder with fewer products: the file is stale.
    df = pd.read_parquet(folder / cat.CATALOGUE).iloc[::2].reset_index(drop=True)
    write_catalogue(folder, df)
    fresh = ColumnarCatalogue.open(folder)
    assert len(fresh) == len(df) == len(first) // 2
    assert (folder / SERVING_FILE).stat().st_ino != stat.st_ino
    assert_same_answers(fresh, ParquetCatalogue.open(folder))
    assert len(first) == 2 * len(df)  # a reader of the old file keeps its own map

    # A file of another format (or damaged) is rewritten too.
    (folder / SERVING_FILE).write_bytes(b"not arrow")
    assert len(ColumnarCatalogue.open(folder)) == len(df)


def test_an_unfinished_catalogue_is_refused(tmp_path):
    with pytest.raises(cat.CatalogueError, match="no finished catalogue"):
        ColumnarCatalogue.open(tmp_path)


N_LARGE = 1_000_000


@pytest.fixture(scope="module")
def large_dir(tmp_path_factory):
    """A 1 M-product catalogue: 50 categories with names, some bad pictures."""
    rng = np.random.default_rng(0)
    cats = rng.integers(0, 50, N_LARGE)
    has_bad = np.arange(N_LARGE) % 97 == 0
    bad = pa.ListArray.from_arrays(np.concatenate([[0], np.cumsum(has_bad)]).astype(np.int32),
                                   pa.array(np.zeros(has_bad.sum(), np.int16)))
    table = pa.table({
        "product_id": np.cumsum(rng.integers(1, 4, N_LARGE)),
        "category_id": cats + 1000,
        "n_images": rng.integers(1, 5, N_LARGE).astype(np.int16),
        "bad_images": bad,
        "offset": np.arange(N_LARGE, dtype=np.int64) * 5000,
        "length": np.full(N_LARGE, 5000, np.int32),
        **{lvl: pa.array(np.array([f"level{i} {c}" for c in range(50)])[cats])
           for i, lvl in enumerate(cat.LEVELS, 1)},
    })
    folder = tmp_path_factory.mktemp("large") / "catalogue"
    write_catalogue(folder, table)
    ColumnarCatalogue.open(folder)  # written once here, outside the measurement
    return folder


def opened_memory(open_it) -> int:
    """Bytes a catalogue allocates to open and answer a few lookups: Python objects and
    numpy buffers (tracemalloc) plus Arrow's own pool, not the pages of a mapped file."""
    gc.collect()
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        catalogue = open_it()
        ids = catalogue.ids()
        for pid in ids[:: len(ids) // 50].tolist():
            catalogue.product(pid)
        catalogue.by_category(1007, 500, 20)
        catalogue.page(len(catalogue) // 2, 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak + max(0, pa.total_allocated_bytes() - arrow_before)


def test_opening_a_large_catalogue_makes_no_per_product_objects(large_dir):
    mapped = opened_memory(lambda: ColumnarCatalogue.open(large_dir))
    # One int64 column of 1 M products is 8 MB: opening must not copy even one (the
    # Parquet catalogue allocates about 430 MB here, 50 s under tracemalloc: not run).
    assert mapped < 1_000_000, f"{mapped / 1e6:.1f} MB allocated to open a mapped catalogue"

    def copying() -> ColumnarCatalogue:
        c = ColumnarCatalogue.open(large_dir)
        c.copy = np.array(c.ids())  # what materialising one column would cost
        return c

    assert opened_memory(copying) > 8_000_000 > 8 * mapped  # the measure sees a copy
