"""One document of the dump -> one catalogue row, or the reasons it is left out.

`check_product` runs once per document (7 M times on train.bson) in the pass's hot loop
and adds it to a `Part` (the rows and rejects gathered since the last checkpoint): as a
product row of `SCHEMA`, or as rejects of `REJECT_COLUMNS`. Reject reasons, by kind:

- document (the reader could not frame or decode it): ``truncated``,
  ``document_too_large``, ``malformed``;
- product: ``bad_id`` (not an integer, or outside what image ids can pack), ``no_images``,
  ``too_many_images``, ``unknown_category``, ``no_valid_image``; the pass adds
  ``duplicate_id`` when it joins the ranges (`helpers.ingest.scan`);
- image (the product kept without it): ``bad_image``, ``image_too_large``,
  ``image_over_limit``.

Each kept product also gets the 64-bit xxHash (XXH3) of every picture's bytes, 0 for a
left-out picture (`PART_SCHEMA`'s ``picture_hashes``): the pass finds exact duplicates
with them (`helpers.ingest.duplicates`). XXH3 runs at 12-18 GB/s here, far above the
pass's speed (blake2b: 0.7 GB/s, sha1: 1.4 GB/s).

Imports pyarrow, ``bson``, xxhash, `helpers.core.ids`, `helpers.ingest.bson_store` and
`helpers.ingest.jpeg`.
"""

from __future__ import annotations

import pyarrow as pa
from bson.int64 import Int64
from xxhash import xxh3_64_intdigest

from helpers.core.ids import IMAGE_ID_BASE, MAX_PRODUCT_ID
from helpers.ingest.bson_store import TOO_LARGE, TRUNCATED, Record
from helpers.ingest.jpeg import (
    JPEG_EOI,
    JPEG_SOI,
    MAX_SIDE,
    ImageError,
    ImageTooLargeError,
    check_jpeg_bytes,
    decode_image,
    too_large,
)

REJECT_COLUMNS = ["kind", "offset", "length", "product_id", "image_index", "reason", "detail"]
# A BSON int64 decodes as bson.Int64 (an int subclass): a NumberLong _id is still an id.
_INTS = (int, Int64)
# n_images is an int16 column: a product claiming more pictures is refused, not a crash.
MAX_IMAGES = 2**15 - 1
# The image-id codec (helpers.core.ids) is the one source of the id and picture-index limits:
# what it cannot pack is left out here, not found when a store is opened after embedding.

SCHEMA = pa.schema(
    [
        ("product_id", pa.int64()),
        ("category_id", pa.int64()),  # null in test.bson, which has no labels
        ("n_images", pa.int16()),  # every picture of the document, bad ones included
        ("bad_images", pa.list_(pa.int16())),  # their indexes in the document, usually []
        ("offset", pa.int64()),
        ("length", pa.int32()),
    ]
)
# What a checkpoint's part file holds: the catalogue's columns and the pictures' hashes,
# which the pass turns into the duplicates file and leaves out of the catalogue.
PART_SCHEMA = SCHEMA.append(pa.field("picture_hashes", pa.list_(pa.uint64())))


class Part:
    """Columns of the products and rejects gathered since the last checkpoint."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in PART_SCHEMA.names}
        self.rejects: list[tuple] = []
        self.images_in = 0

    def reject(self, kind, offset, length, pid, image_index, reason, detail) -> None:
        self.rejects.append((kind, offset, length, pid, image_index, reason, detail))


def check_product(
    rec: Record, part: Part, known: set[int] | None, verify: str,
    max_side: int = MAX_SIDE,
) -> None:
    """Add one document to ``part``: as a product row, or as rejects with reasons.

    This runs once per product (7 M times on train.bson): the common case, a
    well-formed product of good JPEGs, takes the shortest path.
    """
    off, length, doc, error = rec
    if error is not None:
        reason = ("truncated" if error.startswith(TRUNCATED) else
                  "document_too_large" if error.startswith(TOO_LARGE) else
                  "malformed")
        part.reject("document", off, length, None, None, reason, error)
        return
    pid = doc.get("_id")
    if type(pid) not in _INTS:
        part.reject("product", off, length, None, None, "bad_id", f"_id is {_short(pid)}")
        return
    if not 0 <= pid <= MAX_PRODUCT_ID:
        part.reject("product", off, length, pid, None, "bad_id",
                    f"_id {pid} is outside [0, {MAX_PRODUCT_ID}], what image ids can pack")
        return
    imgs = doc.get("imgs")
    if type(imgs) is not list or not imgs:
        part.reject("product", off, length, pid, None, "no_images", f"imgs is {_short(imgs)}")
        return
    if len(imgs) > MAX_IMAGES:
        part.reject("product", off, length, pid, None, "too_many_images",
                    f"{len(imgs):,} pictures, limit {MAX_IMAGES:,}")
        return
    part.images_in += len(imgs)
    cat = doc.get("category_id")
    if cat is not None and (type(cat) not in _INTS or (known is not None and cat not in known)):
        part.reject("product", off, length, pid, None, "unknown_category",
                    f"category_id {_short(cat)}")
        return
    bad = []
    hashes = []  # one per picture of the document, 0 for one left out
    # Pictures past what an image id can index are left out, the product kept with the
    # first IMAGE_ID_BASE: what a bad picture gets. Refusing the product would lose it
    # from product-level search too, for pictures no image-level id can name.
    over = len(imgs) > IMAGE_ID_BASE
    for i, img in enumerate(imgs[:IMAGE_ID_BASE] if over else imgs):
        pic = img.get("picture") if type(img) is dict else None
        if (verify == "magic" and type(pic) is bytes and pic[:2] == JPEG_SOI
                and pic[-2:] == JPEG_EOI and too_large(pic, max_side) is None):
            hashes.append(xxh3_64_intdigest(pic))
            continue  # the common case: three comparisons, a JPEG header walk and a hash
        reason, why = "bad_image", check_jpeg_bytes(pic)
        if why is None:
            why = too_large(pic, max_side)
            reason = "bad_image" if why is None else "image_too_large"
        if why is None and verify == "decode":
            try:
                decode_image(pic, max_side=max_side)
            except ImageTooLargeError as exc:
                reason, why = "image_too_large", str(exc)
            except ImageError as exc:
                why = str(exc)
        if why is not None:
            bad.append(i)
            hashes.append(0)
            part.reject("image", off, length, pid, i, reason, why)
        else:
            hashes.append(xxh3_64_intdigest(pic))
    if over:
        for i in range(IMAGE_ID_BASE, len(imgs)):
            bad.append(i)
            hashes.append(0)
            part.reject("image", off, length, pid, i, "image_over_limit",
                        f"picture {i} of {len(imgs):,}: image ids index at most "
                        f"{IMAGE_ID_BASE} pictures a product")
    if len(bad) == len(imgs):
        part.reject("product", off, length, pid, None, "no_valid_image", f"all {len(imgs)} bad")
        return
    c = part.cols
    c["product_id"].append(pid)
    c["category_id"].append(cat)
    c["n_images"].append(len(imgs))
    c["bad_images"].append(bad)
    c["offset"].append(off)
    c["length"].append(length)
    c["picture_hashes"].append(hashes)


def _short(value: object) -> str:
    """``repr`` cut to 40 characters, without building the repr of a 16 MB value."""
    if isinstance(value, bytes | bytearray | str | list | dict) and len(value) > 40:
        return f"{type(value).__name__} of length {len(value):,}"
    return f"{value!r:.40}"
