"""helpers.evaluate.compare on synthetic vectors: every method measured, table, files, advice;
the product mean, the method strings, the knob sweep and the recall-vs-QPS plot it uses."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers.catalogue.protocol import ParquetCatalogue
from helpers.core.errors import MethodUnavailable, ServiceUnavailable
from helpers.core.ids import encode
from helpers.evaluate import compare, footprint, sweep
from helpers.evaluate.compare import plots as compare_plots
from helpers.vectors.means import product_means


class _Workspace:
    def __init__(self, root):
        self.root = root

    def index_dir(self, name):
        return self.root / "index" / name


def _data(n_products=300, n_cats=6, dim=32, seed=0):
    """Products in n_cats clustered categories; 1-3 pictures each (noisy copies)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_cats, dim)) * 3
    cats = np.arange(n_products) % n_cats
    base = centres[cats] + rng.normal(size=(n_products, dim))
    n_pics = rng.integers(1, 4, n_products)
    pids = np.repeat(np.arange(1000, 1000 + n_products), n_pics)
    idx = np.concatenate([np.arange(c) for c in n_pics])
    vecs = np.repeat(base, n_pics, axis=0) + 0.3 * rng.normal(size=(len(pids), dim))
    df = pd.DataFrame({"product_id": np.arange(1000, 1000 + n_products),
                       "category_id": 500 + cats,
                       "category_level1": np.where(cats < 3, "A", "B"),
                       "category_level2": "x",
                       "category_level3": [f"cat{c}" for c in cats],
                       "n_images": n_pics, "offset": -1, "length": -1, "bad_images": None})
    v = compare.Vectors.from_pictures("onnx-224", encode(pids, idx), vecs.astype(np.float32))
    return ParquetCatalogue(df), v


def test_parse_method():
    m = compare.parse_method("onnx-180/hnsw")
    assert (m.model, m.image_size, m.kind, m.embedding) == ("onnx", 180, "hnsw", "onnx-180")
    assert m.name == "onnx-180/hnsw" and m.index is None and not m.available
    with pytest.raises(compare.MethodError, match="expected"):
        compare.parse_method("hnsw")
    with pytest.raises(compare.MethodError, match="not one of"):
        compare.parse_method("onnx-224/kdtree")


def test_default_methods_take_in_new_runtimes_and_networks(monkeypatch):
    import helpers.models

    base = list(compare.DEFAULT_METHODS)
    assert compare.default_methods()[: len(base)] == base
    monkeypatch.setattr(helpers.models, "RUNTIMES", {"onnx": 1, "tf": 2, "openvino": 3})
    monkeypatch.setattr(helpers.models, "NETS", {"mobilenet_v2": 1})
    assert compare.default_methods()[-2:] == ["openvino-224/exact", "openvino-180/exact"]
    monkeypatch.setattr(helpers.models, "NETS", {"mobilenet_v2": 1, "effnet": 2})
    assert compare.default_methods()[-4:] == ["openvino-224/exact", "openvino-180/exact",
                                              "effnet-224/exact", "effnet-180/exact"]


def test_product_means_are_means_of_unit_pictures():
    v = np.array([[2.0, 0], [0, 3.0], [0, 1.0]], np.float32)
    pids, means = product_means(np.array([7, 7, 9]), v)
    assert pids.tolist() == [7, 9]
    assert means.tolist() == [[0.5, 0.5], [0.0, 1.0]]
    # pictures of a product apart: the same means, products in order of first picture
    pids, means = product_means(np.array([9, 7, 7, 9]), np.vstack([v[2], v[0], v[1], v[2]]))
    assert pids.tolist() == [9, 7] and means.tolist() == [[0.0, 1.0], [0.5, 0.5]]
    # the comparison's product level is that mean, products ascending
    got = compare.Vectors.from_pictures("e-1", encode([9, 7, 7], [0, 0, 1]), v[[2, 0, 1]])
    assert got.product_ids.tolist() == [7, 9]
    assert got.product_vectors.tolist() == [[0.5, 0.5], [0.0, 1.0]]


def test_category_frame_reads_the_catalogue_protocol():
    cat, v = _data(n_products=12)
    frame = compare.category_frame(cat, v.product_ids[:4])
    assert frame.columns.tolist() == ["product_id", "category_id", "level1", "category"]
    assert frame["category_id"].tolist() == [500, 501, 502, 503]
    assert frame["level1"].tolist() == ["A", "A", "A", "B"]
    assert frame["category"].tolist() == ["cat0", "cat1", "cat2", "cat3"]


def _es_answers() -> bool:
    """Whether the Elasticsearch method can run here (its client, a node at the default URL)."""
    try:
        from helpers.index.elasticsearch_index import connect
    except ModuleNotFoundError:
        return False
    try:
        connect(timeout=5).close()
    except ServiceUnavailable:
        return False
    return True


def _ok_here(methods):
    """The methods expected to run here: all but Elasticsearch where no node answers."""
    return {m for m in methods if not m.endswith("/elasticsearch") or _es_answers()}


def test_compare_every_index_and_skip(tmp_path):
    df, v = _data()
    measured = ["onnx-224/exact", "onnx-224/flat", "onnx-224/ivf", "onnx-224/hnsw",
                "onnx-224/ivfpq", "onnx-224/annoy", "onnx-224/elasticsearch"]
    methods = [*measured, "nope-224/exact"]
    lines = []

    def vectors_of(m):
        if m.model == "nope":
            compare.load_embedder("nope")  # the real check: no such backend
        return v

    run = compare.compare(_Workspace(tmp_path), df, "x.bson", methods, n_latency=20,
                          measure_memory=False, vectors_of=vectors_of, say=lines.append)
    t = run.table.set_index("method")
    assert (t.loc["nope-224/exact", "status"], t.loc["onnx-224/exact", "status"]) == \
        ("skipped", "ok")
    assert "nope" in t.loc["nope-224/exact", "reason"]
    ok = t[t["status"] == "ok"]
    assert set(ok.index) == _ok_here(measured)
    assert set(t.index[t["status"] == "skipped"]) == set(methods) - _ok_here(measured)
    # Clustered categories: far above chance; exact search is its own truth.
    assert (ok["p@10"] > 3 * ok["chance@10"]).all()
    assert ok.loc["onnx-224/exact", "recall@10"] == 1.0
    assert ok.loc["onnx-224/flat", "recall@10"] == 1.0
    assert ok.loc["onnx-224/exact", "hit@1"] > 0.5
    assert (ok[["build_s", "disk_mb", "p50_ms", "p99_ms", "qps"]] > 0).all().all()
    assert set(run.sweeps) >= {"onnx-224/ivf", "onnx-224/hnsw", "onnx-224/annoy"}
    # one row per query product, the same queries for every method
    assert run.results["onnx-224/exact"][0].shape == (300, 10)
    assert not (run.results["onnx-224/exact"][0] == run.query_ids[:, None]).any()
    worst = compare.worst_categories(run, n=3)
    assert len(worst) == 3
    csv, js = run.save(tmp_path / "out")
    assert len(pd.read_csv(csv)) == len(methods)
    doc = json.loads(js.read_text())
    assert "chance" in doc["advice"] and doc["settings"]["n_products"] == 300
    text = compare.advice(run.table, run.settings)
    assert "precision@10" in text and "Not measured here: " in text and "nope-224/exact (" in text
    for fig in (compare_plots.plot_precision(run.table), compare_plots.plot_cost(run.table)):
        assert fig.axes
    points = run.single_points()
    assert set(points) == set(ok.index) - set(run.sweeps) and "onnx-224/exact" in points
    assert points["onnx-224/exact"][0] == 1.0
    ax = sweep.plot_recall_qps(run.sweeps, k=10, points=points)
    assert len(ax.get_legend().get_texts()) == len(ok)  # a line per sweep, a point per other

    class Images:  # pictures by product id, as helpers.gallery.ProductImages
        def image(self, product_id, image_index=None):
            return np.full((8, 8, 3), product_id % 255, np.uint8)

        def label(self, product_id, width=22):
            return f"cat of {product_id}"

    fig = compare_plots.plot_galleries(run, Images(), int(run.query_ids[0]), k=4)
    assert len(fig.axes) == len(run.results) * 5  # a row per method: query + 4
    assert compare_plots.category_gallery(run, Images(), 500, k=4) is not None
    assert compare_plots.category_gallery(run, Images(), 999) is None  # no such category


def test_knob_sweep_restores_the_knob_and_leaves_the_query_out():
    from helpers.index import build_index

    _, v = _data()
    ids, vecs = v.product_ids, v.product_vectors
    hnsw = build_index("faiss", vecs, ids, factory="HNSW32")
    truth = build_index("exact", vecs, ids).search(vecs, 5).ids
    before = hnsw.params["efSearch"]
    t = sweep.knob_sweep(hnsw, "efSearch", [8, 64], vecs, truth, 5)
    assert t.columns.tolist() == ["knob", "value", "recall", "qps"]
    assert t["value"].tolist() == [8, 64] and (t["knob"] == "efSearch").all()
    assert t["recall"].iloc[-1] >= t["recall"].iloc[0] and (t["qps"] > 0).all()
    assert hnsw.params["efSearch"] == before
    # leaving each query out of its own results, as the comparison does
    exact = build_index("exact", vecs, ids).search(vecs, 6)
    from helpers.evaluate.metrics import drop_self

    truth_out = drop_self(np.asarray(exact.ids), np.asarray(exact.scores), ids)[0][:, :5]
    t = sweep.knob_sweep(hnsw, "efSearch", [256], vecs, truth_out, 5, query_ids=ids,
                         repeat=None)
    assert t["recall"].iloc[0] > 0.95
    ax = sweep.plot_recall_qps({"HNSW32": t}, exact_qps=1000.0, k=5, title="t")
    assert ax.get_title() == "t"


def test_footprint_of_a_saved_index(tmp_path):
    import sys

    from helpers.index import build_index

    # 5 MB of vectors: numpy maps big arrays afresh, so loading them shows in the RSS
    vecs = np.random.default_rng(0).normal(size=(20_000, 64)).astype(np.float32)
    path = build_index("exact", vecs, np.arange(len(vecs))).save(tmp_path / "exact")
    assert footprint.disk_bytes(path) >= vecs.nbytes
    if not sys.platform.startswith("linux"):
        return
    got = footprint.resident_bytes(path, vecs[:20], 5)  # python -m, a child process
    assert got > 0.5 * vecs.nbytes
    assert not list(tmp_path.glob(".*.queries.npy"))  # the child's input, removed


@pytest.mark.parametrize("error", [KeyError(7), IndexError("row 7"),
                                   ModuleNotFoundError("no module", name="helpers.nope")])
def test_a_bug_in_a_method_fails_the_comparison(tmp_path, monkeypatch, error):
    """A KeyError (a LookupError) inside one method's measurement, or a broken import of
    our own code, is a bug: it propagates, it is not the method being "skipped"."""
    df, v = _data(n_products=120)
    from helpers.evaluate.compare import measure

    real = measure.category_precision

    calls: list[int] = []

    def category_precision(*args, **kw):
        calls.append(1)
        if len(calls) == 3:  # the second method's first measurement (2 a method: leaf, level 1)
            raise error
        return real(*args, **kw)

    monkeypatch.setattr(measure, "category_precision", category_precision)
    with pytest.raises(type(error)):
        compare.compare(_Workspace(tmp_path), df, "x.bson", ["onnx-224/exact", "onnx-224/flat"],
                        ks=(10,), n_latency=5, measure_memory=False, vectors_of=lambda m: v,
                        say=lambda s: None)
    assert len(calls) == 3


def test_only_an_absent_engine_is_skipped():
    from helpers.evaluate.compare import run
    from helpers.index.elasticsearch_index import ElasticsearchUnavailable

    assert run._unavailable(ElasticsearchUnavailable("no node"))
    assert run._unavailable(MethodUnavailable("no backend"))
    assert run._unavailable(ModuleNotFoundError("No module 'annoy'", name="annoy"))
    for bug in (KeyError("x"), IndexError("x"), LookupError("x"), ValueError("x"),
                ModuleNotFoundError("x", name="helpers.nope"), ImportError("x")):
        assert not run._unavailable(bug), bug


def _outputs(path):
    import nbformat

    nb = nbformat.read(path, 4)
    outs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   + str(o.get("data", {}).get("text/markdown", "")) for o in outs)
    pngs = sum("image/png" in o.get("data", {}) for o in outs)
    return text, pngs


@pytest.mark.slow
def test_06_on_the_real_sample(cdiscount_bson, cdiscount_categories, tmp_path):
    import run_all

    methods = ["style-180/exact", "onnx-180/exact", "onnx-180/ivf", "onnx-180/hnsw",
               "onnx-180/ivfpq", "onnx-180/annoy", "onnx-180/elasticsearch"]
    rc = run_all.main(["--bson", str(cdiscount_bson), "--categories", str(cdiscount_categories),
                       "--only", "01,06", "--out", str(tmp_path), "-p", "methods", str(methods)])
    assert rc == 0
    run = tmp_path / "train_example"
    text, pngs = _outputs(run / "06_compare.ipynb")
    assert "82 products, 110 pictures" in text and "precision@10 by chance" in text
    assert "ranks best of the exact searches" in text  # the generated advice
    # precision bars, >= 1 worst-category gallery, recall-vs-QPS, cost bars, side by side
    assert pngs >= 5
    table = pd.read_csv(run / "compare.csv").set_index("method")
    ok = table[table.status == "ok"]
    # run_all started a local Elasticsearch node for 06: every method ran, ES included
    assert set(ok.index) == set(methods) == set(table.index)
    assert (ok["p@10"] > ok["chance@10"]).all()
    assert (ok[["build_s", "disk_mb", "p50_ms", "p99_ms", "qps", "hit@1"]].notna()).all().all()
    doc = json.loads((run / "compare.json").read_text())
    assert doc["settings"]["n_products"] == 82 and doc["per_category"]


@pytest.mark.slow
def test_06_on_the_built_in_sample(tmp_path):
    import run_all

    rc = run_all.main(["--only", "01,06", "--out", str(tmp_path), "-p", "limit", "300",
                       "--no-es", "-p", "methods", "['onnx-180/exact', 'onnx-180/hnsw']"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "sample" / "compare.csv").set_index("method")
    assert set(table.index[table.status == "ok"]) == {"onnx-180/exact", "onnx-180/hnsw"}
    exact = table.loc["onnx-180/exact"]
    # Fashion-MNIST's 10 balanced classes: chance is about 0.1, MobileNetV2 far above it.
    assert exact["chance@10"] < 0.15 and exact["p@10"] > 3 * exact["chance@10"]
    assert exact["hit@1"] > 0.5  # another view of the same photo comes back first


def test_a_large_catalogue_is_compared_on_a_seeded_sample_of_products():
    """Above max_products, only the sampled products' pictures are read from the store."""
    from types import SimpleNamespace

    from helpers.core import ids as item_ids
    from helpers.evaluate.compare.inputs import embed, product_sample
    from helpers.evaluate.method import parse_method

    pids = np.arange(100, 130, dtype=np.int64)
    catalogue = ParquetCatalogue(pd.DataFrame({
        "product_id": pids, "category_id": np.arange(30) % 3, "offset": np.arange(30) * 10,
        "length": 10, "n_images": 2, "bad_images": [None] * 30}))
    assert product_sample(catalogue, 30) is None and product_sample(catalogue, None) is None
    chosen = product_sample(catalogue, 7, seed=3)
    assert len(chosen) == 7 and set(chosen) <= set(pids)
    assert (chosen == product_sample(catalogue, 7, seed=3)).all()  # seeded

    image_ids = item_ids.encode(np.repeat(pids, 2), np.tile([0, 1], 30))
    vectors = np.random.default_rng(0).random((60, 8), dtype=np.float32)
    store = SimpleNamespace(item_ids=image_ids, vectors=vectors, made_by={})
    ws = SimpleNamespace(vectors=lambda *a, **kw: store)
    v = embed(ws, catalogue, None, parse_method("onnx-180/exact"), products=chosen)
    assert sorted(v.product_ids) == sorted(chosen)
    assert len(v.image_ids) == 14
    rows = np.flatnonzero(np.isin(image_ids, v.image_ids))
    assert np.allclose(v.image_vectors, vectors[rows])


def test_default_methods_of_a_run_add_only_the_embeddings_it_has(monkeypatch):
    """06 compares what the run made: an extra runtime or network joins the defaults only
    when the run has its vectors (at the same image size), so nothing else is embedded."""
    from types import SimpleNamespace

    from helpers import models

    monkeypatch.setattr(models, "RUNTIMES", {"onnx": 0, "tf": 0, "openvino": 0})
    monkeypatch.setattr(models, "NETS", {"mobilenet_v2": 0, "efficientnet_lite2": 0})
    stores = [SimpleNamespace(made_by={"model": "mobilenet_v2", "runtime": "openvino",
                                       "image_size": 180}),
              SimpleNamespace(made_by={"model": "efficientnet_lite2", "runtime": "onnx",
                                       "image_size": 224}),
              SimpleNamespace(made_by={"model": "mobilenet_v2", "runtime": "onnx",
                                       "image_size": 224})]
    ws = SimpleNamespace(stores=lambda catalogue=None: stores)
    got = compare.default_methods(ws)
    assert got[: len(compare.DEFAULT_METHODS)] == list(compare.DEFAULT_METHODS)
    assert got[len(compare.DEFAULT_METHODS):] == ["openvino-180/exact",
                                                  "efficientnet_lite2-224/exact"]
    assert "openvino-224/exact" in compare.default_methods()  # no run: every extra
