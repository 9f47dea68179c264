"""Elasticsearch as one more engine of the index protocol: `dense_vector` + approximate kNN.

    index = build_index("elasticsearch", vectors, ids, categories, source=store.made_by,
                        url="http://127.0.0.1:9200", catalogue=catalogue)
    ids, scores = index.search(queries, 10, category=1000010653)
    index.params["num_candidates"] = 200     # HNSW candidates per shard: recall vs speed
    index.params["oversample"] = 3           # quantised types: rescore k x 3 with float32
    ids, scores = index.search_exact(queries, 10)   # exact cosine: the yardstick
    index.save("artifacts/index/es")          # meta.json: node URL + index name + settings

The node keeps everything (vectors, ids, categories): the Python object holds only the
client, the index name and the knob. One Elasticsearch index per (model, level), named
`vps-<model>-<level>` unless `index=` says otherwise. A document per item: `_id` = item id
(the product id at product level), `vector` (dense_vector, similarity cosine, indexed with
`index_type` int8_hnsw / hnsw / flat and HNSW `m`, `ef_construction`), `product_id`,
`image_index`, `category_id`, the three category names (keywords), `n_images`.

Scores: Elasticsearch's cosine `_score` is (1 + cos) / 2; it is mapped back to the cosine,
as every index of the protocol returns.

Search: the `knn` section with `k` and `num_candidates`. On quantised types (int8_hnsw ...)
the graph ranks 1-byte copies, which caps recall (about 0.93 at 128-d); `rescore_vector`
re-ranks the best k x `oversample` candidates with the raw float32 vectors (knob
`oversample`, default 2; 0 = off), lifting recall and making scores exact cosines.
The category is a `filter` inside
the knn clause, so the HNSW walk only collects matching documents and k come back whenever
the category has k (a post-filter would return fewer). The project-wide filter contract:
up to k results a query, missing slots padded with id -1 and score -inf.

Exact yardstick (`search_exact`): `script_score` with `cosineSimilarity` when the node has
Painless (the official Docker image). The Maven Central test node has no Painless module:
there the index carries a second field `vector_exact` with `index_options: flat` (brute
force over the raw float vectors, exact) and `search_exact` runs kNN on it. Both return
the exact cosine top k; the second costs a second copy of the vectors on disk
(`exact_field=False` leaves it out, e.g. at 12 M vectors).

Bulk loading (`build`, `add`): the client's `streaming_bulk`, chunk by chunk. Idempotent
(a document per id: a re-run overwrites, never duplicates); 429 answers are retried per
document with backoff by streaming_bulk, a lost connection (or 502/503/504) retries the
whole chunk with exponential backoff, then raises `ElasticsearchUnavailable` saying how far
it got (re-run to complete). Documents refused by the node are reported by id
(`BulkIndexError`). A count check ends every load.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from elasticsearch import ApiError, Elasticsearch, TransportError
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch.helpers import streaming_bulk
from tqdm.auto import tqdm

from helpers.core import artifacts
from helpers.core import ids as item_ids
from helpers.core.errors import ServiceUnavailable
from helpers.core.ids import describe
from helpers.index.errors import (
    CategoryError,
    DimensionError,
    DuplicateIdError,
    EmptyIndexError,
    IndexInputError,
    IndexMismatchError,
    InvalidKError,
    UnknownIdError,
)
from helpers.index.manifest import (
    FORMAT_VERSION,
    META_FILE,
    check_source,
    check_vectors,
    index_manifest,
    json_safe,
    read_meta,
)
from helpers.index.protocol import (
    METRIC,
    Category,
    Knobs,
    SearchResult,
    as_categories,
    as_category_filter,
    as_ids,
    as_unit_vectors,
)

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:9200"
INDEX_TYPES = ("int8_hnsw", "hnsw", "flat", "int4_hnsw", "bbq_hnsw", "int8_flat")
DEFAULT_NUM_CANDIDATES = 100
DEFAULT_OVERSAMPLE = 2
MAX_K = 10_000  # Elasticsearch's limit on k and num_candidates
VECTOR, EXACT = "vector", "vector_exact"
SEARCH_BATCH = 256  # queries per _msearch request
RETRY_STATUS = (502, 503, 504)


class ElasticsearchUnavailable(ServiceUnavailable):
    """No Elasticsearch answers at the URL (or it went away during a bulk load)."""


class BulkIndexError(RuntimeError):
    """Documents the node refused; `failures` maps item id -> reason."""

    def __init__(self, index: str, failures: Mapping[int, str]) -> None:
        self.failures = dict(failures)
        ids = np.fromiter(self.failures, np.int64)
        first = next(iter(self.failures.values()))
        super().__init__(f"{index}: {len(ids)} documents refused, ids {describe(ids)}; "
                         f"first reason: {first}")


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
        raise ElasticsearchUnavailable(f"{how_to_start(url)} ({_reason(e)})") from None
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


def _reason(e: BaseException) -> str:
    text = str(getattr(e, "message", "") or e)
    return text.splitlines()[0][:300] if text else type(e).__name__


def _cosine(es_score: np.ndarray) -> np.ndarray:
    """Elasticsearch's cosine _score (1 + cos) / 2, back to cos."""
    return (2.0 * es_score - 1.0).astype(np.float32)


class ElasticsearchIndex:
    """A VectorIndex whose items live in an Elasticsearch index; see the module docstring.

    Knobs (index.params): num_candidates (default 100), the HNSW candidates gathered per
    shard before the top k are kept, raised to k when smaller; oversample (quantised types:
    default 2, 0 = off), the float32 rescoring of k x oversample candidates.
    """

    method = "elasticsearch"

    def __init__(self, client: Elasticsearch, url: str, index: str, meta: Mapping[str, Any],
                 params: Mapping[str, int]) -> None:
        self.client = client
        self.url = url
        self.index = index
        self._meta = dict(meta)
        self.build_params = dict(self._meta["build_params"])
        quantised = self.build_params["index_type"] not in ("hnsw", "flat")
        defaults = {"num_candidates": DEFAULT_NUM_CANDIDATES,
                    "oversample": DEFAULT_OVERSAMPLE if quantised else 0}
        self.params = Knobs({"num_candidates": 1, "oversample": 0}, defaults | dict(params))

    # -- construction --

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        categories: np.ndarray | None = None,
        *,
        source: Mapping[str, Any] | None = None,
        url: str | None = None,
        index: str | None = None,
        level: str | None = None,
        catalogue: Any = None,
        index_type: str = "int8_hnsw",
        m: int = 16,
        ef_construction: int = 100,
        num_candidates: int = DEFAULT_NUM_CANDIDATES,
        oversample: int | None = None,
        shards: int = 1,
        replicas: int = 0,
        exact_field: bool | None = None,
        recreate: bool = False,
        chunk_size: int = 500,
        max_retries: int = 5,
        initial_backoff: float = 1.0,
        progress: bool = False,
        on_chunk: Callable[[int], None] | None = None,
    ) -> ElasticsearchIndex:
        """Create (or reuse) the index and bulk-load `vectors` [n, d] under item `ids`.

        url: the node (default $ELASTICSEARCH_URL or http://localhost:9200).
        index: index name (default `vps-<model>-<level>` from `source`).
        level: "product" or "image" (default source["level"], else "product"): at image
            level ids are packed item ids (helpers.core.ids) and product_id is decoded from them.
        catalogue: a Catalogue (helpers.catalogue.protocol): names, picture counts.
        index_type, m, ef_construction: the dense_vector `index_options`.
        num_candidates, oversample: the initial search knobs (see the class docstring).
        exact_field: add the `vector_exact` flat field (the exact yardstick); default: only
            when the node has no Painless for script_score.
        recreate: drop an existing index of that name first. Otherwise an index with the
            same settings is reused and the documents overwritten (a re-run after a crash
            completes it, no duplicates); one with other settings is dropped and rebuilt.
        chunk_size, max_retries, initial_backoff: bulk requests and their retries.
        progress: a tqdm bar. on_chunk(done): called after each acknowledged chunk.
        """
        # A memmap stays one: rows are normalised chunk by chunk as they are sent.
        v = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
        if v.ndim != 2:
            raise DimensionError(f"vectors must be 2-D [n, d], got shape {v.shape}")
        if v.shape[0] == 0:
            raise EmptyIndexError("cannot build an index from zero vectors")
        pids = as_ids(ids, v.shape[0])
        cats = None if categories is None else as_categories(categories, v.shape[0])
        if index_type not in INDEX_TYPES:
            raise IndexInputError(f"index_type must be one of {INDEX_TYPES}, not {index_type!r}")
        store_manifest = getattr(source, "manifest", None)  # a VectorStore
        if store_manifest is not None:
            source = getattr(source, "made_by", {})
        source = json_safe(source or {}, "source")
        level = item_ids.check_level(level or source.get("level", "product"))
        url = url or default_url()
        client = connect(url)
        name = index or index_name(source, level)
        painless = _has_painless(client)
        if exact_field is None:
            exact_field = not painless and index_type != "flat"  # int8_flat is not exact
        options: dict[str, Any] = {"type": index_type}
        if index_type.endswith("hnsw"):
            options |= {"m": int(m), "ef_construction": int(ef_construction)}
        build_params = {"index_type": index_type, "m": int(m),
                        "ef_construction": int(ef_construction), "shards": int(shards),
                        "replicas": int(replicas), "exact_field": bool(exact_field),
                        "level": level}
        meta = {"format": FORMAT_VERSION, "dim": int(v.shape[1]), "store": store_manifest,
                "has_categories": cats is not None, "build_params": build_params,
                "source": source,
                "exact": "flat_field" if exact_field else
                ("main_field" if index_type == "flat" else "script_score")}
        mapping = _mapping(meta, options)
        try:
            _create(client, name, mapping, shards, replicas, recreate)
            knobs = {"num_candidates": num_candidates}
            if oversample is not None:
                knobs["oversample"] = oversample
            self = cls(client, url, name, meta, knobs)
            self._bulk(v, pids, cats, catalogue, chunk_size=chunk_size, max_retries=max_retries,
                       initial_backoff=initial_backoff, progress=progress, on_chunk=on_chunk,
                       expected=len(pids), check_new=False)
        except (ESConnectionError, TransportError) as e:
            raise ElasticsearchUnavailable(f"Elasticsearch at {url}: {_reason(e)}") from None
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect_source: Mapping[str, Any] | None = None,
             vectors: Any = None, url: str | None = None) -> ElasticsearchIndex:
        """Reconnect to the index a `save` recorded (url: another address of that node).

        vectors: the VectorStore it must have been built from (IndexMismatchError if not).
        """
        d = Path(path)
        meta = read_meta(d)
        if meta["method"] != cls.method:
            raise IndexMismatchError(f"{d} holds a {meta['method']!r} index, not {cls.method!r}")
        check_source(meta.get("source", {}), expect_source, str(d))
        if vectors is not None:
            check_vectors(meta, vectors, str(d))
        es = meta["elasticsearch"]
        url = url or es["url"]
        client = connect(url)
        name = es["index"]
        if not client.indices.exists(index=name):
            raise IndexMismatchError(f"{d}: index {name!r} is not on the node at {url}: rebuild")
        live = _live_meta(client, name)
        for key in ("dim", "build_params", "source", "has_categories"):
            if live.get(key) != meta.get(key):
                raise IndexMismatchError(
                    f"{d}: index {name!r} at {url} has {key}={live.get(key)!r}, "
                    f"meta.json {meta.get(key)!r}: it was rebuilt with other settings")
        return cls(client, url, name, live, meta["params"])

    # -- properties --

    @property
    def dim(self) -> int:
        return int(self._meta["dim"])

    @property
    def source(self) -> dict[str, Any]:
        return dict(self._meta["source"])

    @property
    def exact_by(self) -> str:
        """How `search_exact` runs: "script_score", "flat_field" or "main_field"."""
        return str(self._meta["exact"])

    @property
    def level(self) -> str:
        return str(self.build_params["level"])

    def __len__(self) -> int:
        return int(self.client.count(index=self.index)["count"])

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in {**self.build_params, **self.params}.items())
        return f"ElasticsearchIndex({self.index!r} at {self.url}, dim={self.dim}, {knobs})"

    # -- search --

    def search(self, queries: np.ndarray, k: int, category: Category = None) -> SearchResult:
        """Approximate kNN; the category filter runs inside the kNN clause."""
        q = as_unit_vectors(queries, self.dim, "queries")
        k = _check_k(k)
        nc = min(MAX_K, max(int(self.params["num_candidates"]), k))
        filt = self._filter(category)
        return self._msearch([self._knn(VECTOR, row, k, nc, filt) for row in q], k)

    def search_exact(self, queries: np.ndarray, k: int,
                     category: Category = None) -> SearchResult:
        """Exact cosine top k, computed by the node: the yardstick of `search`."""
        q = as_unit_vectors(queries, self.dim, "queries")
        k = _check_k(k)
        filt = self._filter(category)
        how = self._meta["exact"]
        if how == "script_score":
            bodies = [self._script_score(row, k, filt) for row in q]
            res = self._msearch(bodies, k, script=True)
            return res
        field = EXACT if how == "flat_field" else VECTOR
        return self._msearch([self._knn(field, row, k, k, filt) for row in q], k)

    def search_by_id(self, product_ids: Any, k: int, category: Category = None) -> SearchResult:
        """Neighbours of items already indexed, by their stored vectors; each item is left
        out by an `ids` must_not inside the kNN filter, so k others come back."""
        pids = np.atleast_1d(np.asarray(product_ids))
        if pids.ndim != 1 or (pids.size and not np.issubdtype(pids.dtype, np.integer)):
            raise UnknownIdError(f"product ids must be ints, got {product_ids!r}")
        k = _check_k(k)
        q = self.vectors(pids)
        nc = min(MAX_K, max(int(self.params["num_candidates"]), k))
        filt = self._filter(category)
        bodies = []
        for pid, row in zip(pids.tolist(), q, strict=True):
            not_self = {"bool": {"must_not": [{"ids": {"values": [str(pid)]}}],
                                 "filter": [filt] if filt else []}}
            bodies.append(self._knn(VECTOR, row, k, nc, not_self))
        return self._msearch(bodies, k)

    def vectors(self, item_ids_: Any) -> np.ndarray:
        """The stored vectors of indexed items [n, d] (UnknownIdError names missing ones)."""
        pids = np.atleast_1d(np.asarray(item_ids_, np.int64))
        found: dict[int, list[float]] = {}
        for start in range(0, len(pids), 1000):
            part = [str(p) for p in pids[start:start + 1000].tolist()]
            resp = self.client.search(index=self.index, size=len(part),
                                      query={"ids": {"values": part}},
                                      source={"includes": [VECTOR], "exclude_vectors": False})
            for h in resp["hits"]["hits"]:
                found[int(h["_id"])] = h["_source"][VECTOR]
        missing = np.array([p for p in pids.tolist() if p not in found], np.int64)
        if missing.size:
            raise UnknownIdError(f"unknown ids in {self.index!r}: {describe(missing)}")
        return np.asarray([found[p] for p in pids.tolist()], np.float32)

    def _filter(self, category: Category) -> dict[str, Any] | None:
        cats = as_category_filter(category)
        if cats is None:
            return None
        if not self._meta["has_categories"]:
            raise CategoryError("this index was built without categories: cannot filter")
        return {"terms": {"category_id": cats.tolist()}}

    def _knn(self, field: str, q: np.ndarray, k: int, nc: int,
             filt: dict[str, Any] | None) -> dict[str, Any]:
        knn: dict[str, Any] = {"field": field, "query_vector": q.tolist(), "k": k,
                               "num_candidates": nc}
        if field == VECTOR and self.params["oversample"] > 0:
            knn["rescore_vector"] = {"oversample": float(self.params["oversample"])}
        if filt:
            knn["filter"] = filt
        return {"knn": knn, "size": k, "_source": False, "track_total_hits": False}

    @staticmethod
    def _script_score(q: np.ndarray, k: int, filt: dict[str, Any] | None) -> dict[str, Any]:
        base = {"bool": {"filter": [filt]}} if filt else {"match_all": {}}
        script = {"source": f"cosineSimilarity(params.q, '{VECTOR}') + 1.0",
                  "params": {"q": q.tolist()}}
        return {"query": {"script_score": {"query": base, "script": script}}, "size": k,
                "_source": False, "track_total_hits": False}

    def _msearch(self, bodies: Sequence[dict[str, Any]], k: int,
                 script: bool = False) -> SearchResult:
        ids = np.full((len(bodies), k), -1, np.int64)
        scores = np.full((len(bodies), k), -np.inf, np.float32)
        for start in range(0, len(bodies), SEARCH_BATCH):
            searches: list[dict[str, Any]] = []
            for body in bodies[start:start + SEARCH_BATCH]:
                searches += [{"index": self.index}, body]
            try:
                resp = self.client.msearch(searches=searches)
            except (ESConnectionError, TransportError) as e:
                raise ElasticsearchUnavailable(
                    f"Elasticsearch at {self.url}: {_reason(e)}") from None
            for i, r in enumerate(resp["responses"], start):
                if "error" in r:
                    raise RuntimeError(f"{self.index}: search failed: {r['error']}")
                hits = r["hits"]["hits"][:k]
                ids[i, :len(hits)] = [int(h["_id"]) for h in hits]
                s = np.array([h["_score"] for h in hits], np.float64)
                scores[i, :len(hits)] = (s - 1.0) if script else _cosine(s)
        return SearchResult(ids, scores)

    # -- mutation --

    def add(self, vectors: np.ndarray, ids: np.ndarray, categories: np.ndarray | None = None,
            catalogue: Any = None) -> None:
        """Index new items (DuplicateIdError if an id is already there)."""
        v = as_unit_vectors(vectors, self.dim)
        pids = as_ids(ids, v.shape[0])
        if (categories is None) == self._meta["has_categories"]:
            has = "has" if self._meta["has_categories"] else "has no"
            raise CategoryError(f"this index {has} categories: pass categories= accordingly")
        cats = None if categories is None else as_categories(categories, v.shape[0])
        self._bulk(v, pids, cats, catalogue, expected=len(self) + len(pids), check_new=True)

    def remove(self, ids: Any) -> None:
        """Delete items by id (UnknownIdError if one is not in the index)."""
        pids = as_ids(ids, len(np.atleast_1d(np.asarray(ids))), "ids to remove")
        present = self._present(pids)
        if len(present) != len(pids):
            raise UnknownIdError(f"unknown ids in {self.index!r}: "
                                 f"{describe(np.setdiff1d(pids, list(present)))}")
        before = len(self)
        actions = ({"_op_type": "delete", "_index": self.index, "_id": str(p)}
                   for p in pids.tolist())
        failures = {int(item["delete"]["_id"]): str(item["delete"].get("error"))
                    for _ok, item in streaming_bulk(self.client, actions, raise_on_error=False,
                                                   max_retries=3, yield_ok=False)}
        if failures:
            raise BulkIndexError(self.index, failures)
        self.client.indices.refresh(index=self.index)
        _check_count(self, before - len(pids))

    def _present(self, pids: np.ndarray) -> set[int]:
        out: set[int] = set()
        for start in range(0, len(pids), 1000):
            part = [str(p) for p in pids[start:start + 1000].tolist()]
            resp = self.client.search(index=self.index, size=len(part), source=False,
                                      query={"ids": {"values": part}})
            out |= {int(h["_id"]) for h in resp["hits"]["hits"]}
        return out

    def _bulk(self, v: np.ndarray, pids: np.ndarray, cats: np.ndarray | None, catalogue: Any,
              *, expected: int, check_new: bool, chunk_size: int = 500, max_retries: int = 5,
              initial_backoff: float = 1.0, progress: bool = False,
              on_chunk: Callable[[int], None] | None = None) -> None:
        if check_new:
            clash = self._present(pids)
            if clash:
                clash_ids = np.array(sorted(clash), np.int64)
                raise DuplicateIdError(f"ids already in the index: {describe(clash_ids)}")
        failures: dict[int, str] = {}
        done = 0
        self.client.indices.put_settings(index=self.index, settings={"refresh_interval": "-1"})
        bar = tqdm(total=len(pids), desc=f"bulk {self.index}", unit="doc", disable=not progress)
        try:
            for lo in range(0, len(pids), chunk_size):
                hi = min(lo + chunk_size, len(pids))
                unit = as_unit_vectors(v[lo:hi], self.dim)
                docs = list(self._docs(unit, pids[lo:hi],
                                       None if cats is None else cats[lo:hi], catalogue))
                failures |= self._send(docs, done, len(pids), max_retries, initial_backoff)
                done = hi
                bar.update(hi - lo)
                if on_chunk is not None:
                    on_chunk(done)
        finally:
            bar.close()
        try:
            self.client.indices.put_settings(index=self.index,
                                             settings={"refresh_interval": "1s"})
            self.client.indices.refresh(index=self.index)
        except (ESConnectionError, TransportError) as e:
            raise ElasticsearchUnavailable(f"Elasticsearch at {self.url}: {_reason(e)}") from None
        if failures:
            raise BulkIndexError(self.index, failures)
        _check_count(self, expected)

    def _docs(self, v: np.ndarray, pids: np.ndarray, cats: np.ndarray | None,
              catalogue: Any) -> Iterator[tuple[dict[str, Any], str]]:
        """(action, pre-serialised document) pairs: orjson writes float32 arrays directly."""
        products, image_index = item_ids.decode(pids, self.level)
        info: dict[int, Any] = {}
        if catalogue is not None:
            info = {p.product_id: p for p in catalogue.products(np.unique(products).tolist())}
        exact = self._meta["exact"] == "flat_field"
        for i, pid in enumerate(pids.tolist()):
            doc: dict[str, Any] = {"product_id": int(products[i]),
                                   "image_index": int(image_index[i]), VECTOR: v[i]}
            if exact:
                doc[EXACT] = v[i]
            if cats is not None:
                doc["category_id"] = int(cats[i])
            p = info.get(int(products[i]))
            if p is not None:
                doc["n_images"] = int(p.n_images)
                if p.category_path:
                    for lvl, name in enumerate(p.category_path, 1):
                        doc[f"category_level{lvl}"] = name
            body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY).decode()
            yield {"index": {"_index": self.index, "_id": str(pid)}}, body

    def _send(self, docs: list[tuple[dict[str, Any], str]], done: int, total: int,
              max_retries: int, backoff: float) -> dict[int, str]:
        """One chunk through streaming_bulk; whole-chunk retries when the node is away."""
        waited = 0.0
        for attempt in range(max_retries + 1):
            failures: dict[int, str] = {}
            try:
                for _ok, item in streaming_bulk(
                    self.client, docs, chunk_size=len(docs), max_chunk_bytes=50 << 20,
                    expand_action_callback=lambda a: a, raise_on_error=False,
                    max_retries=max_retries, initial_backoff=backoff, yield_ok=False,
                ):
                    op = next(iter(item.values()))
                    failures[int(op["_id"])] = _reason_of(op)
                return failures
            except (ESConnectionError, TransportError, ApiError) as e:
                # TransportError: connection refused/reset, timeout (ESConnectionError is one).
                status = getattr(e, "status_code", None)
                retryable = isinstance(e, TransportError) or status in (429, *RETRY_STATUS)
                if not retryable:
                    raise
                if attempt == max_retries:
                    raise ElasticsearchUnavailable(
                        f"lost Elasticsearch at {self.url} after indexing {done:,} of "
                        f"{total:,} documents into {self.index!r} ({attempt + 1} attempts over "
                        f"{waited:.0f} s: {_reason(e)}). Documents are keyed by id: start the "
                        "node and re-run to complete the load without duplicates."
                    ) from None
                pause = min(60.0, backoff * 2**attempt)
                log.warning("bulk to %s failed (%s); retry %d/%d in %.0f s", self.url,
                            _reason(e), attempt + 1, max_retries, pause)
                time.sleep(pause)
                waited += pause
        raise AssertionError("unreachable")

    # -- persistence --

    def save(self, path: str | os.PathLike) -> Path:
        """A small folder: meta.json with the node URL, the index name and the settings
        (the vectors stay on the node)."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION, "method": self.method, "metric": METRIC,
            "dim": self.dim, "n": len(self), "params": dict(self.params),
            "build_params": self.build_params, "source": self.source,
            "has_categories": self._meta["has_categories"],
            "engine_version": f"elasticsearch {node_version(self.client)}",
            "files": {"engine": None, "ids": None, "categories": None},
            "elasticsearch": {"url": self.url, "index": self.index},
            "manifest": index_manifest(self, self._meta.get("store")),
        }
        text = orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
        artifacts.atomic_write(d / META_FILE, lambda p: p.write_text(text + "\n"))
        return d

    def drop(self) -> None:
        """Delete the index from the node."""
        self.client.indices.delete(index=self.index, ignore_unavailable=True)


# -- helpers ----------------------------------------------------------------------------------


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidKError(f"k must be an int, got {k!r}")
    if not 1 <= k <= MAX_K:
        raise InvalidKError(f"k must be in [1, {MAX_K}] (Elasticsearch's limit), got {k}")
    return int(k)


def _check_count(index: ElasticsearchIndex, expected: int) -> None:
    n = len(index)
    if n != expected:
        raise RuntimeError(f"{index.index!r} at {index.url} holds {n:,} documents, expected "
                           f"{expected:,}: documents of an earlier load? rebuild with "
                           "recreate=True")


def _reason_of(op: Mapping[str, Any]) -> str:
    err = op.get("error")
    if isinstance(err, Mapping):
        return f"{err.get('type')}: {err.get('reason')} (status {op.get('status')})"
    return f"{err} (status {op.get('status')})"


def _has_painless(client: Elasticsearch) -> bool:
    with warnings.catch_warnings():  # "technical preview" notice of this API
        warnings.simplefilter("ignore")
        try:
            client.scripts_painless_execute(script={"source": "1"})
            return True
        except ApiError:
            return False


def _mapping(meta: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
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


def _live_meta(client: Elasticsearch, name: str) -> dict[str, Any]:
    mapping = client.indices.get_mapping(index=name)
    return dict(next(iter(mapping.values()))["mappings"].get("_meta", {}).get("vps", {}))


def _create(client: Elasticsearch, name: str, mapping: dict[str, Any], shards: int,
            replicas: int, recreate: bool) -> None:
    if client.indices.exists(index=name):
        if not recreate and _live_meta(client, name) == mapping["_meta"]["vps"]:
            log.info("reusing index %s (same settings): documents are overwritten by id", name)
            return
        log.info("dropping index %s (%s)", name,
                 "recreate=True" if recreate else "built with other settings")
        client.indices.delete(index=name)
    client.indices.create(index=name, mappings=mapping,
                          settings={"number_of_shards": shards, "number_of_replicas": replicas})
