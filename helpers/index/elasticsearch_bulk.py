"""Bulk loading into an Elasticsearch index, and reading documents back by id.

`load` sends documents chunk by chunk through the client's `streaming_bulk`: idempotent
(a document per id: a re-run overwrites, never duplicates); 429 answers are retried per
document with backoff by streaming_bulk, a lost connection (or 502/503/504) retries the
whole chunk with exponential backoff, then raises `ElasticsearchUnavailable` saying how far
it got. Documents refused by the node are reported by id (`BulkIndexError`). A count check
(`check_count`) ends every load and every `delete`. `present` and `fetch_vectors` read
documents by id. Functions take the
`ElasticsearchIndex` they load into. Imports the elasticsearch client, orjson, tqdm,
`helpers.core` and the index layer's validation and node helpers; never models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from elasticsearch import ApiError, TransportError
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch.helpers import streaming_bulk

from helpers.core import ids as item_ids
from helpers.core.ids import describe
from helpers.core.progress import tqdm
from helpers.index.elasticsearch_node import (
    EXACT,
    VECTOR,
    ElasticsearchUnavailable,
    reason,
    wait_for_copies,
)
from helpers.index.errors import DuplicateIdError, UnknownIdError
from helpers.index.protocol import as_unit_vectors

if TYPE_CHECKING:
    from helpers.index.elasticsearch_index import ElasticsearchIndex

log = logging.getLogger(__name__)

RETRY_STATUS = (502, 503, 504)


class BulkIndexError(RuntimeError):
    """Documents the node refused; `failures` maps item id -> reason."""

    def __init__(self, index: str, failures: Mapping[int, str]) -> None:
        self.failures = dict(failures)
        ids = np.fromiter(self.failures, np.int64)
        first = next(iter(self.failures.values()))
        super().__init__(f"{index}: {len(ids)} documents refused, ids {describe(ids)}; "
                         f"first reason: {first}")


def present(index: ElasticsearchIndex, pids: np.ndarray) -> set[int]:
    """Which of `pids` the index holds."""
    out: set[int] = set()
    for start in range(0, len(pids), 1000):
        part = [str(p) for p in pids[start:start + 1000].tolist()]
        resp = index.client.search(index=index.index, size=len(part), source=False,
                                   query={"ids": {"values": part}})
        out |= {int(h["_id"]) for h in resp["hits"]["hits"]}
    return out


def fetch_vectors(index: ElasticsearchIndex, pids: np.ndarray) -> np.ndarray:
    """The stored vectors of indexed items [n, d] (UnknownIdError names missing ones)."""
    found: dict[int, list[float]] = {}
    for start in range(0, len(pids), 1000):
        part = [str(p) for p in pids[start:start + 1000].tolist()]
        resp = index.client.search(index=index.index, size=len(part),
                                   query={"ids": {"values": part}},
                                   source={"includes": [VECTOR], "exclude_vectors": False})
        for h in resp["hits"]["hits"]:
            found[int(h["_id"])] = h["_source"][VECTOR]
    missing = np.array([p for p in pids.tolist() if p not in found], np.int64)
    if missing.size:
        raise UnknownIdError(f"unknown ids in {index.index!r}: {describe(missing)}")
    return np.asarray([found[p] for p in pids.tolist()], np.float32)


def load(index: ElasticsearchIndex, v: np.ndarray, pids: np.ndarray, cats: np.ndarray | None,
         catalogue: Any, *, expected: int, check_new: bool, chunk_size: int = 500,
         max_retries: int = 5, initial_backoff: float = 1.0, progress: bool = False,
         on_chunk: Callable[[int], None] | None = None) -> None:
    """Index documents of `v` (any rows: normalised chunk by chunk) under `pids`, then check
    that the index holds `expected` documents. check_new: refuse ids already there."""
    if check_new:
        clash = present(index, pids)
        if clash:
            clash_ids = np.array(sorted(clash), np.int64)
            raise DuplicateIdError(f"ids already in the index: {describe(clash_ids)}")
    failures: dict[int, str] = {}
    done = 0
    index.client.indices.put_settings(index=index.index, settings={"refresh_interval": "-1"})
    bar = tqdm(total=len(pids), desc=f"bulk {index.index}", unit="doc", disable=not progress)
    try:
        for lo in range(0, len(pids), chunk_size):
            hi = min(lo + chunk_size, len(pids))
            unit = as_unit_vectors(v[lo:hi], index.dim)
            docs = list(_docs(index, unit, pids[lo:hi],
                              None if cats is None else cats[lo:hi], catalogue))
            failures |= _send(index, docs, done, len(pids), max_retries, initial_backoff)
            done = hi
            bar.update(hi - lo)
            if on_chunk is not None:
                on_chunk(done)
    finally:
        bar.close()
    try:
        index.client.indices.put_settings(index=index.index,
                                          settings={"refresh_interval": "1s"})
        index.client.indices.refresh(index=index.index)
        # On a cluster: the load is done once every replica is started and holds it.
        wait_for_copies(index.client, index.index, int(index.build_params["replicas"]))
    except (ESConnectionError, TransportError) as e:
        raise ElasticsearchUnavailable(f"Elasticsearch at {index.url}: {reason(e)}") from None
    if failures:
        raise BulkIndexError(index.index, failures)
    check_count(index, expected)


def _docs(index: ElasticsearchIndex, v: np.ndarray, pids: np.ndarray,
          cats: np.ndarray | None, catalogue: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """(action, pre-serialised document) pairs: orjson writes float32 arrays directly."""
    products, image_index = item_ids.decode(pids, index.level)
    info: dict[int, Any] = {}
    if catalogue is not None:
        info = {p.product_id: p for p in catalogue.products(np.unique(products).tolist())}
    exact = index.exact_by == "flat_field"
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
        yield {"index": {"_index": index.index, "_id": str(pid)}}, body


def _send(index: ElasticsearchIndex, docs: list[tuple[dict[str, Any], str]], done: int,
          total: int, max_retries: int, backoff: float) -> dict[int, str]:
    """One chunk through streaming_bulk; whole-chunk retries when the node is away."""
    waited = 0.0
    for attempt in range(max_retries + 1):
        failures: dict[int, str] = {}
        try:
            for _ok, item in streaming_bulk(
                index.client, docs, chunk_size=len(docs), max_chunk_bytes=50 << 20,
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
                    f"lost Elasticsearch at {index.url} after indexing {done:,} of "
                    f"{total:,} documents into {index.index!r} ({attempt + 1} attempts over "
                    f"{waited:.0f} s: {reason(e)}). Documents are keyed by id: start the "
                    "node and re-run to complete the load without duplicates."
                ) from None
            pause = min(60.0, backoff * 2**attempt)
            log.warning("bulk to %s failed (%s); retry %d/%d in %.0f s", index.url,
                        reason(e), attempt + 1, max_retries, pause)
            time.sleep(pause)
            waited += pause
    raise AssertionError("unreachable")


def delete(index: ElasticsearchIndex, pids: np.ndarray) -> None:
    """Delete documents known to be there, then check the count."""
    before = len(index)
    actions = ({"_op_type": "delete", "_index": index.index, "_id": str(p)}
               for p in pids.tolist())
    failures = {int(item["delete"]["_id"]): str(item["delete"].get("error"))
                for _ok, item in streaming_bulk(index.client, actions, raise_on_error=False,
                                               max_retries=3, yield_ok=False)}
    if failures:
        raise BulkIndexError(index.index, failures)
    index.client.indices.refresh(index=index.index)
    check_count(index, before - len(pids))


def check_count(index: ElasticsearchIndex, expected: int) -> None:
    """RuntimeError unless the index holds `expected` documents."""
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
