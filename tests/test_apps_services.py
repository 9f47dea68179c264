"""The apps with their services: products from a real mongod (`mongo_uri`), and the
Elasticsearch method when a real node answers (and its absence when it does not)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from apps.flask_app import create_app
from helpers.catalogue.protocol import ParquetCatalogue
from helpers.core.errors import ServiceUnavailable
from helpers.serve.loader import load_artifacts
from helpers.serve.related import Related
from helpers.workspace import Workspace


def test_a_server_that_does_not_start(monkeypatch, start_service):
    def no_java():
        raise ServiceUnavailable("needs Java 21+")

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs Java"):
        start_service(no_java)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs Java.*CI must have it"):
        start_service(no_java)
    monkeypatch.delenv("CI")
    with pytest.raises(KeyError):  # a bug in starting it is not "not available here"
        start_service(lambda: {}["port"])


@pytest.fixture(scope="module")
def mongod(start_service):
    from helpers.services.servers import start_mongod

    server = start_service(start_mongod)
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def es_node(start_service):
    from helpers.services.servers import start_elasticsearch

    server = start_service(start_elasticsearch)
    yield server
    server.cleanup()


def test_products_from_mongodb(mongod, app_artifacts):
    from helpers.catalogue import mongo

    parquet = ParquetCatalogue.open(Workspace(app_artifacts).catalogues()[0][0])
    mongo.load_catalogue(parquet, mongod.url)
    a = load_artifacts(app_artifacts, mongo_uri=mongod.url)
    assert type(a.catalogue).__name__ == "MongoCatalogue" and len(a.catalogue) == 150
    pid = int(parquet.ids()[9])
    want = [h.product_id for h in Related(load_artifacts(app_artifacts)).related(pid, 5)]
    assert [h.product_id for h in Related(a).related(pid, 5)] == want
    client = create_app(app_artifacts, mongo_uri=mongod.url).test_client()
    body = client.get(f"/api/products/{pid}").get_json()
    assert body["category_path"] == list(parquet.product(pid).category_path)
    r = client.get(f"/api/products/{pid}/related?k=5")
    assert [h["product_id"] for h in r.get_json()["results"]] == want
    assert client.get("/api/products/999999999").status_code == 404
    a.close()


def test_mongodb_pages_read_only_what_they_show(mongod, app_artifacts):
    """MongoDB's profiler records every operation on the products while the app serves
    its pages, health probe and API: each one by an index, over a few documents (a stream
    of every id, or a count of every document, examines all 150)."""
    from helpers.catalogue import mongo

    parquet = ParquetCatalogue.open(Workspace(app_artifacts).catalogues()[0][0])
    mongo.load_catalogue(parquet, mongod.url)
    client = create_app(app_artifacts, mongo_uri=mongod.url).test_client()
    db = mongo.connect(mongod.url)[mongo.DB]
    db["system.profile"].drop()
    pids = [int(x) for x in parquet.ids()[[3, 40, 120]]]
    db.command("profile", 2)
    try:
        assert client.get("/").status_code == 200
        for pid in pids:  # product pages, the later ones with "recently viewed"
            assert client.get(f"/?product_id={pid}&k=5").status_code == 200
        assert client.get("/healthz").get_json()["products"] == len(parquet)
        c = parquet.product(pids[0]).category_id
        r = client.get(f"/api/products/{pids[1]}/related?k=5&category={c}")
        assert r.status_code == 200 and r.get_json()["results"]
    finally:
        db.command("profile", 0)
    ops = list(db["system.profile"].find({"ns": f"{mongo.DB}.{mongo.COLLECTION}"}))
    assert len(ops) >= 4  # the pages did read their products from MongoDB
    for op in ops:
        assert "COLLSCAN" not in op.get("planSummary", ""), op
        assert op.get("docsExamined", 0) <= 20 and op.get("keysExamined", 0) <= 20, op


def test_elasticsearch_method_when_a_node_answers(es_node, app_artifacts, tmp_path):
    from helpers.index import build_index
    from helpers.services.servers import wait_for_elasticsearch

    wait_for_elasticsearch(es_node)
    root = tmp_path / "art"
    shutil.copytree(app_artifacts, root, symlinks=True)
    base = load_artifacts(root)
    store = base.methods["faiss"].store
    cats = base.catalogue.category_ids(store.product_ids)
    build_index("elasticsearch", np.asarray(store.vectors), store.item_ids, cats,
                url=es_node.url, index="vps-apps-test", source=store.made_by,
                catalogue=base.catalogue, recreate=True).save(root / "index" / "es")
    a = load_artifacts(root)
    assert "elasticsearch" in a.available()
    rel = Related(a)
    pid = int(a.catalogue.ids()[2])
    es = [h.product_id for h in rel.related(pid, 5, "elasticsearch")]
    flat = [h.product_id for h in rel.related(pid, 5, "faiss")]
    assert len(set(es) & set(flat)) >= 4 and pid not in es
    p = a.catalogue.product(pid)
    in_cat = rel.related(pid, 5, "elasticsearch", category=p.category_id)
    assert (a.catalogue.category_ids([h.product_id for h in in_cat]) == p.category_id).all()
    seen = [int(x) for x in a.catalogue.ids()[:3]]
    assert not {h.product_id for h in rel.related_to_recent(seen, 5, "elasticsearch")} & set(seen)

    client = create_app(root).test_client()
    r = client.get(f"/api/products/{pid}/related?k=5&method=elasticsearch")
    assert r.status_code == 200 and len(r.get_json()["results"]) == 5
    data = a.images.pictures(p)[p.usable_images[0]]
    import io

    r = client.post("/api/search?method=elasticsearch&k=3",
                    data={"image": (io.BytesIO(data), "p.jpg")},
                    content_type="multipart/form-data")
    assert r.status_code == 200 and r.get_json()["results"][0]["product_id"] == pid

    # The node goes away: the method is unavailable, with a reason; the others still serve.
    es_node.cleanup()
    again = load_artifacts(root)
    assert "elasticsearch" not in again.available() and "faiss" in again.available()
    assert "could not be opened" in again.unavailable["elasticsearch"]
