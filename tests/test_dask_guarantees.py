"""Dask ingest and embedding keep the single-node guarantees.

- Limits and rejects: a dump with faults of every kind (conftest's ``damaged_sample``,
  after a product of 105 pictures and one with a 300 px picture) is built into a
  catalogue by ``scan.build_catalogue`` and on Dask, under the default limits, lowered
  ones and a skip/limit slice: the same catalogue, rejects and counts. Its embedding,
  single-node and in Dask shards: the same vectors bit for bit, the same ids, the
  same rejects.
- A killed worker: a LocalCluster of 2 worker processes embeds ``damaged_sample``; once a
  shard is finished and another is half done, the worker writing that one is
  SIGKILLed. Dask reruns the task on a live worker, it resumes from the shard's last
  stored batch, and the store equals an uninterrupted run's bit for bit.

Clusters are small (2 workers, one thread each), pictures 32 px: about 50 CPU-seconds in
all, most of them the kill test's three worker processes loading the model (104 s wall
on 2 cores at load 15).
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import bson
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.catalogue.protocol import ParquetCatalogue
from helpers.core import artifacts
from helpers.ingest import bson_store
from helpers.ingest import scan as cat
from helpers.scale import distributed as dist
from helpers.vectors.embed import embed_catalogue
from helpers.vectors.sharded import SHARDS, ShardedVectorStore
from helpers.vectors.store import META, REJECTS, VECTORS

PARTS = 500_000  # bytes per Dask task: ~6 ranges of the 3 MB dumps below
# Lowered limits that this dump's own products cross (the defaults: 16 MiB, 4096 px).
LOWERED = {"verify_images": "decode", "max_doc_bytes": 200_000, "max_image_side": 200}


def _jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 90)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def every_fault(damaged_sample, tmp_path_factory) -> Path:
    """``damaged_sample`` after two more products: 105 pictures (5 past what image ids
    index; ~300 KB, over the lowered document limit) and a 300 px picture beside a
    180 px one (over the lowered side limit)."""
    first = next(bson_store.iter_records(damaged_sample)).doc
    pic = first["imgs"][0]["picture"]
    many = first | {"_id": 10**9 + 10, "imgs": [{"picture": pic}] * 105}
    big = first | {"_id": 10**9 + 11, "imgs": [{"picture": _jpeg(300)}, {"picture": pic}]}
    path = tmp_path_factory.mktemp("every-fault") / "every_fault.bson"
    path.write_bytes(bson.encode(many) + bson.encode(big) + damaged_sample.read_bytes())
    return path


def _catalogue(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], pd.DataFrame]:
    summary = {k: v for k, v in cat.load_meta(out)["summary"].items() if k != "seconds"}
    return cat.load_catalogue(out), cat.load_rejects(out), summary, cat.load_duplicates(out)


@pytest.fixture(scope="module")
def threads_cluster():
    """One in-process cluster of 2 workers for the module (no process start-up)."""
    with dist.dask_client(None, 2, processes=False, report=lambda _: None) as client:
        yield client


@pytest.mark.parametrize("options,reasons", [
    ({}, {"malformed", "truncated", "duplicate_id", "image_over_limit"}),
    (LOWERED, {"malformed", "truncated", "duplicate_id", "document_too_large",
               "image_too_large", "bad_image"}),
    ({"skip": 150, "limit": 300}, {"malformed"}),
], ids=["defaults", "lowered", "slice"])
def test_dask_catalogue_has_the_single_node_limits_and_rejects(every_fault, threads_cluster,
                                                              tmp_path, options, reasons):
    one = cat.build_catalogue(every_fault, tmp_path / "one", None, progress=False, **options)
    many = dist.build_catalogue(every_fault, tmp_path / "dask", None, scheduler=threads_cluster,
                                partition_bytes=PARTS, progress=False, **options)
    assert reasons <= set(one.rejects_by_reason), one.rejects_by_reason  # the faults are met
    if "limit" in options:
        assert one.documents == 300
    one_cat, many_cat = _catalogue(tmp_path / "one"), _catalogue(tmp_path / "dask")
    pd.testing.assert_frame_equal(one_cat[0], many_cat[0])
    pd.testing.assert_frame_equal(one_cat[1], many_cat[1])
    assert one_cat[2] == many_cat[2]
    pd.testing.assert_frame_equal(one_cat[3], many_cat[3])  # the same exact duplicates
    if not options:  # 100 of the 105 copies (image ids index 100) are repeats in one product
        assert one.duplicates["groups"] >= 1 and one.duplicates["repeated_in_product"] == 99
    assert {**asdict(one), "seconds": 0} == {**asdict(many), "seconds": 0}


def test_dask_embedding_has_the_single_node_rejects_and_vectors(every_fault, threads_cluster,
                                                                tmp_path):
    cat.build_catalogue(every_fault, tmp_path / "cat", None, progress=False)
    catalogue = ParquetCatalogue.open(tmp_path / "cat")
    kw = {"image_size": 32, "level": "image", "batch_size": 16}
    one = embed_catalogue(catalogue, every_fault, dist.onnx_extractor()(), tmp_path / "one",
                          progress=False, **kw)
    many = dist.embed_catalogue(tmp_path / "cat", every_fault, "onnx", tmp_path / "dask",
                                scheduler=threads_cluster, partition_bytes=PARTS,
                                progress=False, **kw)
    assert len(many.shards) > 2
    np.testing.assert_array_equal(many.item_ids, one.item_ids)
    assert np.array_equal(np.asarray(many.vectors), one.vectors)  # bit for bit
    assert many.id == one.id and many.made_by == one.made_by
    for key in ("count", "images", "failed_images"):
        assert many.meta[key] == one.meta[key], key
    rejects = pd.read_csv(one.folder / REJECTS)
    assert len(rejects) == one.meta["failed_images"] == 2  # the two fake JPEGs
    pd.testing.assert_frame_equal(pd.read_csv(many.folder / REJECTS), rejects)
    # An option of embed_catalogue's that does not exist: refused before any task runs.
    with pytest.raises(TypeError, match="unknown embedding option.*'imagesize'"):
        dist.embed_catalogue(tmp_path / "cat", every_fault, "onnx", tmp_path / "bad",
                             scheduler=threads_cluster, imagesize=64)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ a worker killed


class CountingFactory:
    """The ONNX extractor recipe; its extractor appends the size of every batch it embeds
    to ``log`` (one line a call, O_APPEND: worker processes share the file)."""

    def __init__(self, log: Path) -> None:
        self.log, self.recipe = str(log), dist.onnx_extractor()

    def __dask_tokenize__(self) -> tuple:  # one model per worker, as for any recipe
        return ("CountingFactory", self.log)

    def __call__(self) -> Counting:
        return Counting(self.recipe(), self.log)


class Counting:
    def __init__(self, inner: Any, log: str) -> None:
        self.inner, self.log, self.dim = inner, log, inner.dim
        self.input_spec = getattr(inner, "input_spec", None)  # the pixels it is given

    def meta(self) -> dict[str, Any]:
        return self.inner.meta()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.inner(batch)
        with open(self.log, "a") as f:
            f.write(f"{len(batch)}\n")
        return out


def _shard_metas(out: Path) -> dict[str, dict]:
    # meta.json is replaced atomically: never read half written
    return {m.parent.name: artifacts.read_json(m) for m in (out / SHARDS).glob("*/" + META)}


def _kill_mid_shard(client: Any, out: Path, totals: dict[str, int], margin: int) -> dict:
    """SIGKILL the worker process writing a shard with ``margin`` pictures stored and
    ``margin`` to go, once another shard is finished. Returns the shards' metas then."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        metas = _shard_metas(out)
        half = [name for name, m in metas.items() if not m["complete"]
                and margin <= m.get("images", 0) <= totals[name] - margin]
        if half and any(m["complete"] for m in metas.values()):
            for addr, keys in client.processing().items():
                if any(f"embed-{half[0]}-" in str(k) for k in keys):
                    os.kill(pids[addr], signal.SIGKILL)
                    return {**metas, "killed": half[0]}
        time.sleep(0.01)
    raise AssertionError(f"no shard was seen half done with another finished: {metas}")


@pytest.mark.slow
def test_worker_killed_mid_embedding_resumes_to_identical_vectors(damaged_sample, tmp_path):
    cat.build_catalogue(damaged_sample, tmp_path / "cat", None, progress=False)
    # 4 shards of ~250 pictures: wide windows to catch one half done
    kw = {"image_size": 32, "batch_size": 8, "partition_bytes": 750_000, "workers": 2,
          "progress": False, "report": lambda _: None}
    ref = dist.embed_catalogue(tmp_path / "cat", damaged_sample, "onnx", tmp_path / "ref",
                               processes=False, **kw)
    totals = {name: m["images"] for name, m in _shard_metas(tmp_path / "ref").items()}
    assert len(totals) >= 4
    batch = kw["batch_size"] + 4  # a batch ends with a whole product: 4 pictures at most
    out, log = tmp_path / "out", tmp_path / "calls.log"
    run: dict[str, Any] = {}

    def embed(client: Any) -> None:
        try:
            run["store"] = dist.embed_catalogue(tmp_path / "cat", damaged_sample,
                                                CountingFactory(log), out, scheduler=client,
                                                **kw)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            run["error"] = exc

    with dist.dask_client(None, 2, processes=True, report=lambda _: None) as client:
        t = threading.Thread(target=embed, args=(client,))
        t.start()
        then = _kill_mid_shard(client, out, totals, margin=2 * batch)
        killed = out / SHARDS / then.pop("killed")
        assert not artifacts.read_json(killed / META)["complete"]  # killed mid-shard
        finished = {d: (out / SHARDS / d / VECTORS).stat().st_mtime_ns
                    for d, m in then.items() if m["complete"]}
        t.join(300)
        assert not t.is_alive(), "the resumed embedding did not finish in 300 s"
    assert "error" not in run, run.get("error")
    store: ShardedVectorStore = run["store"]
    assert np.array_equal(np.asarray(store.vectors), np.asarray(ref.vectors))  # bit for bit
    np.testing.assert_array_equal(store.item_ids, ref.item_ids)
    assert len(np.unique(store.item_ids)) == len(store)  # no id twice, none missing
    assert store.id == ref.id and store.meta["images"] == ref.meta["images"]
    assert (out / REJECTS).read_text() == (tmp_path / "ref" / REJECTS).read_text()
    # finished shards were not embedded again (Dask may rerun the dead worker's finished
    # tasks too: they find their store complete and return it)
    assert {d: (out / SHARDS / d / VECTORS).stat().st_mtime_ns for d in finished} == finished
    # the killed shard resumed from its last stored batch: at most the batch being
    # embedded at the kill was embedded twice, not the pictures stored before it
    embedded = sum(int(n) for n in log.read_text().split())
    assert 0 <= embedded - ref.meta["images"] <= batch < then[killed.name]["images"]
