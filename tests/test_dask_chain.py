"""A run built on Dask is found and served like any other, and never embedded again.

01 and 03 run with ``-p scheduler local`` (sharded vectors: no top-level meta.json); then
04, 06 and the apps run with a spy that fails on any embedding of the catalogue: they must
find the Dask run's sharded store through the one artifact finder (helpers.workspace).
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

import run_all

# The spy: every catalogue embedding writes its vectors through embed._write_batch (single
# process and Dask shards alike); a kernel that imports helpers gets it replaced.
SPY = textwrap.dedent('''
    import helpers.vectors.embed as _embed

    def _no_embedding(*args, **kwargs):
        raise AssertionError("spy: the catalogue was embedded again")

    _embed._write_batch = _no_embedding
''')
SIZE = "180"
METHODS = '["onnx-180/exact", "onnx-180/hnsw", "onnx-180/annoy"]'


@pytest.fixture(scope="module")
def dask_run(cdiscount_bson, cdiscount_categories, tmp_path_factory):
    out = tmp_path_factory.mktemp("dask-run")
    code = run_all.main(["--bson", str(cdiscount_bson), "--categories",
                         str(cdiscount_categories), "--only", "01,03", "--out", str(out),
                         "--name", "dask", "-p", "scheduler", "local", "-p", "workers", "2",
                         "-p", "image_size", SIZE, "-p", "level", "image"])
    assert code == 0
    return out


def _shards(work_dir):
    return sorted(p.parent for p in (work_dir / "vectors").glob("*/shards.json"))


@pytest.mark.slow
def test_dask_run_read_by_04_and_06_without_embedding(dask_run, cdiscount_bson,
                                                      cdiscount_categories, tmp_path,
                                                      monkeypatch):
    work = dask_run / "dask" / "artifacts"
    assert len(_shards(work)) == 1 and not list(work.glob("vectors/*/meta.json"))
    (tmp_path / "sitecustomize.py").write_text(SPY)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    code = run_all.main(["--bson", str(cdiscount_bson), "--categories",
                         str(cdiscount_categories), "--only", "04,06", "--no-es",
                         "--out", str(dask_run), "--name", "dask", "-p", "image_size", SIZE,
                         "-p", "level", "image",
                         "-p", "methods", METHODS])
    summary = json.loads((dask_run / "dask" / "summary.json").read_text())
    assert code == 0, summary
    assert len(list((work / "vectors").iterdir())) == 1
    compare = json.loads((dask_run / "dask" / "compare.json").read_text())
    ok = {r["method"] for r in compare["methods"] if r["status"] == "ok"}
    assert ok == {"onnx-180/exact", "onnx-180/hnsw", "onnx-180/annoy"}


@pytest.mark.slow
def test_dask_run_served_by_the_apps_without_embedding(dask_run, monkeypatch):
    import helpers.vectors.embed as embed
    from helpers.serve.loader import load_artifacts
    from helpers.serve.related import Related
    from helpers.vectors import ShardedVectorStore

    def no_embedding(*args, **kwargs):
        raise AssertionError("spy: the catalogue was embedded again")

    monkeypatch.setattr(embed, "_write_batch", no_embedding)
    art = load_artifacts(dask_run / "dask" / "artifacts", methods=("faiss",))
    try:
        m = art.methods["faiss"]
        assert m.available and isinstance(m.store, ShardedVectorStore)
        pid = int(m.store.product_ids[0])
        hits = Related(art).related(pid, 5)
        assert hits and pid not in [h.product_id for h in hits]
    finally:
        art.close()
