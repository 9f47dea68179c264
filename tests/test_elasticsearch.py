"""Elasticsearch engine against a real node, started here once for the module.

The node is the Maven Central test distribution (helpers/services/elasticsearch.py): fetched
and unpacked on first use, started as a system user when the tests run as root. It starts in the
background while the built-in sample (1,000 products, 10 categories) is embedded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import run_all
from helpers.catalogue.protocol import ParquetCatalogue, Product
from helpers.core import ids as item_ids
from helpers.core.errors import ServiceUnavailable
from helpers.core.paths import SAMPLE_BSON, SAMPLE_CATEGORIES
from helpers.evaluate.metrics import recall_at_k
from helpers.index import (
    CategoryError,
    DimensionError,
    DuplicateIdError,
    InvalidKError,
    InvalidVectorError,
    UnknownIdError,
    build_index,
    load_index,
)
from helpers.index.elasticsearch_index import BulkIndexError, ElasticsearchUnavailable, connect
from helpers.ingest import scan as cat
from helpers.models import load_extractor
from helpers.services.servers import free_port, start_elasticsearch, wait_for_elasticsearch
from helpers.vectors.embed import embed_catalogue

# The stated setting of the recall test: recall@10 >= 0.95 against the exact top 10.
NUM_CANDIDATES = 50
K = 10


@pytest.fixture(scope="module")
def _node_starting():
    server = start_elasticsearch(wait=False)
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def sample(_node_starting, tmp_path_factory):
    """Vectors of the built-in sample (ONNX MobileNetV2, 180 px, product level)."""
    folder = tmp_path_factory.mktemp("es-sample")
    cat.build_catalogue(SAMPLE_BSON, folder / "catalogue", SAMPLE_CATEGORIES, progress=False)
    df = cat.load_catalogue(folder / "catalogue")
    store = embed_catalogue(ParquetCatalogue(df), SAMPLE_BSON,
                            load_extractor("mobilenet_v2", "onnx"), folder / "vectors",
                            image_size=180, progress=False)
    catalogue = ParquetCatalogue(df)
    ids = np.asarray(store.item_ids, np.int64)
    return {"vectors": np.asarray(store.vectors), "ids": ids,
            "cats": catalogue.category_ids(ids), "catalogue": catalogue,
            "source": store.made_by}


@pytest.fixture(scope="module")
def node(_node_starting, sample):
    return wait_for_elasticsearch(_node_starting)


@pytest.fixture(scope="module")
def index(node, sample):
    return build_index("elasticsearch", sample["vectors"], sample["ids"], sample["cats"],
                       url=node.url, index="vps-test", source=sample["source"],
                       catalogue=sample["catalogue"], recreate=True,
                       num_candidates=NUM_CANDIDATES)


def test_bulk_count_and_idempotent_reindex(node, sample, index):
    assert len(index) == len(sample["ids"]) == 1000
    again = build_index("elasticsearch", sample["vectors"], sample["ids"], sample["cats"],
                        url=node.url, index="vps-test", source=sample["source"],
                        catalogue=sample["catalogue"])  # same settings: reused, overwritten
    assert len(again) == len(index) == 1000
    # The documents carry the catalogue's fields.
    pid = int(sample["ids"][0])
    doc = index.client.get(index="vps-test", id=str(pid))["_source"]
    p = sample["catalogue"].product(pid)
    assert doc["product_id"] == pid and doc["category_id"] == p.category_id
    assert doc["category_level3"] == p.category_path[2] and doc["n_images"] == p.n_images


def test_knn_filter_returns_k_all_in_category(sample, index):
    cats, ids = sample["cats"], sample["ids"]
    c = int(cats[0])
    members = set(ids[cats == c].tolist())
    assert len(members) > K
    res = index.search(sample["vectors"][:5], K, category=c)
    assert (res.ids >= 0).all() and res.ids.shape == (5, K)
    assert set(res.ids.ravel().tolist()) <= members
    # The category of product X, as the notebook asks it.
    res = index.search_by_id(ids[:3], K, category=[c])
    assert set(res.ids.ravel().tolist()) <= members and (res.ids >= 0).all()


def test_search_by_id_leaves_the_product_out(sample, index):
    ids = sample["ids"][:20]
    res = index.search_by_id(ids, K)
    assert res.ids.shape == (20, K) and (res.ids >= 0).all()
    assert not (res.ids == ids[:, None]).any()
    # Its neighbours are those of its own vector, minus itself.
    plain = index.search(sample["vectors"][:20], K + 1)
    assert (plain.ids[:, 0] == ids).mean() >= 0.95
    assert recall_at_k(res.ids, plain.ids[:, 1:], K) >= 0.95


def test_knn_recall_against_exact(sample, index):
    q = sample["vectors"]
    exact = index.search_exact(q, K)
    # The yardstick is exact: it agrees with numpy brute force.
    ref = build_index("exact", q, sample["ids"]).search(q, K)
    assert recall_at_k(exact.ids, ref.ids, K) >= 0.999
    np.testing.assert_allclose(exact.scores[:, 0], ref.scores[:, 0], atol=1e-4)
    index.params["num_candidates"] = NUM_CANDIDATES
    recall = recall_at_k(index.search(q, K).ids, exact.ids, K)
    assert recall >= 0.95, f"recall@10 = {recall:.3f} at num_candidates={NUM_CANDIDATES}"


def test_add_remove_and_padding(node, sample):
    v, ids, cats = sample["vectors"][:200], sample["ids"][:200], sample["cats"][:200]
    ix = build_index("elasticsearch", v[:150], ids[:150], cats[:150], url=node.url,
                     index="vps-test-mutate", recreate=True, num_candidates=200)
    new = ids[150:153]
    ix.add(v[150:153], new, np.full(3, 99))
    assert len(ix) == 153
    with pytest.raises(DuplicateIdError):
        ix.add(v[150:151], new[:1], [99])
    # Filter contract: a category of 3 items gives 3 results and 7 padded slots.
    res = ix.search(v[150:151], K, category=99)
    assert sorted(res.ids[0, :3].tolist()) == sorted(new.tolist())
    assert (res.ids[0, 3:] == -1).all() and np.isneginf(res.scores[0, 3:]).all()
    assert res.ids[0, 0] == new[0] and res.scores[0, 0] > 0.99
    ix.remove(new[:2])
    assert len(ix) == 151
    assert not np.isin(new[:2], ix.search(v[150:153], K).ids).any()
    with pytest.raises(UnknownIdError):
        ix.remove(new[:1])
    ix.drop()


def test_replicas_one_node_cannot_hold_leave_it_yellow_and_answering(node, sample):
    """replicas=1 on one node: the replicas stay unassigned, so the load waits for yellow
    (not for a green that cannot come) and every search is answered by the primaries."""
    v, ids = sample["vectors"][:50], sample["ids"][:50]
    ix = build_index("elasticsearch", v, ids, url=node.url, index="vps-test-replica",
                     recreate=True, replicas=1)
    health = ix.client.cluster.health(index=ix.index)
    assert (health["status"], health["unassigned_shards"], len(ix)) == ("yellow", 1, 50)
    assert (ix.search(v[:5], K).ids >= 0).all()
    ix.drop()


def test_image_level_documents_name_their_product(node, sample):
    pids = sample["ids"][:20]
    item = item_ids.encode(np.repeat(pids, 2), np.tile([0, 1], 20))
    v = np.repeat(sample["vectors"][:20], 2, axis=0) + 0.01 * np.tile([[0.0], [1.0]], (20, 1))
    ix = build_index("elasticsearch", v, item, np.repeat(sample["cats"][:20], 2), url=node.url,
                     level="image", catalogue=sample["catalogue"], recreate=True)
    assert ix.index.endswith("-image") and len(ix) == 40
    doc = ix.client.get(index=ix.index, id=str(item[3]))["_source"]
    p = sample["catalogue"].product(int(pids[1]))
    assert (doc["product_id"], doc["image_index"]) == (p.product_id, 1)
    assert doc["category_level1"] == p.category_path[0]
    # The product's other picture is its nearest neighbour.
    assert ix.search_by_id(item[2], 1).ids[0, 0] == item[3]
    ix.drop()


def test_refused_documents_are_reported_by_id(node, sample):
    bad = {int(i) for i in sample["ids"][[3, 7]]}

    class Overflowing:  # n_images is a `short`: 40,000 is refused by the node
        def products(self, ids):
            return [Product(int(p), 1, None, 40_000 if int(p) in bad else 1) for p in ids]

    with pytest.raises(BulkIndexError, match="2 documents refused") as e:
        build_index("elasticsearch", sample["vectors"][:10], sample["ids"][:10],
                    url=node.url, index="vps-test-refused", recreate=True,
                    catalogue=Overflowing())
    assert set(e.value.failures) == bad
    assert all("n_images" in why for why in e.value.failures.values())


def test_bad_input_gets_the_protocols_errors(node, sample, index):
    q = sample["vectors"][:2]
    with pytest.raises(DimensionError):
        index.search(q[:, :10], K)
    bad = q.copy()
    bad[0, 3] = np.nan
    with pytest.raises(InvalidVectorError):
        index.search(bad, K)
    with pytest.raises(InvalidKError):
        index.search(q, 0)
    with pytest.raises(UnknownIdError):
        index.search_by_id([-5], K)
    with pytest.raises(UnknownIdError):
        index.search_by_id([int(sample["ids"].max()) + 1], K)
    plain = build_index("elasticsearch", q, [1, 2], url=node.url, index="vps-test-nocat",
                        recreate=True)
    with pytest.raises(CategoryError):
        plain.search(q, 1, category=3)
    plain.drop()


def test_save_load_keeps_name_and_settings(node, sample, index, tmp_path):
    index.params["num_candidates"] = 77
    path = index.save(tmp_path / "es")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["elasticsearch"] == {"url": node.url, "index": "vps-test"}
    back = load_index(path, expect_source={"model": sample["source"]["model"]})
    assert back.index == "vps-test" and back.params["num_candidates"] == 77
    assert back.build_params == index.build_params and len(back) == len(index)
    q = sample["vectors"][:5]
    assert (back.search(q, K).ids == index.search(q, K).ids).all()


def test_server_down_is_one_clear_error(sample):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ElasticsearchUnavailable, match=f"no Elasticsearch answers at {url}"):
        connect(url)
    with pytest.raises(ServiceUnavailable, match="make es"):
        build_index("elasticsearch", sample["vectors"][:2], [1, 2], url=url)


def test_notebook_05_ok_with_node_skipped_without(node, cdiscount_bson, cdiscount_categories,
                                                 tmp_path):
    base = ["--bson", str(cdiscount_bson), "--categories", str(cdiscount_categories),
            "--only", "05", "--out", str(tmp_path), "-p", "image_size", "180"]
    assert run_all.main([*base, "--name", "up", "-p", "es_url", node.url]) == 0
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_all.main([*base, "--name", "down", "-p", "es_url", dead]) == 0
    rows = {}
    for name in ("up", "down"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        rows[name] = summary["notebooks"][0]
    assert rows["up"]["status"] == "ok", rows["up"]
    assert rows["down"]["status"] == "skipped" and dead in rows["down"]["note"]
    assert "make es" in rows["down"]["note"]


def test_node_killed_mid_bulk_then_rerun(node, sample):
    """Kill -9 the node after 3 acknowledged chunks: retries, one clear error; restart the
    node on the same data; the re-run completes with no duplicates."""
    v, ids, cats = sample["vectors"], sample["ids"], sample["cats"]
    args = dict(url=node.url, index="vps-test-crash", source=sample["source"],
                chunk_size=100)
    build_index("elasticsearch", v[:1], ids[:1], cats[:1], recreate=True, **args)

    def kill_after_three(done: int) -> None:
        if done == 300:
            node.kill()

    with pytest.raises(ElasticsearchUnavailable, match="after indexing 300 of 1,000") as e:
        build_index("elasticsearch", v, ids, cats, max_retries=2, initial_backoff=0.2,
                    on_chunk=kill_after_three, **args)
    assert node.url in str(e.value) and "re-run" in str(e.value)
    node.restart()
    again = build_index("elasticsearch", v, ids, cats, **args)
    assert len(again) == 1000
    counts = again.client.search(index="vps-test-crash", size=0, aggs={
        "dup": {"terms": {"field": "product_id", "min_doc_count": 2, "size": 1}}})
    assert counts["aggregations"]["dup"]["buckets"] == []
    assert (again.search_by_id(ids[:3], K).ids >= 0).all()
