"""What the apps accept from a user: ids, k, method and category fields, and uploaded photos.

    from helpers.serve.inputs import RelatedError, parse_k, parse_product_id, decode_upload
    pid = parse_product_id(request.args["product_id"])    # RelatedError if malformed
    k = parse_k(request.args.get("k"))                     # 10 when absent, 1..MAX_K
    pixels = decode_upload(photo_bytes, 224)               # UploadError if refused
    query = parse_recommend(request.get_json(silent=True))  # POST /api/recommend's body

Every check raises a `RelatedError` (a ValueError) whose message says what is expected, so
an app answers 400 with it. `RelatedError` is the base of every input error of
`helpers.serve` (`helpers.serve.related` adds UnknownMethodError and NoVectorError).
Whether a method is one the artifacts serve is `Related.method`'s to say; here a method
field is only read. Uploads are checked on their header (size, format, pixel count: a
decompression bomb is refused before any decode), then decoded as catalogue pictures are.

Imports numpy, Pillow and `helpers.ingest.jpeg` only (no artifacts, no models).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from helpers.ingest.jpeg import ImageError, decode_image

MAX_K = 100
MAX_EXAMPLES = 10  # products in each of a recommendation's positive and negative lists
RECOMMEND_FIELDS = ("positive", "negative", "strategy", "mmr", "k", "method", "category")
MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # a phone photo is 2-6 MB
MAX_UPLOAD_PIXELS = 40_000_000  # 8000 x 5000; checked on the header, before any decode
# MPO: a phone's JPEG with its preview picture (MPF); the first frame is the photo.
UPLOAD_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP")


class RelatedError(ValueError):
    """Bad input to a related-products query (an app answers 400 with the message)."""


class UploadError(RelatedError):
    """An upload that is not a picture, too big, or a decompression bomb."""


# -- fields ----------------------------------------------------------------------------------


def parse_product_id(text: Any) -> int:
    """A product id from user input: decimal digits only (a malformed one is RelatedError)."""
    s = str(text).strip()
    if not s.isdecimal() or not s.isascii() or len(s) > 18:
        raise RelatedError(f"a product id is a whole number of up to 18 digits, not {s[:40]!r}")
    return int(s)


def parse_k(value: Any, default: int = 10) -> int:
    """How many results: 1..MAX_K; ``default`` when absent (None), refused when empty."""
    if value is None:  # absent; present but empty is malformed
        return default
    s = str(value).strip()
    # ASCII digits, no leading zero, no more digits than MAX_K has: only then is int() cheap
    # and its value the one the text says ("000001000" is not 1,000).
    if (not s.isascii() or not s.isdecimal() or s[0] == "0" or len(s) > len(str(MAX_K))
            or int(s) > MAX_K):
        raise RelatedError(f"k must be a whole number from 1 to {MAX_K}, not {s[:20]!r}")
    return int(s)


def parse_category(text: Any) -> int:
    """A category id from user input (a whole number of up to 18 digits)."""
    s = str(text).strip()
    if not s.isdecimal() or not s.isascii() or len(s) > 18:
        raise RelatedError(f"category is a category id (a whole number), not {s[:40]!r}")
    return int(s)


def parse_image_index(text: str) -> int:
    """A picture's index in its product (a URL segment: up to 3 ASCII digits, no spaces)."""
    if not text.isdecimal() or not text.isascii() or len(text) > 3:
        raise RelatedError(f"a picture index is a small whole number, not {text[:20]!r}")
    return int(text)


def parse_method(value: str | None, default: str, available: Sequence[str]) -> str:
    """A method field: ``default`` when absent (None), refused when empty. Whether the
    name is served here is `Related.method`'s check (UnknownMethodError)."""
    if value is None:
        return default
    if not value:
        raise RelatedError(f"method is empty; choose one of {', '.join(available)}")
    return value


# -- uploads ---------------------------------------------------------------------------------


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
    (`helpers.ingest.jpeg.decode_image`: upright by its EXIF orientation, transparency on white,
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


# -- a recommendation's JSON body -------------------------------------------------------------


def parse_recommend(body: Any) -> dict[str, Any]:
    """POST /api/recommend's JSON body, checked field by field: ``positive`` (1 to
    MAX_EXAMPLES product ids), ``negative`` (0 to MAX_EXAMPLES), and optional ``strategy``,
    ``mmr`` (a number, or null), ``k``, ``method`` (strings / whole numbers) and
    ``category``. Whether the strategy, mmr weight and method are served is
    `Related.recommend`'s check. RelatedError names the field (and the bad id)."""
    if not isinstance(body, dict):
        raise RelatedError('send a JSON object such as {"positive": [1000010653]} with '
                           "Content-Type: application/json")
    unknown = [str(f)[:40] for f in body if f not in RECOMMEND_FIELDS]
    if unknown:
        raise RelatedError(f"unknown field {unknown[0]!r}; the fields are "
                           f"{', '.join(RECOMMEND_FIELDS)}")
    out: dict[str, Any] = {
        "positive": _id_list(body.get("positive"), "positive", required=True),
        "negative": _id_list(body.get("negative", []), "negative", required=False)}
    strategy = body.get("strategy")
    if strategy is not None and not isinstance(strategy, str):
        raise RelatedError(f"strategy must be a string, not {strategy!r:.40}")
    out["strategy"] = strategy
    mmr = body.get("mmr")
    if mmr is not None and (isinstance(mmr, bool) or not isinstance(mmr, int | float)):
        raise RelatedError(f"mmr must be a number from 0 (off) to 1, or null, not {mmr!r:.40}")
    out["mmr"] = 0.0 if mmr is None else float(mmr)
    for field in ("k", "category"):
        v = body.get(field)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise RelatedError(f"{field} must be a whole number, not {v!r:.40}")
    out["k"] = parse_k(body.get("k"))
    out["category"] = None if body.get("category") is None else parse_category(body["category"])
    method = body.get("method")
    if method is not None and not isinstance(method, str):
        raise RelatedError(f"method must be a string, not {method!r:.40}")
    out["method"] = method
    return out


def _id_list(value: Any, field: str, required: bool) -> list[int]:
    if not isinstance(value, list):
        raise RelatedError(f"{field} must be a list of product ids, not {value!r:.40}")
    if required and not value:
        raise RelatedError(f"{field} needs at least one product id")
    if len(value) > MAX_EXAMPLES:
        raise RelatedError(f"{field} has {len(value)} product ids; at most {MAX_EXAMPLES}")
    ids = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int):  # JSON numbers only, as documented
            raise RelatedError(f"{field}[{i}] is not a product id: {v!r:.40}")
        try:
            ids.append(parse_product_id(v))
        except RelatedError as exc:
            raise RelatedError(f"{field}[{i}]: {exc}") from None
    return list(dict.fromkeys(ids))  # each once, in the order given
