"""Related products, the query service of the apps: by product, by what a user recently
viewed, and by an uploaded photo.

    from helpers.serve.related import Related
    rel = Related(load_artifacts())
    rel.related(1000010653, k=10, method="faiss")                 # list[Hit], best first
    rel.related_to_recent(seen.ids, k=10, method="annoy")        # leaves out what was seen
    rel.recommend([a, b], negative=[c], k=10, strategy="best", mmr=0.3)  # several products
    rel.search_upload(photo_bytes, k=10, method="faiss")          # the index's own model, no TF

Every search goes through one path (`search_vector`): the method's index, a category
filter, products to leave out, and, for image-level indexes, one hit per product (its
best picture), and, unless ``collapse=False``, one product per near-duplicate cluster (the
clusters of the method's vector store, found through the workspace:
`Workspace.near_duplicates`; none built: nothing collapsed); hits are
`helpers.index.hits.Hit`. Recommendations from several products (positive and "not this"
examples) run `helpers.index.recommend`'s strategies over that same path. An uploaded photo
is checked and decoded by `helpers.serve.inputs.decode_upload` (as the catalogue pictures
were: EXIF orientation, alpha on white, draft/reduce) and embedded by the model its
method's vectors were made with (`helpers.models.extractor_for`, from the store's
``made_by``). Input errors are `RelatedError` subclasses (ValueError), so an app turns
them into a 400 (or a 404 for an
unknown product) with their message.

Imports numpy, the catalogue protocol, `helpers.core.ids`, the index layer (`Hit`,
`LocalIndex`), `helpers.ingest.jpeg.to_float`, `helpers.serve.loader` (Artifacts, Method),
`helpers.serve.inputs`, `helpers.workspace` (near-duplicate clusters), and `helpers.models`
on the first photo search only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from helpers.catalogue.protocol import UnknownProductError
from helpers.core.ids import IdMap
from helpers.index.hits import Hit, to_hits
from helpers.index.local import LocalIndex
from helpers.index.recommend import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    StrategyError,
    check_strategy,
)
from helpers.index.recommend import recommend as recommend_hits
from helpers.ingest.jpeg import to_float
from helpers.serve.inputs import RelatedError, decode_upload, parse_k
from helpers.serve.loader import Artifacts, Method
from helpers.workspace import Workspace

PRODUCT_CACHE = 100_000  # Product objects kept by a Related (about 40 MB at most)
MERGES = ("mean", "merge")  # related_to_recent's older names: "merge" is now "best"
MAX_EXAMPLES = 20  # positive + negative products of one recommendation


class UnknownMethodError(RelatedError):
    """A method name that is not one of the methods, or not available here."""


class NoVectorError(RelatedError):
    """A product without a vector (none of its pictures decoded): nothing to compare."""


class Related:
    """Related-product queries over loaded artifacts; thread-safe (apps serve in threads)."""

    def __init__(self, artifacts: Artifacts, onnx_threads: int | None = 1) -> None:
        self.art = artifacts
        self.onnx_threads = onnx_threads
        self._extractors: dict[tuple, Any] = {}  # one per model: see extractor()
        self._lock = threading.Lock()
        self._rows: dict[int, IdMap] = {}  # per store: its product ids -> rows
        # per index: (category ids, items of each), sorted by id
        self._cats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._products: dict[int, Any] = {}  # product id -> Product (immutable once loaded)
        self._clusters: dict[int, Any] = {}  # per store: its NearDuplicates, or None

    # -- products (cached: a page shows the same products again and again) --

    def product(self, product_id: int) -> Any:
        """The catalogue's product (UnknownProductError if it is not there)."""
        pid = int(product_id)
        p = self._products.get(pid)
        if p is None:
            p = self.art.catalogue.product(pid)
            if len(self._products) >= PRODUCT_CACHE:
                self._products.clear()  # bounded; refilled by what is asked next
            self._products[pid] = p
        return p

    def products(self, product_ids: Sequence[int]) -> list[Any]:
        missing = [int(p) for p in product_ids if int(p) not in self._products]
        if missing:
            for p in self.art.catalogue.products(missing):
                self._products[p.product_id] = p
        return [self.product(p) for p in product_ids]

    # -- methods --

    def method(self, name: str | None) -> Method:
        """The named method (default: the artifacts' default); UnknownMethodError if it
        is not a method or is unavailable here, saying why and what builds it."""
        name = name or self.art.default_method
        m = self.art.methods.get(name)
        if m is None:
            raise UnknownMethodError(f"unknown method {name[:40]!r}; available: "
                                     f"{', '.join(self.art.available())}")
        if not m.available:
            raise UnknownMethodError(f"method {name!r} is not available here: {m.reason}")
        return m

    # -- vectors of products --

    def product_vector(self, product_id: int, method: Method) -> np.ndarray:
        """The unit vector of a product in the method's space (mean of its pictures'
        vectors at image level). UnknownProductError / NoVectorError."""
        self.product(product_id)  # UnknownProductError for unknown ids
        return self._vector(int(product_id), method)

    def _vector(self, pid: int, method: Method) -> np.ndarray:
        """product_vector without the catalogue check (products an index returned)."""
        store = method.store
        rows = self._product_rows(store, pid)
        if rows.size == 0:
            raise NoVectorError(f"product {pid} has no vector (no usable picture), "
                                f"so nothing to compare it with")
        v = np.asarray(store.vectors[np.sort(rows)], np.float32)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        mean = v.mean(axis=0)
        return mean / np.linalg.norm(mean)

    def _vectors(self, pids: Sequence[int], method: Method) -> np.ndarray:
        """Unit vectors of products an index returned, [len(pids), d]: one read at product
        level (a row each), a mean per product at image level."""
        if method.level != "product":
            return np.stack([self._vector(int(p), method) for p in pids])
        self._product_rows(method.store, 0)  # builds the store's id map once
        rows = self._rows[id(method.store)].rows(np.asarray(pids, np.int64))
        order = np.argsort(rows)  # increasing rows: a memory-mapped read in file order
        read = np.asarray(method.store.vectors[rows[order]], np.float32)
        v = np.empty_like(read)
        v[order] = read
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def _product_rows(self, store: Any, pid: int) -> np.ndarray:
        key = id(store)
        if key not in self._rows:
            self._rows[key] = IdMap(store.product_ids)
        return self._rows[key].all_rows(pid)

    def _category_count(self, method: Method, category: int | None) -> int:
        """Items the index can return under the filter (to ask for no more than exist)."""
        if category is None:
            # A remote engine (Elasticsearch) counts with a request: it pads instead.
            return len(method.index) if isinstance(method.index, LocalIndex) else 10**9
        key = id(method.index)
        if key not in self._cats:
            # Items per category, counted once: the index's own categories where it keeps
            # them (no catalogue query: MongoDB would look up every item), else the
            # catalogue's categories of the store's items.
            cats = method.index.categories if isinstance(method.index, LocalIndex) else None
            if cats is None:
                cats = self.art.catalogue.category_ids(method.store.product_ids)
            self._cats[key] = np.unique(cats, return_counts=True)
        ids, counts = self._cats[key]
        i = int(np.searchsorted(ids, int(category)))
        return int(counts[i]) if i < len(ids) and ids[i] == int(category) else 0

    def clusters(self, method: Method) -> Any:
        """The near-duplicate clusters of the method's vectors (NearDuplicates), or None
        when none were built for them (read once per store; serving builds nothing)."""
        store = method.store
        if store is None:
            return None
        key = id(store)
        if key not in self._clusters:
            self._clusters[key] = Workspace(self.art.work_dir).near_duplicates(
                store, threshold=None, build=False)
        return self._clusters[key]

    # -- searches --

    def search_vector(self, vector: np.ndarray, k: int = 10, method: str | None = None,
                      category: int | None = None, exclude: Iterable[int] = (),
                      collapse: bool = True) -> list[Hit]:
        """The k products nearest a query vector, best first, ``exclude`` left out.

        collapse: one product per near-duplicate cluster (the best-scored), the clusters of
        the excluded products left out too (the same product again); False shows all."""
        return self._search(self.method(method), vector, parse_k(k), category,
                            {int(x) for x in exclude}, collapse)

    def _search(self, m: Method, vector: np.ndarray, k: int, category: int | None,
                skip: set[int], collapse: bool = True) -> list[Hit]:
        clusters = self.clusters(m) if collapse else None
        per_product = 4 if m.level == "image" else 1  # Cdiscount: up to 4 pictures each
        if clusters is not None:
            per_product *= 2  # room for the copies passed over
        available = self._category_count(m, category)
        want = min((k + len(skip)) * per_product, available)
        if want <= 0:
            return []
        q = np.asarray(vector, np.float32).reshape(1, -1)
        res = m.index.search(q, want, category=category)
        hits: list[Hit] = []
        seen: set[int] = set()
        found = [h for h in to_hits(res, level=m.level) if np.isfinite(h.score)]  # no padding
        cluster = dict.fromkeys((h.product_id for h in found), -1)
        shown: set[int] = set()
        if clusters is not None and found:
            pids = np.fromiter(cluster, np.int64)
            cluster = dict(zip(pids.tolist(), clusters.product_cluster_of(pids).tolist(),
                               strict=True))
            shown = {c for c in clusters.product_cluster_of(list(skip)).tolist() if c >= 0}
        for h in found:
            pid = h.product_id
            if pid in skip or pid in seen:
                continue  # left out, or a second picture of a product
            seen.add(pid)
            if cluster[pid] >= 0:
                if cluster[pid] in shown:
                    continue  # a near duplicate of a product shown (or left out)
                shown.add(cluster[pid])
            hits.append(h)
            if len(hits) == k:
                break
        return hits

    def related(self, product_id: int, k: int = 10, method: str | None = None,
                category: int | None = None, collapse: bool = True) -> list[Hit]:
        """Products that look like this one (itself, and its near duplicates unless
        ``collapse=False``, left out)."""
        m = self.method(method)
        v = self.product_vector(product_id, m)
        return self.search_vector(v, k, m.name, category, exclude=[product_id],
                                  collapse=collapse)

    def related_to_recent(self, product_ids: Sequence[int], k: int = 10,
                          method: str | None = None, how: str = "mean",
                          category: int | None = None) -> list[Hit]:
        """Products related to what was recently viewed, the viewed ones left out: a
        `recommend` from them as positives (``how``: a strategy; "merge" = "best").
        Viewed products without a vector are passed over."""
        if how not in (*MERGES, *STRATEGIES):
            raise RelatedError(f"how must be one of {STRATEGIES}, not {how!r}")
        return self.recommend(product_ids, (), k, method,
                              strategy="best" if how == "merge" else how, category=category)

    def recommend(self, positive: Sequence[int], negative: Sequence[int] = (), k: int = 10,
                  method: str | None = None, strategy: str = DEFAULT_STRATEGY,
                  mmr: float = 0.0, category: int | None = None,
                  strict: bool = False) -> list[Hit]:
        """Products for several positive examples and "not this" negative ones, none of
        them returned (`helpers.index.recommend`: strategy "mean", "best" or
        "round_robin"; ``mmr`` 0..1 against near-identical rows).

        strict=False (ids kept in a session): examples gone from the catalogue or without
        a vector are passed over. strict=True (ids a client sent): they are errors
        (UnknownProductError / NoVectorError naming the id and its field).
        """
        m = self.method(method)
        try:
            strategy, mmr = check_strategy(strategy, mmr)
        except StrategyError as exc:
            raise RelatedError(str(exc)) from None
        k = parse_k(k)
        pos, neg = [int(p) for p in positive], [int(p) for p in negative]
        if len(pos) + len(neg) > MAX_EXAMPLES:
            raise RelatedError(f"at most {MAX_EXAMPLES} products in positive and negative "
                               f"together, got {len(pos) + len(neg)}")
        both = sorted(set(pos) & set(neg))
        if both and strict:
            raise RelatedError(f"product {both[0]} is both positive and negative")
        neg = [p for p in neg if p not in both]  # viewed again after a "not this": viewed
        pvec = self._example_vectors(pos, m, "positive", strict)
        if not pvec:
            return []
        nvec = self._example_vectors(neg, m, "negative", strict)
        skip = set(pos) | set(neg)
        return recommend_hits(
            lambda q, n: self._search(m, q, n, category, skip),
            lambda pids: self._vectors(pids, m),
            np.stack(pvec), np.stack(nvec) if nvec else None, k, strategy, mmr=mmr)

    def _example_vectors(self, pids: list[int], m: Method, field: str,
                         strict: bool) -> list[np.ndarray]:
        out = []
        for pid in pids:
            try:
                out.append(self.product_vector(pid, m))
            except UnknownProductError:
                if strict:
                    raise UnknownProductError(f"{field} product {pid} is not in the "
                                              f"catalogue") from None
            except NoVectorError as exc:
                if strict:
                    raise NoVectorError(f"{field}: {exc}") from None
        return out

    def embed_upload(self, data: bytes, method: str | None = None) -> np.ndarray:
        """The vector of an uploaded picture, by the model (backend, precision, picture size)
        that made the method's vectors, never TensorFlow."""
        m = self.method(method)
        extractor = self.extractor(m.name)
        return extractor(to_float([decode_upload(data, m.image_size)]))[0]

    def search_upload(self, data: bytes, k: int = 10, method: str | None = None,
                      category: int | None = None) -> list[Hit]:
        """Products that look like an uploaded picture."""
        m = self.method(method)
        return self.search_vector(self.embed_upload(data, m.name), k, m.name, category)

    def extractor(self, method: str | None = None) -> Any:
        """The model that embeds a photo for ``method`` (default: the default method): the
        one its vectors' ``made_by`` names, loaded on first use (start-up embeds nothing)
        and shared by the methods whose vectors it made. UnknownMethodError when it cannot
        run here."""
        from helpers.models import extractor_args, extractor_for

        m = self.method(method)
        made_by = m.store.made_by if m.store is not None else {}
        try:
            if not m.upload:  # VGG16 style vectors: TensorFlow
                raise ValueError("its model needs TensorFlow")
            args = extractor_args(made_by, serving=True)
        except ValueError as exc:
            can = ", ".join(n for n in self.art.available() if self.art.methods[n].upload)
            raise UnknownMethodError(f"method {m.name!r} cannot search by photo here ({exc});"
                                     f" use one of: {can}") from None
        key = (*sorted((k, str(v)) for k, v in args.items()), made_by.get("weights_sha256"))
        with self._lock:
            if key not in self._extractors:
                try:
                    self._extractors[key] = extractor_for(
                        made_by, serving=True, intra_op_threads=self.onnx_threads)
                except ValueError as exc:  # other weights here than there
                    raise UnknownMethodError(f"method {m.name!r} cannot search by photo "
                                             f"here ({exc})") from None
            return self._extractors[key]

