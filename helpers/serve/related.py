"""Related products: by product, by what a user recently viewed, and by an uploaded photo.

    from helpers.serve.related import Related, RecentlyViewed
    rel = Related(load_artifacts())
    rel.related(1000010653, k=10, method="faiss")                 # list[Hit], best first
    seen = RecentlyViewed(n=5); seen.add(1000010653); seen.add(1000010700)
    rel.related_to_recent(seen.ids, k=10, method="annoy")        # leaves out what was seen
    rel.search_upload(photo_bytes, k=10, method="faiss")          # the index's own model, no TF

Every search goes through one path (`search_vector`): the method's index, a category
filter, products to leave out, and, for image-level indexes, one hit per product (its
best picture). An uploaded photo is decoded as the catalogue pictures were
(`helpers.images.decode_image`: EXIF orientation, alpha on white, draft/reduce) and embedded
by the model its method's vectors were made with (`helpers.models.extractor_for`, from
the store's ``made_by``). Input errors are `RelatedError` subclasses (ValueError), so an app turns
them into a 400 (or a 404 for an unknown product) with their message.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from helpers.catalogue.protocol import UnknownProductError
from helpers.core.ids import IdMap
from helpers.index.hits import Hit, to_hits
from helpers.index.local import LocalIndex
from helpers.ingest.jpeg import ImageError, decode_image, to_float
from helpers.serve.loader import Artifacts, Method

MAX_K = 100
MAX_RECENT = 10
PRODUCT_CACHE = 100_000  # Product objects kept by a Related (about 40 MB at most)
MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # a phone photo is 2-6 MB
MAX_UPLOAD_PIXELS = 40_000_000  # 8000 x 5000; checked on the header, before any decode
# MPO: a phone's JPEG with its preview picture (MPF); the first frame is the photo.
UPLOAD_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP")
MERGES = ("mean", "merge")


class RelatedError(ValueError):
    """Bad input to a related-products query (an app answers 400 with the message)."""


class UnknownMethodError(RelatedError):
    """A method name that is not one of the methods, or not available here."""


class NoVectorError(RelatedError):
    """A product without a vector (none of its pictures decoded): nothing to compare."""


class UploadError(RelatedError):
    """An upload that is not a picture, too big, or a decompression bomb."""


class RecentlyViewed:
    """The last ``n`` products a user viewed, most recent first, each once.

    Plain data (a list of ints) so it lives in a Streamlit session state or a Flask
    session cookie: ``RecentlyViewed.from_list(session.get("recent"))``.
    """

    def __init__(self, n: int = 5, ids: Iterable[int] = ()) -> None:
        if not 1 <= n <= MAX_RECENT:
            raise ValueError(f"n must lie in [1, {MAX_RECENT}], got {n}")
        self._ids: deque[int] = deque(maxlen=n)
        for pid in reversed(list(ids)):
            self.add(pid)

    def add(self, product_id: int) -> None:
        pid = int(product_id)
        if pid in self._ids:
            self._ids.remove(pid)
        self._ids.appendleft(pid)

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def to_list(self) -> list[int]:
        return self.ids

    @classmethod
    def from_list(cls, data: Any, n: int = 5) -> RecentlyViewed:
        """From stored data; anything malformed (an edited cookie) gives an empty list."""
        try:
            ids = [int(x) for x in (data or [])][:n]
        except (TypeError, ValueError):
            ids = []
        return cls(n, ids)


# -- input checks shared by the apps ---------------------------------------------------------


def parse_product_id(text: Any) -> int:
    """A product id from user input: decimal digits only (a malformed one is RelatedError)."""
    s = str(text).strip()
    if not s.isdecimal() or not s.isascii() or len(s) > 18:
        raise RelatedError(f"a product id is a whole number of up to 18 digits, not {s[:40]!r}")
    return int(s)


def parse_k(value: Any, default: int = 10) -> int:
    if value is None:  # absent; present but empty is malformed
        return default
    s = str(value).strip()
    # ASCII digits, no leading zero, no more digits than MAX_K has: only then is int() cheap
    # and its value the one the text says ("000001000" is not 1,000).
    if (not s.isascii() or not s.isdecimal() or s[0] == "0" or len(s) > len(str(MAX_K))
            or int(s) > MAX_K):
        raise RelatedError(f"k must be a whole number from 1 to {MAX_K}, not {s[:20]!r}")
    return int(s)


def check_upload(data: bytes, max_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """The uploaded picture, opened lazily (header read, pixels not decoded yet).

    Refuses: empty or oversized uploads, anything Pillow cannot identify or that is not a
    photo format, and pictures whose header announces more than ``max_pixels`` pixels (a
    decompression bomb: a few kB that decode to gigabytes) -- before decoding them.
    """
    if not data:
        raise UploadError("the upload is empty: send a JPEG or PNG picture")
    if len(data) > max_bytes:
        raise UploadError(f"the upload has {len(data):,} bytes; the limit is {max_bytes:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(f"picture refused: too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError):
        raise UploadError("the upload is not a picture Pillow can read (send a JPEG or PNG)") \
            from None
    if img.format not in UPLOAD_FORMATS:
        raise UploadError(f"{img.format} pictures are not accepted; send one of "
                          f"{', '.join(UPLOAD_FORMATS)}")
    w, h = img.size
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise UploadError(f"the picture is {w}x{h} pixels; the limit is {max_pixels:,} pixels")
    return img


def decode_upload(data: bytes, size: int, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """A checked upload decoded to uint8 RGB [size, size, 3] as a catalogue picture is
    (`helpers.images.decode_image`: upright by its EXIF orientation, transparency on white,
    a JPEG or MPO decoded at 1/2..1/8 scale in draft mode).

    Memory of one call: a JPEG of ``max_pixels`` (40 M) decodes at 1/8 scale, 2 MB (4 MB
    peak measured); a PNG (WebP, GIF, BMP) cannot be drafted and decodes in full: up to 4
    bytes a pixel, 160 MB at 40 Mpixels of RGBA (173 MB peak measured with the reduction).
    ``tests/test_uploads.py`` checks the bound.
    """
    check_upload(data, max_bytes, max_pixels)
    try:
        return decode_image(data, size, max_side=None, max_pixels=max_pixels)
    except ImageError as exc:
        raise UploadError(f"the picture does not decode: {exc}") from None


# -- the service ------------------------------------------------------------------------------


class Related:
    """Related-product queries over loaded artifacts; thread-safe (apps serve in threads)."""

    def __init__(self, artifacts: Artifacts, onnx_threads: int | None = 1) -> None:
        self.art = artifacts
        self.onnx_threads = onnx_threads
        self._extractors: dict[tuple, Any] = {}  # one per model: see extractor()
        self._lock = threading.Lock()
        self._rows: dict[int, IdMap] = {}  # per store: its product ids -> rows
        self._cats: dict[int, np.ndarray] = {}  # per store: category of each item
        self._products: dict[int, Any] = {}  # product id -> Product (immutable once loaded)

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
        store = method.store
        rows = self._product_rows(store, int(product_id))
        if rows.size == 0:
            raise NoVectorError(f"product {product_id} has no vector (no usable picture), "
                                f"so nothing to compare it with")
        v = np.asarray(store.vectors[np.sort(rows)], np.float32)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        mean = v.mean(axis=0)
        return mean / np.linalg.norm(mean)

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
        key = id(method.store)
        if key not in self._cats:
            self._cats[key] = self.art.catalogue.category_ids(method.store.product_ids)
        return int(np.count_nonzero(self._cats[key] == int(category)))

    # -- searches --

    def search_vector(self, vector: np.ndarray, k: int = 10, method: str | None = None,
                      category: int | None = None, exclude: Iterable[int] = ()) -> list[Hit]:
        """The k products nearest a query vector, best first, ``exclude`` left out."""
        m = self.method(method)
        k = parse_k(k)
        skip = {int(x) for x in exclude}
        per_product = 4 if m.level == "image" else 1  # Cdiscount: up to 4 pictures each
        available = self._category_count(m, category)
        want = min((k + len(skip)) * per_product, available)
        if want <= 0:
            return []
        q = np.asarray(vector, np.float32).reshape(1, -1)
        res = m.index.search(q, want, category=category)
        hits: list[Hit] = []
        seen: set[int] = set()
        for h in to_hits(res, level=m.level):  # padding dropped
            pid = h.product_id
            if pid in skip or pid in seen or not np.isfinite(h.score):
                continue  # left out, or a second picture of a product
            seen.add(pid)
            hits.append(h)
            if len(hits) == k:
                break
        return hits

    def related(self, product_id: int, k: int = 10, method: str | None = None,
                category: int | None = None) -> list[Hit]:
        """Products that look like this one (itself left out)."""
        m = self.method(method)
        v = self.product_vector(product_id, m)
        return self.search_vector(v, k, m.name, category, exclude=[product_id])

    def related_to_recent(self, product_ids: Sequence[int], k: int = 10,
                          method: str | None = None, how: str = "mean",
                          category: int | None = None) -> list[Hit]:
        """Products related to what was recently viewed, the viewed ones left out.

        how="mean": one search with the mean of the viewed products' unit vectors (what
        they share); how="merge": one search per viewed product, each product keeping its
        best score (a bit of each). Viewed products without a vector are passed over.
        """
        if how not in MERGES:
            raise RelatedError(f"how must be one of {MERGES}, not {how!r}")
        m = self.method(method)
        seen = [int(p) for p in product_ids]
        vecs = []
        for pid in seen:
            try:
                vecs.append(self.product_vector(pid, m))
            except (UnknownProductError, NoVectorError):
                continue  # gone from the catalogue since it was viewed, or no picture
        if not vecs:
            return []
        if how == "mean":
            mean = np.mean(vecs, axis=0)
            norm = np.linalg.norm(mean)
            if norm < 1e-6:  # opposite vectors cancel: fall back to a merge
                how = "merge"
            else:
                return self.search_vector(mean / norm, k, m.name, category, exclude=seen)
        best: dict[int, Hit] = {}
        for v in vecs:
            for h in self.search_vector(v, k, m.name, category, exclude=seen):
                if h.product_id not in best or h.score > best[h.product_id].score:
                    best[h.product_id] = h
        return sorted(best.values(), key=lambda h: -h.score)[:k]

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


def describe(catalogue: Any, hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Hits with what a page shows: category path, label, the picture to show (the hit's
    own picture at image level, else the product's first usable one; None if it has none).

    ``catalogue``: anything with ``products(ids)``: a Catalogue, or a `Related` (cached).
    """
    if not hits:
        return []
    products = {p.product_id: p for p in catalogue.products([h.product_id for h in hits])}
    out = []
    for h in hits:
        p = products[h.product_id]
        usable = p.usable_images
        picture = h.image_index if h.image_index is not None else (usable[0] if usable else None)
        out.append({**h.to_dict(), "category_id": p.category_id,
                    "category_path": list(p.category_path) if p.category_path else None,
                    "label": p.label, "picture": picture})
    return out


def category_names(catalogue: Any) -> dict[int, str]:
    """Category id -> "level1 › level2 › level3" for every category of the catalogue."""
    cids = np.unique(catalogue.category_ids(catalogue.ids()))
    out = {}
    for cid in cids.tolist():
        if cid < 0:
            continue
        path = catalogue.category_path(cid)
        out[int(cid)] = " › ".join(path) if path else str(cid)
    return out


def find_products(catalogue: Any, query: str, limit: int = 50,
                  categories: dict[int, str] | None = None) -> list[Any]:
    """Products matching a picker's search box: a product id, a category id, or words of a
    category name (case-insensitive, every word must appear). Empty: the first products."""
    q = (query or "").strip()
    if not q:
        return catalogue.page(0, limit)
    found: list[Any] = []
    if q.isdecimal() and q.isascii() and len(q) <= 18:
        try:
            found.append(catalogue.product(int(q)))
        except UnknownProductError:
            pass
        found += catalogue.by_category(int(q), limit=limit)
        return found[:limit]
    words = q.casefold().split()
    names = categories if categories is not None else category_names(catalogue)
    for cid, name in names.items():
        if all(w in name.casefold() for w in words):
            found += catalogue.by_category(cid, limit=limit - len(found))
            if len(found) >= limit:
                break
    return found[:limit]
