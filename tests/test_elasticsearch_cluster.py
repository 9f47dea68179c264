"""Elasticsearch past one machine: a real 2-node cluster on loopback (started once for the
module by helpers.services.elasticsearch_cluster), an index of 2 shards with 1 replica each.

kNN, with and without a category filter, answers the exact top k on the cluster (numpy
brute force, helpers.index "exact"); with one node killed (SIGKILL), every query is still
answered in full, from the copies on the node left, the same ids as before.

The vectors are real pictures with real categories at no model cost: the first picture of
400 products of the built-in sample (10 categories), 16 x 16 grey pixels, centred. The
queries: every other indexed product and 100 products the index does not hold, each asked
with and without its category as filter. The cost of this module is the two nodes' start.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from helpers.core.paths import SAMPLE_BSON
from helpers.index import build_index
from helpers.index.elasticsearch_index import ElasticsearchIndex
from helpers.index.protocol import SearchResult
from helpers.ingest.bson_store import iter_records
from helpers.ingest.jpeg import decode_image
from helpers.services.elasticsearch_cluster import start_elasticsearch_cluster

N_INDEXED, N_HELD_OUT, K = 400, 100, 10
INDEX = "vps-test-cluster"
# Two engines' float32 cosines of one pair differ by ~1e-7: ids whose exact scores are this
# close may trade places (or the k-th place) without either answer being wrong.
TIE = 1e-5


@pytest.fixture(scope="module")
def cluster(start_service):
    c = start_service(lambda: start_elasticsearch_cluster(2))
    yield c
    c.cleanup()


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    records = list(itertools.islice(iter_records(SAMPLE_BSON), N_INDEXED + N_HELD_OUT))
    pixels = [decode_image(r.doc["imgs"][0]["picture"], size=16).mean(axis=-1).ravel()
              for r in records]
    v = np.asarray(pixels, np.float32)
    v -= v.mean(axis=0)  # raw pixels are all positive: every cosine would be near 1
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = np.array([r.doc["_id"] for r in records], np.int64)
    cats = np.array([r.doc["category_id"] for r in records], np.int64)
    asked = np.r_[0:N_INDEXED:2, N_INDEXED:N_INDEXED + N_HELD_OUT]
    return {"vectors": v[:N_INDEXED], "ids": ids[:N_INDEXED], "cats": cats[:N_INDEXED],
            "queries": v[asked], "query_cats": cats[asked]}


@pytest.fixture(scope="module")
def index(cluster, data) -> ElasticsearchIndex:
    # hnsw (float, not quantised) and num_candidates over a whole shard: the kNN is exact.
    return build_index("elasticsearch", data["vectors"], data["ids"], data["cats"],
                       url=cluster.url, index=INDEX, shards=2, replicas=1, index_type="hnsw",
                       num_candidates=N_INDEXED, exact_field=False, recreate=True)


@pytest.fixture(scope="module")
def exact(data):
    return build_index("exact", data["vectors"], data["ids"], data["cats"])


@pytest.fixture(scope="module")
def two_nodes(index, data) -> dict[str, SearchResult]:
    """The answers of the cluster with both nodes up."""
    return _answers(index, data)


def _answers(ix, data) -> dict[str, SearchResult]:
    """Every query without a filter, and each filtered by its own category (as "more of
    this category" asks it): one result row per query."""
    q, qc = data["queries"], data["query_cats"]
    filtered_ids = np.zeros((len(q), K), np.int64)
    filtered_scores = np.zeros((len(q), K), np.float32)
    for c in np.unique(qc):
        rows = np.flatnonzero(qc == c)
        res = ix.search(q[rows], K, category=int(c))
        filtered_ids[rows], filtered_scores[rows] = res.ids, res.scores
    return {"all": ix.search(q, K), "category": SearchResult(filtered_ids, filtered_scores)}


def _assert_exact_top_k(got: SearchResult, want: SearchResult, data) -> None:
    """`got` is the exact top k: k results a query, the same ids in the same order as the
    exact search, where exact scores are not within TIE of each other; where they are, the
    true cosines of the ids returned are the exact top k's."""
    assert got.ids.shape == want.ids.shape and (got.ids >= 0).all()  # k results, in full
    row = {int(p): i for i, p in enumerate(data["ids"])}
    vecs = data["vectors"][np.vectorize(row.__getitem__)(got.ids)]
    true = np.einsum("qd,qkd->qk", data["queries"], vecs)
    np.testing.assert_allclose(got.scores, true, atol=TIE)  # honest scores
    np.testing.assert_allclose(true, want.scores, atol=TIE)  # and the best ones
    gaps = np.abs(np.diff(want.scores, axis=1))
    clear = (gaps > TIE).all(axis=1)
    assert clear.mean() > 0.8  # the id check below covers most queries
    np.testing.assert_array_equal(got.ids[clear], want.ids[clear])


def test_two_nodes_hold_a_copy_of_every_shard(cluster, index, data):
    health = cluster.health()
    assert health["number_of_nodes"] == 2 and health["status"] == "green"
    assert len(index) == N_INDEXED
    shards = index.client.cat.shards(index=INDEX, format="json", h="shard,prirep,state,node")
    assert len(shards) == 4 and {s["state"] for s in shards} == {"STARTED"}
    nodes = {s: {x["node"] for x in shards if x["shard"] == s} for s in ("0", "1")}
    # Primary and replica of a shard on different nodes: either node can go.
    assert nodes["0"] == nodes["1"] == set(cluster.node_names)


def test_knn_with_filter_on_the_cluster_is_the_exact_answer(two_nodes, exact, data):
    got, q, qc = two_nodes, data["queries"], data["query_cats"]
    _assert_exact_top_k(got["all"], exact.search(q, K), data)
    want = SearchResult(np.zeros((len(q), K), np.int64), np.zeros((len(q), K), np.float32))
    for c in np.unique(qc):
        rows = np.flatnonzero(qc == c)
        res = exact.search(q[rows], K, category=int(c))
        want.ids[rows], want.scores[rows] = res.ids, res.scores
    _assert_exact_top_k(got["category"], want, data)
    cat_of = dict(zip(data["ids"].tolist(), data["cats"].tolist(), strict=True))
    assert all(cat_of[int(i)] == c for r, c in zip(got["category"].ids, qc, strict=True)
               for i in r)


def test_one_node_killed_every_query_still_answered_in_full(cluster, index, two_nodes, data,
                                                            tmp_path):
    """SIGKILL the node that is not the master (of two nodes only the master votes): every
    query is answered in full, from the copies on the node left, right after the kill and
    once the cluster is yellow; the same ids and scores as with both nodes."""
    before = two_nodes
    survivor = cluster.master()
    victim = next(n for n in cluster.nodes if n is not survivor)
    # Ask the node that stays (a client of the dead node would have nothing to ask).
    ix = ElasticsearchIndex.load(index.save(tmp_path / "es"), url=survivor.url)

    victim.kill()
    assert not victim.alive()
    right_after = _answers(ix, data)
    health = cluster.wait(nodes=1, status="yellow", timeout=60)
    assert health["status"] == "yellow" and health["number_of_nodes"] == 1
    index_health = ix.client.cluster.health(index=INDEX)
    # Both primaries live (the lost ones were promoted from their replicas), no replicas.
    assert (index_health["active_primary_shards"], index_health["unassigned_shards"]) == (2, 2)
    once_yellow = _answers(ix, data)
    for answers in (right_after, once_yellow):
        for key in before:
            np.testing.assert_array_equal(answers[key].ids, before[key].ids)
            np.testing.assert_allclose(answers[key].scores, before[key].scores, atol=1e-6)
    # Answered by every shard: none failed, none skipped (msearch also refuses partial ones).
    resp = ix.client.search(index=INDEX, knn={"field": "vector", "k": K, "num_candidates": 50,
                                              "query_vector": data["queries"][0].tolist()})
    assert resp["_shards"] == {"total": 2, "successful": 2, "skipped": 0, "failed": 0}
    assert len(resp["hits"]["hits"]) == K
