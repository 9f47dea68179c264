"""Flask app: a product page with related products (pictures included) and a JSON API.

    gunicorn --preload -w 2 -b 127.0.0.1:8000 "apps.flask_app:create_app()"
    VPS_ARTIFACTS=runs/ivf/artifacts gunicorn ... (another run's artifacts)

Never run with debug on (the Werkzeug debugger executes code from the browser). The API is
described by ``/openapi.json``:

    GET  /api/products/<id>                         a product
    GET  /api/products/<id>/related?k=10&method=faiss&category=...&show_all=1
    POST /api/search   (multipart field "image")    products that look like a photo
    POST /api/recommend {"positive": [...], "negative": [...], "strategy": "round_robin"}
    GET  /images/<product_id>/<i>.jpg               a product's picture, from the BSON store
    GET  /api/methods                               search methods, and why some are not here

Start-up opens the prebuilt artifacts (`helpers.serve.loader`); nothing is embedded. Bad input is
a 400 with a message, an unknown product a 404. Uploads are capped in size and checked on
their header (decompression bombs are refused before decoding).
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any

from flask import (
    Flask,
    Response,
    jsonify,
    redirect,
    render_template_string,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from helpers.catalogue.protocol import UnknownProductError
from helpers.index.recommend import DEFAULT_STRATEGY, LABELS, STRATEGIES
from helpers.ingest.jpeg import check_jpeg_bytes
from helpers.serve.inputs import (
    MAX_EXAMPLES,
    MAX_K,
    MAX_UPLOAD_BYTES,
    RelatedError,
    parse_category,
    parse_image_index,
    parse_k,
    parse_method,
    parse_product_id,
    parse_recommend,
)
from helpers.serve.loader import configure_app_process, load_artifacts
from helpers.serve.pages import describe
from helpers.serve.recent import RecentlyViewed
from helpers.serve.related import NoVectorError, Related

log = logging.getLogger(__name__)

RECENT_N = 5
NEGATIVE_N = 5  # "not this" products kept in the session
ENV_SECRET = "VPS_SECRET_KEY"


class NotFound(LookupError):
    """A product or picture that is not there (answered 404 with the message)."""


def create_app(work_dir: str | os.PathLike | None = None, *, mongo_uri: str | None = None,
               bson_path: str | os.PathLike | None = None) -> Flask:
    """The app over a run's artifacts (``VPS_ARTIFACTS`` or runs/sample/artifacts)."""
    configure_app_process()
    art = load_artifacts(work_dir, mongo_uri=mongo_uri, bson_path=bson_path)
    rel = Related(art)
    app = Flask(__name__)
    app.config.update(
        # A little above the picture limit: multipart framing; the picture itself is
        # checked against MAX_UPLOAD_BYTES so the message names that limit.
        MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES + 64 * 1024,
        # Sessions hold the recently-viewed list. Set VPS_SECRET_KEY in production; the
        # random fallback is shared by gunicorn workers only with --preload.
        SECRET_KEY=os.environ.get(ENV_SECRET) or secrets.token_hex(32),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    # Flask takes DEBUG from $FLASK_DEBUG: a stray variable must not turn it on here.
    if app.debug:
        log.warning("FLASK_DEBUG is set: ignored, this app never runs in debug mode")
        app.debug = False
    app.extensions["vps"] = {"artifacts": art, "related": rel}

    # -- helpers -----------------------------------------------------------------------------

    def product_json(pid: int) -> dict[str, Any]:
        try:
            p = rel.product(pid)
        except UnknownProductError:
            raise NotFound(f"product {pid} is not in the catalogue") from None
        d = p.to_dict()
        d.pop("offset"), d.pop("length")  # storage details
        d["images"] = [url_for("image", product_id=pid, index=i) for i in p.usable_images]
        return d

    def hits_json(hits: list) -> list[dict[str, Any]]:
        out = describe(rel, hits)
        for h in out:
            pic = h.pop("picture")
            h["image"] = (url_for("image", product_id=h["product_id"], index=pic)
                          if pic is not None else None)
        return out

    def param(name: str) -> str | None:
        """A query or form field. When the body is what failed (too large, malformed), its
        form cannot be read again: reading it would raise inside the error page itself and
        turn a 400 into a 500. The query string still can."""
        try:
            return request.values.get(name)
        except HTTPException:
            return request.args.get(name)

    def query_options() -> tuple[int, str, int | None]:
        k = parse_k(request.values.get("k"))
        method = parse_method(request.values.get("method"), art.default_method,
                              art.available())
        rel.method(method)  # 400 for an unknown or unavailable method
        cat = request.values.get("category")
        category = None if cat is None else parse_category(cat)
        return k, method, category

    def related_hits(pid: int, k: int, method: str, category: int | None) -> list:
        try:
            # show_all=1: every product, near duplicates too (default: one per cluster)
            show_all = (request.values.get("show_all") or "").lower() in ("1", "true", "on")
            return rel.related(pid, k, method, category, collapse=not show_all)
        except UnknownProductError:
            raise NotFound(f"product {pid} is not in the catalogue") from None
        except NoVectorError as exc:
            raise NotFound(str(exc)) from None

    # -- errors ------------------------------------------------------------------------------

    def error(status: int, message: str) -> Response:
        if request.path.startswith(("/api/", "/images/")):
            resp = jsonify({"error": message, "status": status})
        else:
            resp = Response(render_template_string(PAGE, error=message, **page_context()),
                            mimetype="text/html")
        resp.status_code = status
        return resp

    @app.errorhandler(RelatedError)
    def bad_request(exc: RelatedError) -> Response:
        return error(400, str(exc))

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound) -> Response:
        return error(404, str(exc))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        return error(400, f"the upload is over the {MAX_UPLOAD_BYTES:,}-byte limit")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def server_error(exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.path)
        return error(500, "internal error; the server log has the details")

    # -- JSON API ----------------------------------------------------------------------------

    @app.get("/api/methods")
    def methods() -> Response:
        return jsonify({"default": art.default_method, "available": art.available(),
                        "unavailable": art.unavailable})

    @app.get("/api/products/<product_id>")
    def product(product_id: str) -> Response:
        return jsonify(product_json(parse_product_id(product_id)))

    @app.get("/api/products/<product_id>/related")
    def related(product_id: str) -> Response:
        pid = parse_product_id(product_id)
        k, method, category = query_options()
        hits = related_hits(pid, k, method, category)
        return jsonify({"product_id": pid, "method": method, "k": k, "category": category,
                        "results": hits_json(hits)})

    @app.post("/api/search")
    def search() -> Response:
        f = request.files.get("image")
        if f is None:
            raise RelatedError("send the picture as a multipart/form-data field named 'image'")
        data = f.stream.read(MAX_UPLOAD_BYTES + 1)
        k, method, category = query_options()
        hits = rel.search_upload(data, k, method, category)
        return jsonify({"method": method, "k": k, "category": category,
                        "results": hits_json(hits)})

    @app.post("/api/recommend")
    def recommend() -> Response:
        q = parse_recommend(request.get_json(silent=True))
        method = parse_method(q["method"], art.default_method, art.available())
        strategy = q["strategy"] or DEFAULT_STRATEGY
        try:
            hits = rel.recommend(q["positive"], q["negative"], q["k"], method, strategy,
                                 q["mmr"], q["category"], strict=True)
        except (UnknownProductError, NoVectorError) as exc:
            raise NotFound(str(exc)) from None
        return jsonify({"positive": q["positive"], "negative": q["negative"],
                        "strategy": strategy, "mmr": q["mmr"], "method": method, "k": q["k"],
                        "category": q["category"], "results": hits_json(hits)})

    @app.get("/images/<product_id>/<index>.jpg")
    def image(product_id: str, index: str) -> Response:
        # Pictures come from the BSON store by the catalogue's offset: a path is only ever
        # two validated integers, so a request cannot name a file outside the data.
        pid = parse_product_id(product_id)
        i = parse_image_index(index)
        try:
            p = rel.product(pid)
        except UnknownProductError:
            raise NotFound(f"product {pid} is not in the catalogue") from None
        if i >= p.n_images or i in p.bad_images:
            raise NotFound(f"product {pid} has no usable picture {i} "
                           f"(usable: {p.usable_images})")
        data = art.images.pictures(p)[i]
        if check_jpeg_bytes(data) is not None:
            raise NotFound(f"picture {i} of product {pid} is not a JPEG")
        resp = Response(data, mimetype="image/jpeg")
        resp.headers["Cache-Control"] = "public, max-age=86400"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_spec(art.available()))

    @app.get("/healthz")
    def health() -> Response:
        # len() costs nothing on every catalogue (MongoDB: the count its load checked).
        return jsonify({"status": "ok", "products": len(art.catalogue),
                        "methods": art.available()})

    # -- the page ----------------------------------------------------------------------------

    first: list[int] = []

    def examples() -> list[int]:
        """The first products, asked once per process: one indexed page (never every id,
        which MongoDB would stream on each page)."""
        if not first:  # one slice assignment: threads racing here store the same list
            first[:] = [p.product_id for p in art.catalogue.page(0, 5)]
        return first

    def page_context() -> dict[str, Any]:
        return {"methods": [(m, art.methods[m].label) for m in art.available()],
                "method": param("method") or art.default_method,
                "k": param("k") or 10, "product": None, "related": [],
                "recent": [], "recent_related": [], "product_id": "", "max_k": MAX_K,
                "uploaded": None, "strategies": [(s, LABELS[s]) for s in STRATEGIES],
                "strategy": session.get("strategy") or DEFAULT_STRATEGY, "negative": [],
                "photo_methods": [m for m in art.available() if art.methods[m].upload],
                "examples": examples(),
                "img": lambda pid, i: url_for("image", product_id=pid, index=i)}

    @app.post("/search")
    def search_page() -> Response:
        ctx = page_context()
        f = request.files.get("image")
        if f is None or not f.filename:
            raise RelatedError("choose a picture to search with")
        k, method, category = query_options()
        ctx.update(method=method, k=k)
        ctx["uploaded"] = hits_json(rel.search_upload(f.stream.read(MAX_UPLOAD_BYTES + 1), k,
                                                      method, category))
        return Response(render_template_string(PAGE, error=None, **ctx), mimetype="text/html")

    @app.get("/")
    def index() -> Response:
        ctx = page_context()
        raw = (request.args.get("product_id") or "").strip()
        if not raw:
            return Response(render_template_string(PAGE, error=None, **ctx), mimetype="text/html")
        ctx["product_id"] = raw
        pid = parse_product_id(raw)
        k, method, category = query_options()
        ctx.update(method=method, k=k)
        ctx["product"] = product_json(pid)
        recent = RecentlyViewed.from_list(session.get("recent"), RECENT_N)
        earlier = [r for r in recent.ids if r != pid]
        ctx["related"] = hits_json(related_hits(pid, k, method, category))
        recent.add(pid)
        session["recent"] = recent.to_list()
        strategy = request.args.get("strategy")
        if strategy is not None:  # chosen once, kept for the session
            if strategy not in STRATEGIES:
                raise RelatedError(f"strategy must be one of {', '.join(STRATEGIES)}, "
                                   f"not {strategy[:40]!r}")
            session["strategy"] = ctx["strategy"] = strategy
        negative = RecentlyViewed.from_list(session.get("negative"), NEGATIVE_N)
        ctx["negative"] = describe_ids(negative.ids)
        if earlier:
            ctx["recent"] = describe_ids(earlier)
            ctx["recent_related"] = hits_json(rel.recommend(
                recent.ids, negative.ids, k, method, ctx["strategy"], category=category))
        return Response(render_template_string(PAGE, error=None, **ctx), mimetype="text/html")

    @app.post("/not-this")
    def not_this() -> Response:
        """A tile's "not this": the product joins the session's negative examples (or
        "forget" empties them); back to the product page it was clicked on."""
        negative = RecentlyViewed.from_list(session.get("negative"), NEGATIVE_N)
        if request.form.get("forget"):
            negative = RecentlyViewed(NEGATIVE_N)
        else:
            negative.add(parse_product_id(request.form.get("product_id", "")))
        session["negative"] = negative.to_list()
        back = parse_product_id(request.form.get("back", ""))
        k = parse_k(request.form.get("k"))
        method = parse_method(request.form.get("method"), art.default_method, art.available())
        return redirect(url_for("index", product_id=back, method=method, k=k), code=303)

    def describe_ids(pids: list[int]) -> list[dict[str, Any]]:
        known = []
        for pid in pids:
            try:
                known.append(product_json(pid))
            except NotFound:
                continue
        return known

    return app


# -- OpenAPI --------------------------------------------------------------------------------


def openapi_spec(methods: list[str]) -> dict[str, Any]:
    """The OpenAPI 3.0 description of the JSON API (``methods``: those served here)."""
    error = {"description": "error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}
    pid = {"name": "product_id", "in": "path", "required": True,
           "schema": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999}}
    query = [
        {"name": "k", "in": "query", "required": False, "description": "results wanted",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10}},
        {"name": "method", "in": "query", "required": False,
         "schema": {"type": "string", "enum": methods}},
        {"name": "category", "in": "query", "required": False,
         "description": "only products of this (leaf) category id",
         "schema": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999}},
    ]
    results = {"description": "related products, best first", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Results"}}}}
    nullable_int = {"type": "integer", "nullable": True}
    ident = {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Visual product search", "version": "1.0.0",
                 "description": "Products that look like a product or a photo."},
        "paths": {
            "/api/products/{product_id}": {"get": {
                "summary": "A product", "operationId": "getProduct", "parameters": [pid],
                "responses": {"200": {"description": "the product", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Product"}}}},
                    "400": error, "404": error}}},
            "/api/products/{product_id}/related": {"get": {
                "summary": "Products that look like this one", "operationId": "getRelated",
                "parameters": [pid, *query, {
                    "name": "show_all", "in": "query", "required": False,
                    "description": "1: near duplicates too (default: one product a cluster)",
                    "schema": {"type": "string", "enum": ["0", "1", "true", "false"]}}],
                "responses": {"200": results, "400": error, "404": error}}},
            "/api/search": {"post": {
                "summary": "Products that look like an uploaded picture",
                "operationId": "searchByImage", "parameters": query,
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string", "format": "binary",
                                  "description": f"JPEG/PNG/WebP, at most "
                                                 f"{MAX_UPLOAD_BYTES} bytes"}}}}}},
                "responses": {"200": results, "400": error}}},
            "/api/recommend": {"post": {
                "summary": "Products for several positive and negative examples",
                "operationId": "recommend",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Recommend"}}}},
                "responses": {"200": results, "400": error, "404": error}}},
            "/images/{product_id}/{index}.jpg": {"get": {
                "summary": "A product's picture", "operationId": "getImage",
                "parameters": [pid, {"name": "index", "in": "path", "required": True,
                                     "schema": {"type": "integer", "minimum": 0,
                                                "maximum": 999}}],
                "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {
                    "schema": {"type": "string", "format": "binary"}}}},
                    "400": error, "404": error}}},
            "/api/methods": {"get": {
                "summary": "Search methods served here", "operationId": "getMethods",
                "responses": {"200": {"description": "methods", "content": {
                    "application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error", "status"], "properties": {
                "error": {"type": "string"}, "status": {"type": "integer"}}},
            "Product": {"type": "object", "required": ["product_id", "n_images", "images"],
                        "properties": {
                            "product_id": {"type": "integer"}, "category_id": nullable_int,
                            "category_path": {"type": "array", "nullable": True,
                                              "items": {"type": "string"}},
                            "n_images": {"type": "integer"},
                            "bad_images": {"type": "array", "items": {"type": "integer"}},
                            "images": {"type": "array", "items": {"type": "string"}}}},
            "Hit": {"type": "object", "required": ["product_id", "score"], "properties": {
                "product_id": {"type": "integer"}, "score": {"type": "number"},
                "image_index": nullable_int, "category_id": nullable_int,
                "category_path": {"type": "array", "nullable": True,
                                  "items": {"type": "string"}},
                "label": {"type": "string"},
                "image": {"type": "string", "nullable": True}}},
            "Recommend": {
                "type": "object", "required": ["positive"], "additionalProperties": False,
                "properties": {
                    "positive": {"type": "array", "minItems": 1, "maxItems": MAX_EXAMPLES,
                                 "items": ident, "description": "products to suggest from "
                                 "(recently viewed, liked); the session's own are never "
                                 "suggested"},
                    "negative": {"type": "array", "maxItems": MAX_EXAMPLES, "items": ident,
                                 "description": '"not this": steer away from these'},
                    "strategy": {"type": "string", "enum": list(STRATEGIES),
                                 "default": DEFAULT_STRATEGY, "description":
                                 "mean: one search with the mean vector; best: max cosine "
                                 "to a positive minus max to a negative; round_robin: each "
                                 "positive's own neighbours in turn"},
                    "mmr": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True,
                            "description": "diversity weight against near-identical "
                                           "results (maximal marginal relevance); 0: off"},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
                    "method": {"type": "string", "enum": methods},
                    "category": {**ident, "nullable": True,
                                 "description": "only products of this category id"}}},
            "Results": {"type": "object", "required": ["results"], "properties": {
                "product_id": {"type": "integer"}, "method": {"type": "string"},
                "k": {"type": "integer"}, "category": nullable_int,
                "results": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}}}},
        }},
    }


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Visual product search{% if product %} - {{ product.product_id }}{% endif %}</title>
<style>
 :root { --ink:#1d2330; --muted:#6b7385; --line:#e3e6ec; --accent:#2f6fde; }
 * { box-sizing: border-box; }
 body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
        margin: 0; background: #f6f7f9; }
 header { background: #fff; border-bottom: 1px solid var(--line); padding: 14px 24px; }
 header h1 { font-size: 19px; margin: 0 0 8px; }
 main { max-width: 1120px; margin: 0 auto; padding: 18px 24px 40px; }
 form { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; }
 input, select, button { font: inherit; padding: 6px 10px; border: 1px solid var(--line);
        border-radius: 6px; background: #fff; }
 button { background: var(--accent); color: #fff; border-color: var(--accent); cursor: pointer; }
 .hint { color: var(--muted); font-size: 13px; }
 .hint a { color: var(--accent); }
 .error { background: #fff1f0; border: 1px solid #f3c5c1; color: #a12a1e; padding: 10px 14px;
          border-radius: 8px; margin: 12px 0; }
 .product { display: flex; gap: 18px; background: #fff; border: 1px solid var(--line);
            border-radius: 10px; padding: 16px; margin: 14px 0; align-items: flex-start; }
 .product .pics { display: flex; gap: 6px; flex-wrap: wrap; }
 .product .pics img { width: 150px; height: 150px; object-fit: contain; border-radius: 6px;
                      background: #fafafa; border: 1px solid var(--line); }
 .path { color: var(--muted); }
 h2 { font-size: 16px; margin: 22px 0 8px; }
 .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(138px, 1fr)); gap: 10px; }
 .card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px;
         text-decoration: none; color: inherit; display: block; }
 .card:hover { border-color: var(--accent); }
 .card img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #fafafa;
             border-radius: 4px; }
 .card .label { font-size: 13px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
 .card .score { font-size: 12px; color: var(--muted); }
 .strip { display: flex; gap: 8px; overflow-x: auto; }
 .strip .card { width: 110px; flex: none; }
 form.upload { margin-top: 8px; }
 .tile { display: flex; flex-direction: column; gap: 4px; }
 .tile .card { flex: 1; }
 form.not-this button { width: 100%; background: #fff; color: var(--muted); font-size: 12px;
                        padding: 2px 6px; border-color: var(--line); }
 .empty { color: var(--muted); background: #fff; border: 1px dashed var(--line);
          padding: 14px; border-radius: 8px; }
</style></head>
<body>
{% macro not_this(h) %}<form method="post" action="/not-this" class="not-this">
 <input type="hidden" name="product_id" value="{{ h.product_id }}">
 <input type="hidden" name="back" value="{{ product.product_id }}">
 <input type="hidden" name="method" value="{{ method }}"><input type="hidden" name="k"
  value="{{ k }}"><button type="submit" title="fewer like this">Not this</button></form>
{% endmacro %}
<header>
 <h1>Visual product search</h1>
 <form method="get" action="/">
  <label for="product_id">Product id</label>
  <input id="product_id" name="product_id" value="{{ product_id }}" inputmode="numeric"
         placeholder="e.g. {{ examples[0] if examples else '' }}" autofocus>
  <select name="method" aria-label="method">
   {% for m, label in methods %}
   <option value="{{ m }}" {% if m == method %}selected{% endif %}>{{ label }}</option>
   {% endfor %}
  </select>
  <input name="k" type="number" min="1" max="{{ max_k }}" value="{{ k }}" aria-label="k"
         style="width:5em">
  <select name="strategy" aria-label="recommendation strategy"
          title="how &quot;related to what you recently viewed&quot; is made">
   {% for s, label in strategies %}
   <option value="{{ s }}" {% if s == strategy %}selected{% endif %}>{{ label }}</option>
   {% endfor %}
  </select>
  <button type="submit">Show</button>
 </form>
 <div class="hint">Try {% for e in examples %}<a class="example"
   href="/?product_id={{ e }}&method={{ method }}">{{ e }}</a>{% if not loop.last %}, {% endif %}
   {% endfor %} &middot; API: <a href="/openapi.json">/openapi.json</a></div>
 <form method="post" action="/search" enctype="multipart/form-data" class="upload">
  <label for="image">Or search by photo</label>
  <input id="image" type="file" name="image" accept="image/jpeg,image/png,image/webp">
  <select name="method" aria-label="photo method">
   {% for m in photo_methods %}<option value="{{ m }}" {% if m == method %}selected{% endif %}>{{
     dict(methods)[m] }}</option>{% endfor %}
  </select>
  <input type="hidden" name="k" value="{{ k }}">
  <button type="submit">Search</button>
 </form>
</header>
<main>
{% if error %}<div class="error" role="alert">{{ error }}</div>{% endif %}
{% if product %}
 <section class="product" id="product">
  <div class="pics">{% for src in product.images %}<img src="{{ src }}" alt="picture">{% endfor %}
   {% if not product.images %}<div class="empty">no usable picture</div>{% endif %}</div>
  <div><h2 style="margin-top:0">Product {{ product.product_id }}</h2>
   <div class="path">{{ (product.category_path or ['unknown category']) | join(' › ') }}</div>
   <div class="hint">{{ product.images | length }} picture(s)</div></div>
 </section>
 <h2>Looks like it</h2>
 {% if related %}
 <div class="grid" id="related">{% for h in related %}
  <div class="tile">
  <a class="card" href="/?product_id={{ h.product_id }}&method={{ method }}&k={{ k }}">
   {% if h.image %}<img src="{{ h.image }}" alt="{{ h.label }}">{% endif %}
   <div class="label" title="{{ (h.category_path or []) | join(' › ') }}">{{ h.label }}</div>
   <div class="score">{{ h.product_id }} &middot; {{ '%.3f' % h.score }}</div></a>
  {{ not_this(h) }}</div>
 {% endfor %}</div>
 {% else %}<div class="empty">No related products for these settings.</div>{% endif %}
 {% if recent %}
 <h2>Related to what you recently viewed</h2>
 {% if recent_related %}<div class="grid" id="recent-related">{% for h in recent_related %}
  <div class="tile">
  <a class="card" href="/?product_id={{ h.product_id }}&method={{ method }}&k={{ k }}">
   {% if h.image %}<img src="{{ h.image }}" alt="{{ h.label }}">{% endif %}
   <div class="label">{{ h.label }}</div>
   <div class="score">{{ h.product_id }} &middot; {{ '%.3f' % h.score }}</div></a>
  {{ not_this(h) }}</div>
 {% endfor %}</div>{% else %}<div class="empty">Nothing new to suggest.</div>{% endif %}
 <h2>Recently viewed</h2>
 <div class="strip" id="recent">{% for p in recent %}
  <a class="card" href="/?product_id={{ p.product_id }}&method={{ method }}&k={{ k }}">
   {% if p.images %}<img src="{{ p.images[0] }}" alt="recently viewed">{% endif %}
   <div class="score">{{ p.product_id }}</div></a>{% endfor %}</div>
 {% endif %}
 {% if negative %}
 <h2>Not for you</h2>
 <div class="strip" id="negative">{% for p in negative %}
  <a class="card" href="/?product_id={{ p.product_id }}&method={{ method }}&k={{ k }}">
   {% if p.images %}<img src="{{ p.images[0] }}" alt="not for you">{% endif %}
   <div class="score">{{ p.product_id }}</div></a>{% endfor %}</div>
 <form method="post" action="/not-this"><input type="hidden" name="forget" value="1">
  <input type="hidden" name="back" value="{{ product.product_id }}">
  <button type="submit" id="forget">Forget these</button></form>
 {% endif %}
{% elif uploaded is not none %}
 <h2>Looks like your photo</h2>
 {% if uploaded %}<div class="grid" id="uploaded">{% for h in uploaded %}
  <a class="card" href="/?product_id={{ h.product_id }}&method={{ method }}&k={{ k }}">
   {% if h.image %}<img src="{{ h.image }}" alt="{{ h.label }}">{% endif %}
   <div class="label">{{ h.label }}</div>
   <div class="score">{{ h.product_id }} &middot; {{ '%.3f' % h.score }}</div></a>
 {% endfor %}</div>{% else %}<div class="empty">No product looks like it.</div>{% endif %}
{% elif not error %}
 <div class="empty">Enter a product id above to see the products that look like it.</div>
{% endif %}
</main></body></html>
"""
