"""Dask partitions: same documents, same catalogue, same vectors as one process; resumes.

Clusters here are small LocalClusters (2 workers); threads (processes=False) where the
point is the partitioning, real processes where a worker process must die.
"""

from __future__ import annotations

import random
from pathlib import Path

import bson
import numpy as np
import pandas as pd
import pytest

from helpers.catalogue.protocol import ParquetCatalogue
from helpers.ingest import bson_store
from helpers.ingest import scan as cat
from helpers.scale import distributed as dist
from helpers.vectors.embed import embed_catalogue
from helpers.vectors.sharded import ShardedMatrix, ShardedVectorStore, open_vectors
from helpers.vectors.store import VectorStore

SMALL = 40_000  # bytes per partition: the 631 KB real sample becomes ~16 Dask tasks


def _frames(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return cat.load_catalogue(out), cat.load_rejects(out)


def _assert_same_catalogue(a: Path, b: Path) -> None:
    for x, y in zip(_frames(a), _frames(b), strict=True):
        pd.testing.assert_frame_equal(x, y)


@pytest.fixture(scope="module")
def mixed(cdiscount_bson, sample_bson, tmp_path_factory) -> Path:
    """Real Cdiscount documents, then built-in ones, then a truncated tail."""
    real = cdiscount_bson.read_bytes()
    fashion = sample_bson.read_bytes()[: bson_store.find_document_start(sample_bson, 300_000)]
    last = bson.encode(next(bson_store.iter_records(cdiscount_bson)).doc | {"_id": 99})
    path = tmp_path_factory.mktemp("mixed") / "mixed.bson"
    path.write_bytes(real + fashion + last[: len(last) // 2])
    return path


def _key(r: bson_store.Record) -> tuple:
    return r.offset, r.length, r.error, None if r.doc is None else r.doc["_id"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partitions_give_exactly_the_sequential_read(mixed, seed):
    whole = [_key(r) for r in bson_store.iter_records(mixed)]
    assert whole[-1][2].startswith("truncated")  # the tail is read, as a reject
    size = mixed.stat().st_size
    rng = random.Random(seed)
    # Cut points anywhere: inside JPEGs, inside length prefixes, at the truncated tail.
    cuts = sorted({rng.randrange(1, size) for _ in range(25)} | {size - 3})
    starts = sorted({0, *(bson_store.find_document_start(mixed, c) for c in cuts), size})
    pieces = [_key(r) for a, b in zip(starts, starts[1:], strict=False)
              for r in bson_store.iter_records(mixed, a, b)]
    assert pieces == whole  # nothing lost, nothing twice, same order
    for parts in (2, 5, 16):
        offs = bson_store.partition_offsets(mixed, parts)
        assert [_key(r) for a, b in zip(offs, offs[1:], strict=False)
                for r in bson_store.iter_records(mixed, a, b)] == whole


def _local(path: Path, out: Path, cats: Path | None, **kw) -> cat.CatalogueSummary:
    kw = {"workers": 2, "processes": False, "partition_bytes": SMALL, "progress": False} | kw
    return dist.build_catalogue(path, out, cats, **kw)


def test_local_cluster_equals_single_process_real(cdiscount_bson, cdiscount_categories,
                                                  tmp_path):
    one = cat.build_catalogue(cdiscount_bson, tmp_path / "one", cdiscount_categories,
                              progress=False)
    many = _local(cdiscount_bson, tmp_path / "dask", cdiscount_categories)
    assert many.documents == one.documents == 82 and many.images_kept == 110
    _assert_same_catalogue(tmp_path / "one", tmp_path / "dask")
    # the standard build accepts it as finished: no second pass over the file
    again = cat.build_catalogue(cdiscount_bson, tmp_path / "dask", cdiscount_categories,
                                progress=False)
    assert again.seconds == many.seconds


def test_local_cluster_equals_single_process_builtin(sample_bson, sample_categories,
                                                     tmp_path):
    cat.build_catalogue(sample_bson, tmp_path / "one", sample_categories, progress=False)
    s = _local(sample_bson, tmp_path / "dask", sample_categories, partition_bytes=500_000)
    assert s.products_kept >= 1000 and s.categories == 10
    _assert_same_catalogue(tmp_path / "one", tmp_path / "dask")


def test_damaged_file_with_truncated_tail(mixed, cdiscount_categories, tmp_path):
    cat.build_catalogue(mixed, tmp_path / "one", cdiscount_categories, progress=False)
    s = _local(mixed, tmp_path / "dask", cdiscount_categories)
    assert s.rejects_by_reason.get("truncated") == 1
    _assert_same_catalogue(tmp_path / "one", tmp_path / "dask")


def test_interrupted_run_resumes_to_same_result(cdiscount_bson, cdiscount_categories,
                                                tmp_path):
    cat.build_catalogue(cdiscount_bson, tmp_path / "one", cdiscount_categories, progress=False)
    out = tmp_path / "dask"
    part = _local(cdiscount_bson, out, cdiscount_categories, checkpoint_every=2, stop_after=1)
    assert not (out / cat.CATALOGUE).exists() and 0 < part.documents < 82
    _local(cdiscount_bson, out, cdiscount_categories, checkpoint_every=2)
    _assert_same_catalogue(tmp_path / "one", out)
    assert not (out / cat.WORK).exists()  # shards merged, work folder gone


def test_killed_worker_resumes_to_same_result(cdiscount_bson, cdiscount_categories,
                                              tmp_path):
    """Real worker processes; one task kills its own process mid-range (os._exit)."""
    cat.build_catalogue(cdiscount_bson, tmp_path / "one", cdiscount_categories, progress=False)
    out = tmp_path / "dask"
    # 4 ranges: the first task to reach 2 checkpoints of 3 documents exits its process.
    s = _local(cdiscount_bson, out, cdiscount_categories, processes=True,
               partition_bytes=170_000, checkpoint_every=3, crash_after=2)
    assert (out / dist.CRASH_MARKER).exists()  # a worker process did die mid-range
    assert not (out / cat.WORK).exists() and s.documents == 82
    _assert_same_catalogue(tmp_path / "one", out)


# ------------------------------------------------------------------ embedding shards


@pytest.fixture(scope="module")
def sample_catalogue(sample_bson, sample_categories, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cat")
    cat.build_catalogue(sample_bson, out, sample_categories, progress=False)
    return out


def _embed(cat_dir: Path, bson_path: Path, out: Path, **kw) -> ShardedVectorStore:
    kw = {"image_size": 64, "workers": 2, "processes": False, "partition_bytes": 700_000,
          "progress": False} | kw
    return dist.embed_catalogue(cat_dir, bson_path, "onnx", out, **kw)


@pytest.mark.parametrize("level", ["product", "image"])
def test_sharded_vectors_equal_single_store(sample_catalogue, sample_bson, tmp_path, level):
    from helpers.models import load_extractor

    df = cat.load_catalogue(sample_catalogue)
    single = embed_catalogue(ParquetCatalogue(df), sample_bson,
                             load_extractor("mobilenet_v2", "onnx"), tmp_path / "one",
                             image_size=64, level=level, progress=False)
    sharded = _embed(sample_catalogue, sample_bson, tmp_path / "dask", level=level)
    assert len(sharded.shards) > 1 and len(sharded) == len(single)
    assert sharded.dim == single.dim == 1280
    np.testing.assert_array_equal(sharded.item_ids, single.item_ids)
    np.testing.assert_array_equal(sharded.product_ids, single.product_ids)
    np.testing.assert_array_equal(sharded.image_index, single.image_index)
    np.testing.assert_allclose(np.asarray(sharded.vectors), single.vectors, atol=1e-5)
    assert sharded.made_by == single.made_by
    assert sharded.id == single.id  # the same content id: indexes accept either store
    some = int(single.item_ids[len(single) // 2])
    np.testing.assert_allclose(sharded.vector(some), single.vector(some), atol=1e-5)


def test_embedding_resumes_only_missing_shards(sample_catalogue, sample_bson, tmp_path):
    first = _embed(sample_catalogue, sample_bson, tmp_path)
    ref = np.asarray(first.vectors).copy()
    shards = [tmp_path / s["path"] for s in first.shards]
    # A killed run: no manifest, one shard half-written (meta says unfinished), one gone.
    (tmp_path / "shards.json").unlink()
    meta = (shards[0] / "meta.json").read_text().replace('"complete": true',
                                                         '"complete": false')
    (shards[0] / "meta.json").write_text(meta)
    import shutil

    shutil.rmtree(shards[1])
    kept = {p: (p / "vectors.f32").stat().st_mtime_ns for p in shards[2:]}
    with pytest.raises(Exception, match="no finished sharded"):
        ShardedVectorStore(tmp_path)
    again = _embed(sample_catalogue, sample_bson, tmp_path)
    np.testing.assert_allclose(np.asarray(again.vectors), ref, atol=1e-5)
    assert {p: (p / "vectors.f32").stat().st_mtime_ns for p in shards[2:]} == kept


# ------------------------------------------------------------------ the sharded matrix


def test_sharded_matrix_reads_like_one_array():
    rng = np.random.default_rng(0)
    blocks = [rng.random((n, 4), dtype=np.float32) for n in (5, 0, 3, 7)]
    whole = np.concatenate(blocks)
    m = ShardedMatrix(blocks, 4)
    assert m.shape == (15, 4) and len(m) == 15
    np.testing.assert_array_equal(np.asarray(m), whole)
    for key in (0, 6, -1, slice(2, 4), slice(3, 12), slice(None, None, 2), [14, 0, 7],
                np.arange(15) % 2 == 0, (slice(1, 9), 2)):
        np.testing.assert_array_equal(m[key], whole[key])
    assert np.shares_memory(m[5:8], blocks[2])  # inside one shard: a view
    got = list(m.chunks(4))
    assert [s for s, _ in got] == [0, 4, 5, 8, 12]
    np.testing.assert_array_equal(np.concatenate([c for _, c in got]), whole)
    with pytest.raises(IndexError):
        m[15]


def test_open_vectors_and_unknown_id(sample_catalogue, sample_bson, tmp_path):
    store = _embed(sample_catalogue, sample_bson, tmp_path)
    assert isinstance(open_vectors(tmp_path), ShardedVectorStore)
    assert isinstance(open_vectors(tmp_path / store.shards[0]["path"]), VectorStore)
    with pytest.raises(KeyError, match="not in the vector store"):
        store.vector(-5)
    with pytest.raises(Exception, match="other settings"):
        ShardedVectorStore(tmp_path, expect={"image_size": 224})


def test_other_settings_move_old_shards_aside(sample_catalogue, sample_bson, tmp_path):
    first = _embed(sample_catalogue, sample_bson, tmp_path)
    again = _embed(sample_catalogue, sample_bson, tmp_path, image_size=48)
    assert again.made_by["image_size"] == 48 and len(again) == len(first)
    aside = list(tmp_path.glob("shards.stale-*"))
    assert len(aside) == 1 and any(aside[0].iterdir())  # kept, never deleted


def test_run_all_drives_dask(cdiscount_bson, tmp_path):
    """run_all.py --bson ... -p scheduler local -p workers 2: notebook 01 on a LocalCluster."""
    import json

    import run_all

    code = run_all.main(["--bson", str(cdiscount_bson), "--only", "01", "--name", "dask",
                         "--out", str(tmp_path), "-p", "scheduler", "local",
                         "-p", "workers", "2"])
    assert code == 0
    out = (tmp_path / "dask" / "01_preprocess.ipynb").read_text()
    assert "Dask dashboard: http" in out and "documents read: 82" in out
    summary = json.loads((tmp_path / "dask" / "summary.json").read_text())
    assert summary["parameters"]["scheduler"] == "local"


def test_in_process_workers_are_not_paused_by_the_callers_memory(sample_bson, sample_categories,
                                                                 tmp_path):
    """processes=False shares the caller's memory (a notebook or this test runner holding
    models): a per-worker limit would pause the workers, and the build would wait for ever."""
    import time

    hog = np.ones((3 << 30) // 8)  # 3 GiB resident in this process, above the 2 GiB limit
    with dist.dask_client(None, 2, dist.DEFAULT_MEMORY, False, lambda *_: None) as client:
        time.sleep(1.0)  # several ticks of the workers' memory monitor (100 ms)
        status = {w["status"] for w in client.scheduler_info()["workers"].values()}
        assert status == {"running"}, status
    s = _local(sample_bson, tmp_path / "dask", sample_categories, partition_bytes=1_000_000)
    assert s.products_kept >= 1000 and hog[-1] == 1
