"""The Elasticsearch node side of the index: connecting, the mapping, the search requests.

`connect` checks that a node answers and that its major version is the client's
(`ElasticsearchUnavailable` otherwise, saying how to start one); `index_name` names an
index per (model, level); `index_mapping` / `create` write the `dense_vector` mapping with
the index's settings in `_meta` (how a re-run recognises an index it can reuse);
`wait_for_copies` waits for the shard copies a cluster can place (green, or yellow);
`knn_body` / `script_score_body` are the search request bodies, `msearch` sends them in
batches and maps the answers to a `SearchResult` (cosine scores, padded). Used by
`helpers.index.elasticsearch_index` and `helpers.index.elasticsearch_bulk`. Imports numpy,
the elasticsearch client, `helpers.core.errors` and the index protocol only.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from elasticsearch import ApiError, Elasticsearch, TransportError
from elasticsearch import ConnectionError as ESConnectionError

from helpers.core.errors import ServiceUnavailable
from helpers.index.protocol import SearchResult

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:9200"
INDEX_TYPES = ("int8_hnsw", "hnsw", "flat", "int4_hnsw", "bbq_hnsw", "int8_flat")
VECTOR, EXACT = "vector", "vector_exact"
SEARCH_BATCH = 256  # queries per _msearch request


class ElasticsearchUnavailable(ServiceUnavailable):
    """No Elasticsearch answers at the URL (or it went away during a bulk load)."""


def default_url() -> str:
    """$ELASTICSEARCH_URL, else the local node of `make es`."""
    return os.environ.get("ELASTICSEARCH_URL") or DEFAULT_URL


def how_to_start(url: str) -> str:
    return (f"no Elasticsearch answers at {url}. Start one with `make es` (a local node, "
            "fetched from Maven Central) or `docker compose up -d elasticsearch`, then set "
            "ELASTICSEARCH_URL (or es_url) to its address.")


def connect(url: str | None = None, timeout: float = 60.0) -> Elasticsearch:
    """A client for the node at url, checked: ElasticsearchUnavailable if nothing answers,
    or if the node's major version is not the client's."""
    import elasticsearch

    url = url or default_url()
    # Retries are ours (bulk: backoff per chunk), not the transport's instant ones.
    client = Elasticsearch(url, request_timeout=timeout, max_retries=0, retry_on_timeout=False)
    try:
        node = node_version(client)
    except (ESConnectionError, TransportError, ApiError) as e:
        client.close()
        raise ElasticsearchUnavailable(f"{how_to_start(url)} ({reason(e)})") from None
    if node.split(".")[0] != str(elasticsearch.__versionstr__).split(".")[0]:
        client.close()
        raise ElasticsearchUnavailable(
            f"Elasticsearch {node} at {url}, but the Python client is "
            f"{elasticsearch.__versionstr__}: the majors must match (see pyproject.toml)"
        )
    return client


def node_version(client: Elasticsearch) -> str:
    """The version of the node answering (`GET /` is absent from the test distribution)."""
    nodes = client.nodes.info(node_id="_local", metric="_none", filter_path="nodes.*.version")
    return str(next(iter(nodes["nodes"].values()))["version"])


def index_name(source: Mapping[str, Any] | None, level: str) -> str:
    """`vps-<model>-<level>`: one index per (model, level), as Elasticsearch allows names."""
    model = str((source or {}).get("model", "vectors"))
    name = re.sub(r"[^a-z0-9_-]+", "-", f"vps-{model}-{level}".lower()).strip("-_")
    return name[:200]


def reason(e: BaseException) -> str:
    """The first line of an exception's message, for our own messages."""
    text = str(getattr(e, "message", "") or e)
    return text.splitlines()[0][:300] if text else type(e).__name__


def has_painless(client: Elasticsearch) -> bool:
    """Whether the node runs Painless scripts (script_score for the exact yardstick)."""
    with warnings.catch_warnings():  # "technical preview" notice of this API
        warnings.simplefilter("ignore")
        try:
            client.scripts_painless_execute(script={"source": "1"})
            return True
        except ApiError:
            return False


def index_mapping(meta: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The index mapping: `vector` with `options`, the flat exact field when asked, the
    product and category fields; the settings in `_meta.vps`."""
    dim = meta["dim"]
    vec = {"type": "dense_vector", "dims": dim, "index": True, "similarity": "cosine"}
    props: dict[str, Any] = {
        VECTOR: {**vec, "index_options": dict(options)},
        "product_id": {"type": "long"},
        "image_index": {"type": "short"},
        "category_id": {"type": "long"},
        "category_level1": {"type": "keyword"},
        "category_level2": {"type": "keyword"},
        "category_level3": {"type": "keyword"},
        "n_images": {"type": "short"},
    }
    if meta["exact"] == "flat_field":
        props[EXACT] = {**vec, "index_options": {"type": "flat"}}
    return {"dynamic": "strict", "_meta": {"vps": dict(meta)}, "properties": props}


def live_meta(client: Elasticsearch, name: str) -> dict[str, Any]:
    """The settings (`_meta.vps`) of an index on the node."""
    mapping = client.indices.get_mapping(index=name)
    return dict(next(iter(mapping.values()))["mappings"].get("_meta", {}).get("vps", {}))


def create(client: Elasticsearch, name: str, mapping: dict[str, Any], shards: int,
            replicas: int, recreate: bool) -> None:
    """Create the index, reusing one of the same settings unless `recreate`."""
    if client.indices.exists(index=name):
        if not recreate and live_meta(client, name) == mapping["_meta"]["vps"]:
            log.info("reusing index %s (same settings): documents are overwritten by id", name)
            return
        log.info("dropping index %s (%s)", name,
                 "recreate=True" if recreate else "built with other settings")
        client.indices.delete(index=name)
    client.indices.create(index=name, mappings=mapping,
                          settings={"number_of_shards": shards, "number_of_replicas": replicas})
    wait_for_copies(client, name, replicas)


def wait_for_copies(client: Elasticsearch, name: str, replicas: int,
                    timeout: float = 120.0) -> str:
    """Block until every shard copy the cluster can place is started: health green when
    the data nodes can hold a primary and `replicas` replicas apart, else yellow (1 node,
    replicas 1: the replicas stay unassigned). Returns the colour; ElasticsearchUnavailable
    if it is not reached in `timeout` s."""
    nodes = int(client.cluster.health()["number_of_data_nodes"])
    want = "green" if replicas < nodes else "yellow"
    try:
        health = client.options(request_timeout=timeout + 10).cluster.health(
            index=name, wait_for_status=want, timeout=f"{timeout:.0f}s")
        timed_out = bool(health["timed_out"])
    except ApiError as e:
        if e.status_code != 408:  # a health wait that timed out answers 408
            raise
        health, timed_out = (e.body if isinstance(e.body, dict) else {}), True
    if timed_out:
        raise ElasticsearchUnavailable(
            f"index {name!r}: shard copies not started in {timeout:.0f} s (health "
            f"{health.get('status')}, {health.get('unassigned_shards')} unassigned)")
    return str(health["status"])


def knn_body(field: str, q: np.ndarray, k: int, nc: int, filt: dict[str, Any] | None,
             oversample: int = 0) -> dict[str, Any]:
    """A kNN search of one query on `field`: k results of nc candidates a shard, the
    filter inside the knn clause, float32 rescoring of k x oversample (0 = none)."""
    knn: dict[str, Any] = {"field": field, "query_vector": q.tolist(), "k": k,
                           "num_candidates": nc}
    if oversample > 0:
        knn["rescore_vector"] = {"oversample": float(oversample)}
    if filt:
        knn["filter"] = filt
    return {"knn": knn, "size": k, "_source": False, "track_total_hits": False}


def script_score_body(q: np.ndarray, k: int, filt: dict[str, Any] | None) -> dict[str, Any]:
    """The exact cosine top k of one query by Painless (`_score` = cos + 1)."""
    base = {"bool": {"filter": [filt]}} if filt else {"match_all": {}}
    script = {"source": f"cosineSimilarity(params.q, '{VECTOR}') + 1.0",
              "params": {"q": q.tolist()}}
    return {"query": {"script_score": {"query": base, "script": script}}, "size": k,
            "_source": False, "track_total_hits": False}


def msearch(client: Elasticsearch, index: str, url: str, bodies: Sequence[dict[str, Any]],
            k: int, script: bool = False) -> SearchResult:
    """Run search `bodies` (one a query) SEARCH_BATCH at a time: ids and cosine scores,
    padded to k (id -1, score -inf). script: scores are script_score's cos + 1."""
    ids = np.full((len(bodies), k), -1, np.int64)
    scores = np.full((len(bodies), k), -np.inf, np.float32)
    for start in range(0, len(bodies), SEARCH_BATCH):
        searches: list[dict[str, Any]] = []
        for body in bodies[start:start + SEARCH_BATCH]:
            # An answer missing a shard (no live copy) is an error, never a short list.
            searches += [{"index": index, "allow_partial_search_results": False}, body]
        try:
            resp = client.msearch(searches=searches)
        except (ESConnectionError, TransportError) as e:
            raise ElasticsearchUnavailable(f"Elasticsearch at {url}: {reason(e)}") from None
        for i, r in enumerate(resp["responses"], start):
            if "error" in r:
                raise RuntimeError(f"{index}: search failed: {r['error']}")
            hits = r["hits"]["hits"][:k]
            ids[i, :len(hits)] = [int(h["_id"]) for h in hits]
            s = np.array([h["_score"] for h in hits], np.float64)
            scores[i, :len(hits)] = (s - 1.0) if script else _cosine(s)
    return SearchResult(ids, scores)


def _cosine(es_score: np.ndarray) -> np.ndarray:
    """Elasticsearch's cosine _score (1 + cos) / 2, back to cos."""
    return (2.0 * es_score - 1.0).astype(np.float32)
