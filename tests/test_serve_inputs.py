"""What the apps accept from a user (helpers.serve.inputs) and recently viewed
(helpers.serve.recent): no artifacts needed."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers.serve.inputs import (
    RelatedError,
    UploadError,
    check_upload,
    decode_upload,
    parse_category,
    parse_image_index,
    parse_k,
    parse_method,
    parse_product_id,
)
from helpers.serve.recent import RecentlyViewed


def jpeg(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixel data is never valid)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def test_upload_checks():
    with pytest.raises(UploadError, match="empty"):
        check_upload(b"")
    with pytest.raises(UploadError, match="not a picture"):
        check_upload(b"%PDF-1.4 hello")
    with pytest.raises(UploadError, match="limit"):
        check_upload(jpeg(), max_bytes=10)
    with pytest.raises(UploadError, match="pixels"):
        check_upload(png_bomb(100_000, 100_000))  # 10 G pixels announced in 60 bytes
    with pytest.raises(UploadError, match="pixels"):
        check_upload(jpeg((300, 300)), max_pixels=300 * 299)
    assert decode_upload(jpeg(), 32).shape == (32, 32, 3)
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)).save(
        noisy, "JPEG")
    with pytest.raises(UploadError, match="decode"):
        decode_upload(noisy.getvalue()[:3000], 32)  # header intact, pixels truncated


def test_parse_inputs():
    assert parse_product_id(" 42 ") == 42
    for bad in ("-1", "1e3", "abc", "", "1" * 19, "١٢"):
        with pytest.raises(RelatedError):
            parse_product_id(bad)
    assert parse_k(None) == 10 and parse_k("7") == 7
    assert parse_k(" 100 ") == 100 and parse_k("1") == 1
    for bad in ("", "0", "101", "-3", "x", "2.5", "9" * 40, "000001000", "0007", "00",
                "1" + "0" * 4999, "00001" + "0" * 5000, "١٠", "+5", "1_0", "5\x00"):
        with pytest.raises(RelatedError, match="k must"):
            parse_k(bad)


def test_parse_category_picture_index_and_method():
    assert parse_category(" 1000010653 ") == 1000010653 and parse_category("0") == 0
    for bad in ("", "-5", "x", "1" * 19, "١٢"):
        with pytest.raises(RelatedError, match="category"):
            parse_category(bad)
    assert parse_image_index("3") == 3 and parse_image_index("012") == 12
    for bad in ("", "x", "-1", "1000", " 1", "١"):
        with pytest.raises(RelatedError, match="picture index"):
            parse_image_index(bad)
    assert parse_method(None, "faiss", ["faiss", "annoy"]) == "faiss"
    assert parse_method("annoy", "faiss", ["faiss", "annoy"]) == "annoy"
    assert parse_method("nope", "faiss", ["faiss"]) == "nope"  # Related.method refuses it
    with pytest.raises(RelatedError, match="method is empty; choose one of faiss, annoy"):
        parse_method("", "faiss", ["faiss", "annoy"])


def test_recently_viewed_list():
    r = RecentlyViewed(3)
    for pid in (1, 2, 3, 2, 4):
        r.add(pid)
    assert r.ids == [4, 2, 3]
    assert RecentlyViewed.from_list(r.to_list(), 3).ids == [4, 2, 3]
    assert RecentlyViewed.from_list(["x", {}]).ids == []  # an edited cookie
    assert RecentlyViewed.from_list(None).ids == []
