"""The Flask app: every endpoint and bad input (test client), gunicorn on loopback once,
and schemathesis against its OpenAPI description."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("flask")
schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import positive_data_acceptance  # noqa: E402

from apps.flask_app import create_app  # noqa: E402
from helpers.serve.inputs import MAX_UPLOAD_BYTES  # noqa: E402
from tests.test_serve_inputs import png_bomb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app(app_artifacts):
    return create_app(app_artifacts)


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def art(app):
    return app.extensions["vps"]["artifacts"]


@pytest.fixture(scope="module")
def pid(art):
    return int(art.catalogue.ids()[4])


def upload(client, data: bytes, query: str = "", name: str = "photo.jpg"):
    return client.post(f"/api/search{query}", data={"image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def assert_error(resp, status: int, pattern: str = "") -> None:
    assert resp.status_code == status, resp.get_data(as_text=True)[:300]
    body = resp.get_json()
    assert body["status"] == status and body["error"]
    assert re.search(pattern, body["error"]), body["error"]


# -- product --------------------------------------------------------------------------------


def test_never_debug(app_artifacts, monkeypatch):
    monkeypatch.setenv("FLASK_DEBUG", "1")  # what `flask --debug` and a careless .env set
    app = create_app(app_artifacts)
    assert not app.debug and not app.testing and not app.config["DEBUG"]


def test_app_searches_on_one_faiss_thread(app_artifacts):
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    try:
        create_app(app_artifacts)
        assert faiss.omp_get_max_threads() == 1  # set by the app's start-up
    finally:
        faiss.omp_set_num_threads(before)


def test_product(client, art, pid):
    r = client.get(f"/api/products/{pid}")
    assert r.status_code == 200
    body = r.get_json()
    p = art.catalogue.product(pid)
    assert body["product_id"] == pid and body["category_path"] == list(p.category_path)
    assert body["images"] == [f"/images/{pid}/{i}.jpg" for i in p.usable_images]
    assert "offset" not in body


def test_product_unknown_and_malformed(client):
    assert_error(client.get("/api/products/999999999"), 404, "not in the catalogue")
    for bad in ("abc", "-1", "1.5", "1e3", "9" * 30, "%20"):
        assert_error(client.get(f"/api/products/{bad}"), 400, "product id")


# -- related --------------------------------------------------------------------------------


def test_related(client, art, pid):
    for method in art.available():
        r = client.get(f"/api/products/{pid}/related?k=7&method={method}")
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        assert body["method"] == method and len(body["results"]) == 7
        ids = [h["product_id"] for h in body["results"]]
        assert pid not in ids
        for h in body["results"]:
            # the hit's own picture (image level), else the product's first usable one
            pic = h["image_index"]
            if pic is None:
                pic = art.catalogue.product(h["product_id"]).usable_images[0]
            assert h["image"] == f"/images/{h['product_id']}/{pic}.jpg"
            assert client.get(h["image"]).status_code == 200
    # default method and k
    body = client.get(f"/api/products/{pid}/related").get_json()
    assert body["method"] == "faiss" and len(body["results"]) == 10


def test_related_category(client, art, pid):
    cid = art.catalogue.product(pid).category_id
    body = client.get(f"/api/products/{pid}/related?k=5&category={cid}").get_json()
    assert body["results"] and all(h["category_id"] == cid for h in body["results"])
    assert client.get(f"/api/products/{pid}/related?category=7").get_json()["results"] == []


@pytest.mark.parametrize("query,pattern", [
    ("k=0", "k must"), ("k=101", "k must"), ("k=abc", "k must"), ("k=-2", "k must"),
    ("k=2.5", "k must"), ("k=", "k must"), ("method=nope", "unknown method"),
    ("method=", "empty"), ("category=", "category"), ("k=000001000", "k must"),
    ("k=0010", "k must"), ("k=00001" + "0" * 5000, "k must"), ("k=%D9%A1", "k must"),
    ("method=elasticsearch", "not available"), ("category=x", "category"),
    ("category=-5", "category"),
])
def test_related_bad_query(client, pid, query, pattern):
    assert_error(client.get(f"/api/products/{pid}/related?{query}"), 400, pattern)


def test_related_unknown_and_malformed_id(client):
    assert_error(client.get("/api/products/123456789/related"), 404, "not in the catalogue")
    assert_error(client.get("/api/products/x1/related"), 400, "product id")


def test_methods(client, art):
    body = client.get("/api/methods").get_json()
    assert body["available"] == art.available() and "elasticsearch" in body["unavailable"]


# -- recommendations from several products -----------------------------------------------------


@pytest.fixture(scope="module")
def mixed(art):
    """Two products of different categories: a mixed session."""
    ids = [int(x) for x in art.catalogue.ids()]
    first = art.catalogue.product(ids[0])
    other = next(p for p in ids if art.catalogue.product(p).category_id != first.category_id)
    return [ids[0], other]


def recommend(client, body):
    return client.post("/api/recommend", json=body)


def test_recommend(client, art, mixed):
    for strategy in ("mean", "best", "round_robin"):
        r = recommend(client, {"positive": mixed, "strategy": strategy, "k": 6})
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        assert body["strategy"] == strategy and body["method"] == "faiss"
        got = [h["product_id"] for h in body["results"]]
        assert len(got) == 6 and not set(got) & set(mixed)
    # round robin (the default) opens with each product's own nearest neighbour
    body = recommend(client, {"positive": mixed, "k": 4}).get_json()
    assert body["strategy"] == "round_robin" and body["mmr"] == 0
    first = [client.get(f"/api/products/{p}/related?k=1").get_json()["results"][0]["product_id"]
             for p in mixed]
    assert [h["product_id"] for h in body["results"][:2]] == first
    # "not this": a negative is never suggested, and steers the row
    neg = body["results"][0]["product_id"]
    body = recommend(client, {"positive": mixed, "negative": [neg], "k": 4,
                              "method": "annoy", "mmr": 0.3}).get_json()
    assert body["method"] == "annoy" and body["negative"] == [neg]
    assert neg not in [h["product_id"] for h in body["results"]]
    # a category filter applies to every suggestion
    cid = art.catalogue.product(mixed[0]).category_id
    body = recommend(client, {"positive": mixed, "category": cid, "k": 3}).get_json()
    assert body["results"] and all(h["category_id"] == cid for h in body["results"])


@pytest.mark.parametrize("body,pattern", [
    (None, "JSON object"), ([1, 2], "JSON object"), ({}, "positive must be a list"),
    ({"positive": []}, "positive needs at least one"), ({"positive": "12"}, "positive must"),
    ({"positive": [True]}, r"positive\[0\] is not a product id"),
    ({"positive": [1.5]}, r"positive\[0\]"), ({"positive": [-1]}, r"positive\[0\]: a product"),
    ({"positive": ["12"]}, r"positive\[0\]"), ({"positive": list(range(11))}, "at most 10"),
    ({"positive": [1], "negative": 3}, "negative must be a list"),
    ({"positive": [1], "negative": [None]}, r"negative\[0\]"),
    ({"positive": [1], "strategy": "median"}, "strategy must be one of mean, best"),
    ({"positive": [1], "strategy": 3}, "strategy must be a string"),
    ({"positive": [1], "mmr": 1.5}, "mmr"), ({"positive": [1], "mmr": "x"}, "mmr"),
    ({"positive": [1], "k": 0}, "k must"), ({"positive": [1], "k": 101}, "k must"),
    ({"positive": [1], "k": "5"}, "k must be a whole number"),
    ({"positive": [1], "method": "nope"}, "unknown method"),
    ({"positive": [1], "method": ""}, "method is empty"),
    ({"positive": [1], "category": -5}, "category"),
    ({"positive": [1], "colour": "red"}, "unknown field 'colour'"),
])
def test_recommend_bad_input(client, body, pattern):
    if body is None:
        r = client.post("/api/recommend", data="positive=1",
                        content_type="application/x-www-form-urlencoded")
    else:
        r = recommend(client, body)
    assert_error(r, 400, pattern)


def test_recommend_unknown_and_conflicting_ids(client, mixed):
    assert_error(recommend(client, {"positive": [mixed[0], 999_999_999]}), 404,
                 "positive product 999999999 is not in the catalogue")
    assert_error(recommend(client, {"positive": mixed, "negative": [999_999_998]}), 404,
                 "negative product 999999998")
    assert_error(recommend(client, {"positive": mixed, "negative": mixed[1:]}), 400,
                 f"product {mixed[1]} is both positive and negative")


# -- search by upload -------------------------------------------------------------------------


def test_search_upload(client, art, pid):
    p = art.catalogue.product(pid)
    data = art.images.pictures(p)[p.usable_images[0]]
    r = upload(client, data, "?k=3&method=annoy")
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["results"][0]["product_id"] == pid and len(body["results"]) == 3


def test_search_bad_uploads(client, art):
    assert_error(upload(client, b"this is not a picture"), 400, "not a picture")
    assert_error(upload(client, b""), 400, "empty")
    assert_error(upload(client, png_bomb(60_000, 60_000), name="bomb.png"), 400, "pixels")
    big = b"\xff\xd8" + b"\0" * (MAX_UPLOAD_BYTES + 10)
    assert_error(upload(client, big), 400, "limit")
    huge = b"\0" * (MAX_UPLOAD_BYTES + 200_000)  # over the request limit itself
    assert_error(upload(client, huge), 400, "limit")
    r = client.post("/api/search", data={"other": "x"}, content_type="multipart/form-data")
    assert_error(r, 400, "image")
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buf, "JPEG")
    assert_error(upload(client, buf.getvalue(), "?k=0"), 400, "k must")
    if "style" in art.available():
        assert_error(upload(client, buf.getvalue(), "?method=style"), 400, "TensorFlow")
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buf, "TIFF")
    assert_error(upload(client, buf.getvalue(), name="x.tif"), 400, "TIFF")


def test_search_wrong_http_method(client):
    assert_error(client.get("/api/search"), 405, "")


# -- pictures ---------------------------------------------------------------------------------


def test_image(client, art, pid):
    p = art.catalogue.product(pid)
    r = client.get(f"/images/{pid}/0.jpg")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert r.data == art.images.pictures(p)[0]
    assert Image.open(io.BytesIO(r.data)).size == (180, 180)
    assert_error(client.get(f"/images/{pid}/{p.n_images}.jpg"), 404, "no usable picture")
    assert_error(client.get(f"/images/{pid}/x.jpg"), 400, "picture index")
    assert_error(client.get(f"/images/{pid}/-1.jpg"), 400, "picture index")
    assert_error(client.get("/images/999999999/0.jpg"), 404, "not in the catalogue")
    assert_error(client.get("/images/abc/0.jpg"), 400, "product id")


@pytest.mark.parametrize("path,pattern", [
    ("/images/../0.jpg", "product id"), ("/images/%2e%2e/0.jpg", "product id"),
    ("/images/..%5C..%5Cetc%5Cpasswd/0.jpg", "product id"),
    ("/images/{pid}/%2e%2e.jpg", "picture index"),
    ("/images/{pid}/..%5C..%5Cetc%5Cpasswd.jpg", "picture index"),
    ("/images/{pid}/0%00.jpg", "picture index"), ("/images/{pid}/%2e%2e%2f0.jpg", ""),
])
def test_image_paths_cannot_escape(client, pid, path, pattern):
    """Paths that reach the picture route (it reads the BSON at the catalogue's offset):
    refused by its own checks before any read. (An encoded "/" never reaches it: the
    router answers 404.)"""
    r = client.get(path.format(pid=pid))
    if pattern:
        assert_error(r, 400, pattern)
    else:
        assert_error(r, 404, "URL was not found")


def test_static_paths_cannot_escape(app, tmp_path, monkeypatch):
    """The static route reads files by name: a traversal finds nothing outside its folder."""
    static = tmp_path / "static"
    static.mkdir()
    (static / "ok.txt").write_text("served")
    (tmp_path / "secret.txt").write_text("secret")
    monkeypatch.setattr(app, "static_folder", str(static))
    client = app.test_client()
    r = client.get("/static/ok.txt")
    assert r.status_code == 200 and r.data == b"served"  # the route does read this folder
    for path in ("/static/../secret.txt", "/static/..%2Fsecret.txt", "/static/%2e%2e/secret.txt",
                 "/static/%2e%2e%2fsecret.txt", "/static/..%5Csecret.txt",
                 f"/static/{tmp_path}/secret.txt", f"/static/%2F{str(tmp_path)[1:]}/secret.txt",
                 "/static/ok.txt/../../secret.txt", "/static/..%2F..%2F..%2Fetc%2Fpasswd"):
        r = client.get(path, follow_redirects=True)
        assert r.status_code == 404, path
        assert b"secret" not in r.data and b"root:" not in r.data, path


# -- the page ---------------------------------------------------------------------------------


def test_page(client, art, pid):
    r = client.get("/")
    assert r.status_code == 200 and b"Enter a product id" in r.data
    r = client.get(f"/?product_id={pid}&method=annoy&k=6")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert " › ".join(art.catalogue.product(pid).category_path) in html
    related = html.split('id="related"')[1].split("</main>")[0]
    assert len(re.findall(r'<img src="/images/\d+/\d+\.jpg"', related)) == 6
    for src in set(re.findall(r'src="(/images/\d+/\d+\.jpg)"', html)):
        assert client.get(src).status_code == 200
    assert "Recently viewed" not in html  # first view: nothing yet


def test_page_recently_viewed(client, art):
    ids = [int(x) for x in art.catalogue.ids()[20:24]]
    for p in ids:
        html = client.get(f"/?product_id={p}").get_data(as_text=True)
    assert "Recently viewed" in html and 'id="recent-related"' in html
    strip = html.split('id="recent"')[1]
    shown = [int(x) for x in re.findall(r'<div class="score">(\d+)</div>', strip)]
    assert shown == ids[-2::-1]  # the earlier ones, most recent first
    recent_grid = html.split('id="recent-related"')[1].split('id="recent"')[0]
    suggested = {int(x) for x in re.findall(r"product_id=(\d+)", recent_grid)}
    assert suggested and not suggested & set(ids)


def test_page_not_this_and_strategy(client, art):
    ids = [int(x) for x in art.catalogue.ids()[30:33]]
    for p in ids:
        html = client.get(f"/?product_id={p}&k=5").get_data(as_text=True)
    assert '<option value="round_robin" selected>' in html  # the default
    grid = html.split('id="recent-related"')[1].split('id="recent"')[0]
    shown = [int(x) for x in re.findall(r"product_id=(\d+)&", grid)]
    assert grid.count(">Not this</button>") == len(shown) == 5
    r = client.post("/not-this", data={"product_id": str(shown[0]), "back": str(ids[-1]),
                                       "k": "5", "method": "faiss"})
    assert r.status_code == 303 and f"product_id={ids[-1]}" in r.headers["Location"]
    html = client.get(r.headers["Location"]).get_data(as_text=True)
    grid = html.split('id="recent-related"')[1].split('id="recent"')[0]
    assert shown[0] not in [int(x) for x in re.findall(r"product_id=(\d+)&", grid)]
    negative = html.split('id="negative"')[1]
    assert re.findall(r'<div class="score">(\d+)</div>', negative) == [str(shown[0])]
    # the strategy is chosen once and kept for the session
    html = client.get(f"/?product_id={ids[0]}&strategy=mean").get_data(as_text=True)
    assert '<option value="mean" selected>' in html
    html = client.get(f"/?product_id={ids[1]}").get_data(as_text=True)
    assert '<option value="mean" selected>' in html
    r = client.get(f"/?product_id={ids[1]}&strategy=median")
    assert r.status_code == 400 and b"strategy must be one of" in r.data
    # forget the "not this" products
    r = client.post("/not-this", data={"forget": "1", "back": str(ids[0])})
    html = client.get(r.headers["Location"]).get_data(as_text=True)
    assert 'id="negative"' not in html
    r = client.post("/not-this", data={"product_id": "x", "back": str(ids[0])})
    assert r.status_code == 400 and b"product id" in r.data


def test_page_errors(client):
    r = client.get("/?product_id=999999999")
    assert r.status_code == 404 and b"not in the catalogue" in r.data
    r = client.get("/?product_id=abc")
    assert r.status_code == 400 and b"product id" in r.data
    r = client.get("/?product_id=11&k=1000")
    assert r.status_code == 400 and b"k must" in r.data
    r = client.get("/nowhere")
    assert r.status_code == 404
    r = client.get("/?product_id=%3Cscript%3Ealert(1)%3C/script%3E")  # echoed, escaped
    assert r.status_code == 400 and b"<script>alert" not in r.data and b"&lt;script" in r.data


def test_missing_artifacts_fail_at_start(tmp_path):
    from helpers.serve.loader import ArtifactMissing

    with pytest.raises(ArtifactMissing, match="make demo"):
        create_app(tmp_path / "none")


# -- OpenAPI + schemathesis -------------------------------------------------------------------


def test_openapi(client, art):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/api/products/{product_id}", "/api/products/{product_id}/related", "/api/search",
            "/images/{product_id}/{index}.jpg", "/api/recommend"} <= set(spec["paths"])
    body = spec["components"]["schemas"]["Recommend"]
    assert body["properties"]["strategy"]["enum"] == ["mean", "best", "round_robin"]
    assert body["properties"]["method"]["enum"] == art.available()
    enum = spec["paths"]["/api/products/{product_id}/related"]["get"]["parameters"][2]
    assert enum["schema"]["enum"] == art.available()


def test_schemathesis(app):
    # Driven through Hypothesis directly (schemathesis's pytest plugin does not follow
    # pytest 9). Random ids are mostly unknown (404) and random bytes are not pictures (400),
    # both documented answers, so "positive data is accepted" does not apply; every other
    # check does: no 5xx, documented statuses, content types and schemas, bad input refused.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    ran = []
    modes = list(schemathesis.GenerationMode)  # valid and invalid input
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=st.one_of([op.as_strategy(mode) for mode in modes]))
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()
        ran.append(op.path)
    assert {"/api/search", "/api/recommend"} <= set(ran) and len(ran) == 6


# -- gunicorn on loopback ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def test_gunicorn(app_artifacts, art, pid):
    if shutil.which("gunicorn", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("gunicorn not installed")
    port = free_port()
    env = {**os.environ, "VPS_ARTIFACTS": str(app_artifacts)}
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "--preload", "-w", "2",
           "-b", f"127.0.0.1:{port}", "apps.flask_app:create_app()"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", proc)
        body = json.load(urllib.request.urlopen(f"{base}/api/products/{pid}/related?k=4"))
        assert len(body["results"]) == 4
        img = urllib.request.urlopen(base + body["results"][0]["image"]).read()
        assert img[:2] == b"\xff\xd8"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/api/products/999999999")
        assert e.value.code == 404 and "not in the catalogue" in json.load(e.value)["error"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/api/products/1/related?k=0")
        assert e.value.code == 400
        html = urllib.request.urlopen(f"{base}/?product_id={pid}").read().decode()
        assert "Looks like it" in html and "Werkzeug Debugger" not in html
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_search_by_photo(client, art, pid):
    p = art.catalogue.product(pid)
    data = art.images.pictures(p)[p.usable_images[0]]
    r = client.post("/search", data={"image": (io.BytesIO(data), "p.jpg"), "k": "4",
                                     "method": "annoy"}, content_type="multipart/form-data")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "Looks like your photo" in html
    grid = html.split('id="uploaded"')[1]
    assert re.findall(r"product_id=(\d+)", grid)[0] == str(pid)
    assert len(re.findall(r'<img src="/images/\d+/\d+\.jpg"', grid)) == 4
    r = client.post("/search", data={"image": (io.BytesIO(b"nope"), "p.jpg")},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and b"not a picture" in r.data
    r = client.post("/search", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and b"choose a picture" in r.data


def test_page_search_oversized_photo(client):
    """Over the picture limit, and over the request limit itself (the form cannot be read
    again for the error page): the API's clear 400, shown on the page."""
    for size in (MAX_UPLOAD_BYTES + 10, MAX_UPLOAD_BYTES + 200_000):
        r = client.post("/search?k=4", data={"image": (io.BytesIO(b"\xff\xd8" + b"\0" * size),
                                                      "p.jpg"), "k": "4"},
                        content_type="multipart/form-data")
        html = r.get_data(as_text=True)
        assert r.status_code == 400, html[:300]
        assert r.mimetype == "text/html" and 'role="alert"' in html and "limit" in html
        api = upload(client, b"\xff\xd8" + b"\0" * size, "?k=4")
        assert_error(api, 400, "limit")
