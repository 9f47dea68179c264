"""The product catalogue in MongoDB: load it with bulk upserts, read it as a `Catalogue`.

    from helpers.catalogue import mongo
    mongo.load_catalogue(catalogue, "mongodb://127.0.0.1:27017")   # 01_preprocess
    cat = mongo.MongoCatalogue("mongodb://127.0.0.1:27017")
    cat.product(1000010653); cat.by_category(1000010653, limit=20); cat.page(0, 100)

One document per product: `_id` = product id, `row` (catalogue order), `category_id`,
`category_level1..3` (names), `n_images`, `bad_images`, `offset` and `length` in the BSON
file, and `catalogue` (the fingerprint of the catalogue it came from: documents of an
earlier catalogue are removed after a load). Loading replaces each document by id
(upsert): a second load of the same catalogue matches every document and modifies none.
Indexes: (category_id, row) for a category's products in order, row for paging. A count
check ends the load, and a `meta` document keeps the catalogue's fingerprint and size.

A local mongod for tests and users: `helpers.services.servers.start_mongod` / `make mongod`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymongo import ASCENDING, MongoClient, ReplaceOne
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, PyMongoError, ServerSelectionTimeoutError

from helpers.catalogue.protocol import (
    Catalogue,
    CategoryPath,
    Product,
    UnknownProductError,
    as_product_id,
    iter_products,
)
from helpers.core.errors import ServiceUnavailable

log = logging.getLogger(__name__)

DB, COLLECTION, META = "visual_product_search", "products", "catalogue_meta"
BATCH = 1000
TIMEOUTS = {"serverSelectionTimeoutMS": 3000, "connectTimeoutMS": 3000}


class MongoUnavailable(ServiceUnavailable):
    """No MongoDB answers at the URI."""


@dataclass(frozen=True)
class LoadSummary:
    total: int
    inserted: int
    modified: int
    unchanged: int
    removed: int

    def __str__(self) -> str:
        return (f"MongoDB catalogue: {self.total:,} products ({self.inserted:,} new, "
                f"{self.modified:,} changed, {self.unchanged:,} unchanged, "
                f"{self.removed:,} removed)")


def connect(uri: str, timeout_ms: int = 3000, **client_options: Any) -> MongoClient:
    """A client whose server answered a ping; MongoUnavailable (naming the URI) if not."""
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms,
                                      connectTimeoutMS=timeout_ms, **client_options)
    try:
        client.admin.command("ping")
    except (ServerSelectionTimeoutError, ConnectionFailure) as e:
        client.close()
        raise MongoUnavailable(
            f"no MongoDB answers at {uri} ({str(e).split(',')[0][:200]}). Start one with "
            "`make mongod` or `docker compose up -d mongo`, or set mongo_uri to yours."
        ) from None
    return client


def _doc(p: Product, row: int, fingerprint: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": p.product_id, "row": row, "catalogue": fingerprint,
                           "category_id": p.category_id,
                           "n_images": p.n_images, "bad_images": list(p.bad_images),
                           "offset": p.offset, "length": p.length}
    if p.category_path:
        for level, name in enumerate(p.category_path, 1):
            doc[f"category_level{level}"] = name
    return doc


def load_catalogue(catalogue: Catalogue, uri: str, db: str = DB,
                   collection: str = COLLECTION, batch: int = BATCH) -> LoadSummary:
    """Upsert every product of `catalogue` by id; products no longer in it are removed."""
    client = connect(uri)
    try:
        coll = client[db][collection]
        coll.create_index([("category_id", ASCENDING), ("row", ASCENDING)])
        coll.create_index("row")
        inserted = modified = matched = 0
        ops: list[ReplaceOne] = []

        def flush() -> None:
            nonlocal inserted, modified, matched
            if ops:
                r = coll.bulk_write(ops, ordered=False)
                inserted += r.upserted_count
                modified += r.modified_count
                matched += r.matched_count
                ops.clear()

        fp = catalogue.fingerprint
        for row, p in enumerate(iter_products(catalogue, page_size=batch)):
            ops.append(ReplaceOne({"_id": p.product_id}, _doc(p, row, fp), upsert=True))
            if len(ops) >= batch:
                flush()
        flush()
        total = len(catalogue)
        # Products of an earlier catalogue that this one no longer has.
        removed = coll.delete_many({"catalogue": {"$ne": fp}}).deleted_count
        n = coll.count_documents({})
        if n != total:
            raise RuntimeError(f"{uri} {db}.{collection}: {n:,} documents after the load, "
                               f"the catalogue has {total:,}")
        client[db][META].replace_one(
            {"_id": collection},
            {"_id": collection, "fingerprint": fp, "count": total},
            upsert=True)
        summary = LoadSummary(total, inserted, modified, matched - modified, removed)
        log.info("%s", summary)
        return summary
    except PyMongoError as e:
        raise MongoUnavailable(f"MongoDB at {uri}: {e}") from None
    finally:
        client.close()


class MongoCatalogue:
    """A `helpers.catalogue.protocol.Catalogue` read from the collection `load_catalogue` wrote.

    Built for a server that forks (gunicorn ``--preload``): the constructor checks the
    server answers and reads the catalogue's meta document, then closes its client; each
    process opens its own client on its first query (a client's sockets and monitor
    threads must not cross a fork). No request reads the whole collection: ``len`` is the
    count the load checked, pages are ranges on the indexed ``row``.
    ``client_options`` go to every `MongoClient` (``event_listeners``: command monitoring).
    """

    def __init__(self, uri: str, db: str = DB, collection: str = COLLECTION,
                 **client_options: Any) -> None:
        self.uri, self.db_name, self.collection = uri, db, collection
        self.client_options = client_options
        self._client: MongoClient | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        check = connect(uri, **client_options)
        try:
            self._meta = check[db][META].find_one({"_id": collection}) or {}
        finally:
            check.close()
        self._paths: dict[int, CategoryPath | None] = {}
        self._count: int | None = self._meta.get("count")

    @property
    def client(self) -> MongoClient:
        """This process's client, opened on first use (again in a child after a fork)."""
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            with self._lock:
                if self._client is None or self._pid != pid:
                    # An inherited client is dropped, not closed: its sockets are the
                    # parent's, still in use there.
                    self._client = MongoClient(self.uri, **{**TIMEOUTS, **self.client_options})
                    self._pid = pid
        return self._client

    @property
    def coll(self) -> Collection:
        return self.client[self.db_name][self.collection]

    def close(self) -> None:
        """Close this process's client (a later query opens a new one)."""
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None

    def __repr__(self) -> str:
        return (f"MongoCatalogue({len(self):,} products, {self.uri} "
                f"{self.db_name}.{self.collection})")

    @property
    def fingerprint(self) -> str:
        return str(self._meta.get("fingerprint", ""))

    def __len__(self) -> int:
        # The count the load checked and wrote to the meta document: exact, and no
        # request counts every document (a health probe asks for it).
        # estimated_document_count() reads metadata that a crash can leave at 0.
        if self._count is None:  # a collection loaded without a meta count: count once
            self._count = int(self.coll.count_documents({}))
        return self._count

    def product(self, product_id: int) -> Product:
        pid = as_product_id(product_id)
        doc = self.coll.find_one({"_id": pid})
        if doc is None:
            raise UnknownProductError(f"product id not in the catalogue: {pid}")
        return _product(doc)

    def products(self, product_ids: Sequence[int]) -> list[Product]:
        pids = [int(p) for p in np.asarray(product_ids).ravel().tolist()]
        found = {d["_id"]: d for d in self._find_in(pids)}
        missing = [p for p in pids if p not in found]
        if missing:
            raise UnknownProductError(f"product id(s) not in the catalogue: {missing[:5]}")
        return [_product(found[p]) for p in pids]

    def page(self, offset: int = 0, limit: int = 100) -> list[Product]:
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be >= 0, got {offset}, {limit}")
        # A range on `row` (indexed), not skip(): deep pages cost the same as the first.
        cursor = self.coll.find({"row": {"$gte": offset, "$lt": offset + limit}}).sort("row")
        return [_product(d) for d in cursor]

    def by_category(self, category_id: int, offset: int = 0,
                    limit: int | None = 100) -> list[Product]:
        cursor = self.coll.find({"category_id": int(category_id)}).sort("row").skip(offset)
        if limit is not None:
            cursor = cursor.limit(limit)
        return [_product(d) for d in cursor]

    def category_path(self, category_id: int) -> CategoryPath | None:
        cid = int(category_id)
        if cid not in self._paths:
            doc = self.coll.find_one({"category_id": cid})
            self._paths[cid] = _path(doc) if doc else None
        return self._paths[cid]

    def category_ids(self, product_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        shape = np.shape(product_ids)
        pids = [int(p) for p in np.asarray(product_ids).ravel().tolist()]
        found = {d["_id"]: d.get("category_id") for d in self._find_in(pids, ["category_id"])}
        out = [found.get(p) for p in pids]
        return np.array([-1 if c is None else c for c in out], np.int64).reshape(shape)

    def ids(self) -> np.ndarray:
        cursor = self.coll.find({}, {"_id": 1}).sort("row")
        return np.fromiter((d["_id"] for d in cursor), np.int64)

    def _find_in(self, pids: list[int], fields: list[str] | None = None) -> Iterator[dict]:
        projection = None if fields is None else dict.fromkeys(fields, 1)
        for start in range(0, len(pids), BATCH):
            yield from self.coll.find({"_id": {"$in": pids[start:start + BATCH]}}, projection)


def _path(doc: dict[str, Any]) -> CategoryPath | None:
    names = [doc.get(f"category_level{i}") for i in (1, 2, 3)]
    return None if any(n is None for n in names) else tuple(names)  # type: ignore[return-value]


def _product(doc: dict[str, Any]) -> Product:
    return Product(product_id=int(doc["_id"]), category_id=doc.get("category_id"),
                   category_path=_path(doc), n_images=int(doc["n_images"]),
                   bad_images=tuple(doc.get("bad_images", ())), offset=int(doc["offset"]),
                   length=int(doc["length"]))
