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

Bulk loading (`build`, `add`): idempotent, retried, checked by a count; see
`helpers.index.elasticsearch_bulk`. This module holds the index class and its search; the
node side (connect, mapping, query bodies, creating the index) is in
`helpers.index.elasticsearch_node`; their public names are importable from here too.
Imports the elasticsearch client, orjson, `helpers.core` and the index layer; never models.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch import Elasticsearch, TransportError

from helpers.core import artifacts
from helpers.core import ids as item_ids
from helpers.core.ids import describe
from helpers.index import elasticsearch_bulk as bulk
from helpers.index.elasticsearch_bulk import BulkIndexError
from helpers.index.elasticsearch_node import (
    DEFAULT_URL,
    EXACT,
    INDEX_TYPES,
    VECTOR,
    ElasticsearchUnavailable,
    connect,
    create,
    default_url,
    has_painless,
    how_to_start,
    index_mapping,
    index_name,
    knn_body,
    live_meta,
    msearch,
    node_version,
    reason,
    script_score_body,
)
from helpers.index.errors import (
    CategoryError,
    DimensionError,
    EmptyIndexError,
    IndexInputError,
    IndexMismatchError,
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
    check_k,
)

__all__ = ["DEFAULT_URL", "INDEX_TYPES", "BulkIndexError", "ElasticsearchIndex",
           "ElasticsearchUnavailable", "connect", "default_url", "how_to_start", "index_name",
           "node_version"]

DEFAULT_NUM_CANDIDATES = 100
DEFAULT_OVERSAMPLE = 2
MAX_K = 10_000  # Elasticsearch's limit on k and num_candidates


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
        shards, replicas: the index's primary shards and copies of each; on a cluster the
            load returns once every copy it can place is started (green; yellow when the
            replicas outnumber the other nodes).
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
        painless = has_painless(client)
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
        body = index_mapping(meta, options)
        try:
            create(client, name, body, shards, replicas, recreate)
            knobs = {"num_candidates": num_candidates}
            if oversample is not None:
                knobs["oversample"] = oversample
            self = cls(client, url, name, meta, knobs)
            bulk.load(self, v, pids, cats, catalogue, chunk_size=chunk_size,
                      max_retries=max_retries, initial_backoff=initial_backoff,
                      progress=progress, on_chunk=on_chunk, expected=len(pids),
                      check_new=False)
        except (ESConnectionError, TransportError) as e:
            raise ElasticsearchUnavailable(f"Elasticsearch at {url}: {reason(e)}") from None
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
        live = live_meta(client, name)
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
        k = check_k(k, MAX_K, " (Elasticsearch's limit)")
        nc = min(MAX_K, max(int(self.params["num_candidates"]), k))
        filt = self._filter(category)
        return self._msearch([self._knn(VECTOR, row, k, nc, filt) for row in q], k)

    def search_exact(self, queries: np.ndarray, k: int,
                     category: Category = None) -> SearchResult:
        """Exact cosine top k, computed by the node: the yardstick of `search`."""
        q = as_unit_vectors(queries, self.dim, "queries")
        k = check_k(k, MAX_K, " (Elasticsearch's limit)")
        filt = self._filter(category)
        how = self._meta["exact"]
        if how == "script_score":
            bodies = [script_score_body(row, k, filt) for row in q]
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
        k = check_k(k, MAX_K, " (Elasticsearch's limit)")
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
        return bulk.fetch_vectors(self, np.atleast_1d(np.asarray(item_ids_, np.int64)))

    def _filter(self, category: Category) -> dict[str, Any] | None:
        cats = as_category_filter(category)
        if cats is None:
            return None
        if not self._meta["has_categories"]:
            raise CategoryError("this index was built without categories: cannot filter")
        return {"terms": {"category_id": cats.tolist()}}

    def _knn(self, field: str, q: np.ndarray, k: int, nc: int,
             filt: dict[str, Any] | None) -> dict[str, Any]:
        # Rescoring applies to the quantised main field only (the exact field is float).
        oversample = self.params["oversample"] if field == VECTOR else 0
        return knn_body(field, q, k, nc, filt, oversample)

    def _msearch(self, bodies: Sequence[dict[str, Any]], k: int,
                 script: bool = False) -> SearchResult:
        return msearch(self.client, self.index, self.url, bodies, k, script)

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
        bulk.load(self, v, pids, cats, catalogue, expected=len(self) + len(pids), check_new=True)

    def remove(self, ids: Any) -> None:
        """Delete items by id (UnknownIdError if one is not in the index)."""
        pids = as_ids(ids, len(np.atleast_1d(np.asarray(ids))), "ids to remove")
        present = bulk.present(self, pids)
        if len(present) != len(pids):
            raise UnknownIdError(f"unknown ids in {self.index!r}: "
                                 f"{describe(np.setdiff1d(pids, list(present)))}")
        bulk.delete(self, pids)

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
        artifacts.write_manifest(d, meta["manifest"])  # what Workspace.find reads
        artifacts.atomic_write(d / META_FILE, lambda p: p.write_text(text + "\n"))
        return d

    def drop(self) -> None:
        """Delete the index from the node."""
        self.client.indices.delete(index=self.index, ignore_unavailable=True)
