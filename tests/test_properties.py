"""Properties of the ingest path on damaged files, and the limits that fit the data.

Hypothesis builds a valid file from real documents (the built-in sample, and the real
Cdiscount sample when present), then inserts garbage, duplicates documents,
overwrites bytes and truncates, at positions it picks. Whatever it does:

- every document left intact is in the catalogue at its offset, or rejected as a
  duplicate of an earlier kept copy (even when damage right before it still decodes
  as a document that runs into it);
- documents read = products kept + products rejected, and the slots the reader
  yields tile the file byte for byte;
- every reject names its offset and its reason;
- the reader gives the same slots at every chunk size, and the catalogue is the
  same at every worker count and checkpoint interval.

The runs are derandomized (the same examples every time) and bounded (1,000 and 60
examples): 15-30 s on 2 cores.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import bson
import pandas as pd
import pytest
from bson.int64 import Int64
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.core.paths import CDISCOUNT_DIR, SAMPLE_BSON
from helpers.ingest import bson_store, checkpoint
from helpers.ingest import jpeg as images
from helpers.ingest import scan as cat

REASONS = {"malformed", "truncated", "document_too_large", "bad_id", "no_images",
           "too_many_images", "unknown_category", "bad_image", "image_too_large",
           "no_valid_image", "duplicate_id", "image_over_limit"}
PRODUCT_KINDS = {"document", "product"}
COMMON = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _real_docs() -> list[bytes]:
    """Encoded documents: 24 of the built-in sample, 8 of the real Cdiscount one if present."""
    out = [bson.encode(r.doc) for r, _ in zip(bson_store.iter_records(SAMPLE_BSON), range(24),
                                              strict=False)]
    real = CDISCOUNT_DIR / "train_example.bson"
    if real.exists():
        out += [bson.encode(r.doc) for r, _ in zip(bson_store.iter_records(real), range(8),
                                                   strict=False)]
    return out


DOCS = _real_docs()


# ------------------------------------------------------------------ the damaged file


@dataclass
class Piece:
    data: bytes
    doc: int | None  # index into DOCS for an intact document; None: junk or broken


def _split(pieces: list[Piece], pos: int) -> int:
    """Cut the pieces at byte ``pos``; a document cut in two is no longer intact.
    Returns the index of the piece starting at ``pos``."""
    at = 0
    for i, p in enumerate(pieces):
        if at == pos:
            return i
        if at < pos < at + len(p.data):
            k = pos - at
            pieces[i:i + 1] = [Piece(p.data[:k], None), Piece(p.data[k:], None)]
            return i + 1
        at += len(p.data)
    return len(pieces)


def _size(pieces: list[Piece]) -> int:
    return sum(len(p.data) for p in pieces)


ops = st.one_of(
    st.tuples(st.just("garbage"), st.floats(0, 1), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("duplicate"), st.floats(0, 1), st.integers(0, len(DOCS) - 1)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("truncate"), st.floats(0.3, 1), st.none()),
)


def damage(steps: list[tuple], n_docs: int, keep_first: bool = False) -> list[Piece]:
    """Apply ``steps`` to a file of the first ``n_docs`` documents (after the first one
    with ``keep_first``: a file starting with garbage is refused as a whole)."""
    pieces = [Piece(d, i) for i, d in enumerate(DOCS[:n_docs])]
    first = len(DOCS[0]) if keep_first and n_docs else 0
    for op, where, arg in steps:
        pos = first + int(where * (_size(pieces) - first))
        if op == "garbage":
            pieces.insert(_split(pieces, pos), Piece(arg, None))
        elif op == "duplicate":
            pieces.insert(_split(pieces, pos), Piece(DOCS[arg], arg))
        elif op == "overwrite":
            i = _split(pieces, pos)
            j = _split(pieces, min(pos + len(arg), _size(pieces)))
            old = b"".join(p.data for p in pieces[i:j])
            pieces[i:j] = [Piece(arg[: len(old)], None)]
        else:
            pieces[_split(pieces, pos):] = []
    return [p for p in pieces if p.data]


def intact(pieces: list[Piece]) -> list[tuple[int, int, int]]:
    """``(offset, length, product_id)`` of every intact document, in file order."""
    out, at = [], 0
    for p in pieces:
        if p.doc is not None:
            out.append((at, len(p.data), bson.decode(p.data)["_id"]))
        at += len(p.data)
    return out


def _slots(path: Path, **kw) -> list[tuple]:
    return [(r.offset, r.length, r.error) for r in bson_store.iter_records(path, **kw)]


# ------------------------------------------------------------------ reader properties


@settings(COMMON, max_examples=1000)
@given(steps=st.lists(ops, max_size=6), n_docs=st.integers(0, len(DOCS)),
       chunk=st.sampled_from([7, 61, 1000, 4096, 65536]))
def test_reader_keeps_intact_documents_at_every_chunk_size(tmp_path_factory, steps, n_docs,
                                                           chunk):
    pieces = damage(steps, n_docs)
    event(f"ops: {sorted({s[0] for s in steps})}")
    path = tmp_path_factory.mktemp("r") / "damaged.bson"
    data = b"".join(p.data for p in pieces)
    path.write_bytes(data)
    slots = _slots(path)
    assert _slots(path, chunk_size=chunk) == slots
    # the slots tile the file: every byte is in exactly one document or reject
    pos = 0
    for off, length, _ in slots:
        assert off == pos and length > 0
        pos += length
    assert pos == len(data)
    good = {(off, length) for off, length, err in slots if err is None}
    for off, length, _ in intact(pieces):
        assert (off, length) in good, f"intact document at {off} lost"
    # a scan from any slot boundary sees the same slots from there (worker ranges)
    if slots:
        mid = slots[len(slots) // 2][0]
        assert _slots(path, start=mid) == [s for s in slots if s[0] >= mid]


# ------------------------------------------------------------------ catalogue properties


def _build(path: Path, out: Path, **kw) -> tuple[cat.CatalogueSummary, pd.DataFrame,
                                                 pd.DataFrame]:
    summary = cat.build_catalogue(path, out, None, progress=False, **kw)
    return summary, cat.load_catalogue(out), cat.load_rejects(out)


@settings(COMMON, max_examples=60)
@given(steps=st.lists(ops, min_size=1, max_size=5), n_docs=st.integers(1, len(DOCS)),
       workers=st.sampled_from([2, 3]), every=st.sampled_from([1, 3, 50_000]))
def test_catalogue_counts_every_product_the_same_way(tmp_path_factory, steps, n_docs,
                                                     workers, every):
    pieces = damage(steps, n_docs, keep_first=True)
    tmp = tmp_path_factory.mktemp("c")
    path = tmp / "damaged.bson"
    data = b"".join(p.data for p in pieces)
    path.write_bytes(data)
    summary, df, rej = _build(path, tmp / "one")
    event(f"rejects: {sorted(set(rej['reason']))}")
    # in = kept + rejected, and every slot of the file is one product decision
    assert summary.documents == len(_slots(path))
    assert summary.documents == summary.products_kept + summary.products_rejected
    assert len(df) == summary.products_kept
    assert (rej["kind"].isin(PRODUCT_KINDS)).sum() == summary.products_rejected
    # every reject names its offset (inside the file) and its reason
    assert rej["offset"].notna().all() and rej["reason"].isin(REASONS).all()
    assert ((rej["offset"] >= 0) & (rej["offset"] + rej["length"] <= len(data))).all()
    assert rej["detail"].notna().all() and (rej["detail"].str.len() > 0).all()
    # every intact document is kept, or is a later copy of a kept product id
    kept = dict(zip(df["product_id"], df["offset"], strict=True))
    for off, _, pid in intact(pieces):
        assert pid in kept, f"intact product {pid} at {off} lost"
        assert kept[pid] <= off
        if kept[pid] < off:
            dup = rej[(rej["offset"] == off) & (rej["reason"] == "duplicate_id")]
            assert len(dup) == 1
    with bson_store.BsonImageStore(path) as store:
        for row in df.itertuples():
            assert store.read(row.offset, row.length)["_id"] == row.product_id
    # the same catalogue with worker processes and another checkpoint interval
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "PARALLEL_MIN_BYTES", 0)
        _, df2, rej2 = _build(path, tmp / "par", workers=workers, checkpoint_every=every)
    pd.testing.assert_frame_equal(df, df2)
    pd.testing.assert_frame_equal(rej, rej2)


def test_garbage_at_the_start_is_one_clear_error(tmp_path):
    path = tmp_path / "x.bson"
    path.write_bytes(b"\x00\x01garbage" + DOCS[0])
    with pytest.raises(bson_store.NotBSONError, match="is not a BSON file"):
        cat.build_catalogue(path, tmp_path / "out", progress=False)


# ------------------------------------------------------------------ limits: documents


def _big_doc(pid: int, picture_bytes: int) -> bytes:
    doc = bson.decode(DOCS[0]) | {"_id": pid}
    doc["imgs"] = doc["imgs"] + [{"picture": b"\xff\xd8" + b"\0" * picture_bytes + b"\xff\xd9"}]
    return bson.encode(doc)


def test_document_over_the_limit_is_refused_unread_and_counted(tmp_path, monkeypatch):
    big = _big_doc(77, 40_000)
    path = tmp_path / "big.bson"
    path.write_bytes(DOCS[1] + big + DOCS[2] + DOCS[3])
    biggest = []
    real_pread = os.pread

    def pread(fd: int, n: int, off: int) -> bytes:
        biggest.append(n)
        return real_pread(fd, n, off)

    monkeypatch.setattr(bson_store.os, "pread", pread)
    recs = list(bson_store.iter_records(path, chunk_size=4096, max_doc=16_000))
    assert max(biggest) < 16_000  # the 40 kB document was never read whole
    assert [r.error is None for r in recs] == [True, False, True, True]
    assert recs[1].error.startswith(bson_store.TOO_LARGE)
    assert (recs[1].offset, recs[1].length) == (len(DOCS[1]), len(big))  # jumped over it
    monkeypatch.undo()
    s = cat.build_catalogue(path, tmp_path / "out", None, progress=False, max_doc_bytes=16_000)
    rej = cat.load_rejects(tmp_path / "out")
    assert s.products_kept == 3 and s.rejects_by_reason == {"document_too_large": 1}
    assert rej["offset"].tolist() == [len(DOCS[1])]
    # the default limit (16 MiB, BSON's) keeps it; the limit is part of the parameters
    s = cat.build_catalogue(path, tmp_path / "out", None, progress=False)
    assert s.products_kept == 4


def test_default_limit_refuses_a_17_mib_document(tmp_path):
    path = tmp_path / "huge.bson"
    path.write_bytes(DOCS[1] + _big_doc(78, 17 * 2**20) + DOCS[2])
    s = cat.build_catalogue(path, tmp_path / "out", None, progress=False)
    assert s.products_kept == 2 and s.rejects_by_reason == {"document_too_large": 1}


def test_a_lying_length_prefix_is_resynced_not_trusted(tmp_path):
    """A prefix claiming 100 MB in a 20 kB file: refused, and the reader scans on."""
    lie = struct.pack("<i", 100_000_000) + DOCS[1][4:]
    path = tmp_path / "lie.bson"
    path.write_bytes(DOCS[0] + lie + DOCS[2] + DOCS[3])
    recs = list(bson_store.iter_records(path))
    assert [r.error is None for r in recs] == [True, False, True, True]
    assert recs[1].error.startswith(bson_store.TOO_LARGE) and recs[1].length == len(lie)


def test_bad_length_near_the_end_does_not_swallow_what_follows(tmp_path):
    """A length running past the end of the file is a truncation only if nothing
    decodable follows; otherwise the documents after it are kept."""
    bad = struct.pack("<i", 30_000) + b"\x10_id\x00" + b"\x01" * 30
    path = tmp_path / "x.bson"
    path.write_bytes(DOCS[0] + bad + DOCS[1] + DOCS[2])
    recs = list(bson_store.iter_records(path))
    assert [r.error is None for r in recs] == [True, False, True, True]
    assert "invalid document length 30000" in recs[1].error
    path.write_bytes(DOCS[0] + DOCS[1][:-10])
    tail = list(bson_store.iter_records(path))[-1]
    assert tail.error.startswith(bson_store.TRUNCATED)


# ------------------------------------------------------------------ limits: pictures


def _jpeg(w: int, h: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, "JPEG", quality=5)
    return buf.getvalue()


def test_jpeg_size_reads_the_header_only():
    pic = _jpeg(300, 200)
    assert images.jpeg_size(pic) == (300, 200)
    assert images.jpeg_size(_jpeg(30, 20, "CMYK")) == (30, 20)
    assert images.jpeg_size(pic[:200]) == (300, 200)  # the pixels are not needed
    assert images.jpeg_size(b"\xff\xd8" + b"\x00" * 50) is None
    assert images.too_large(_jpeg(5000, 8), max_side=4096).startswith("image too large")


@pytest.mark.parametrize("verify", ["magic", "decode"])
def test_picture_over_the_limit_is_refused_and_counted(tmp_path, verify):
    doc = bson.decode(DOCS[0])
    mixed = doc | {"_id": 501, "imgs": [{"picture": _jpeg(600, 40)}, *doc["imgs"]]}
    only_big = doc | {"_id": 502, "imgs": [{"picture": _jpeg(40, 600)}]}
    path = tmp_path / "pics.bson"
    path.write_bytes(DOCS[1] + bson.encode(mixed) + bson.encode(only_big))
    s = cat.build_catalogue(path, tmp_path / "out", None, progress=False,
                            verify_images=verify, max_image_side=512)
    df = cat.load_catalogue(tmp_path / "out").set_index("product_id")
    assert list(df.loc[501, "bad_images"]) == [0]  # kept with its other pictures
    assert df.loc[501, "n_images"] == len(mixed["imgs"])  # every picture, the bad one too
    assert s.images_kept == len(doc["imgs"]) + len(bson.decode(DOCS[1])["imgs"])
    assert 502 not in df.index
    assert s.rejects_by_reason == {"image_too_large": 2, "no_valid_image": 1}
    rej = cat.load_rejects(tmp_path / "out")
    assert "600x40" in rej[rej.product_id == 501]["detail"].iloc[0]
    with pytest.raises(images.ImageTooLargeError):
        images.decode_image(_jpeg(600, 40), max_side=512)
    assert images.decode_image(_jpeg(600, 40)).shape == (40, 600, 3)  # default: 4096


# ------------------------------------------------------------------ odd but good products


def test_int64_ids_and_categories_are_products(tmp_path):
    """A dump re-exported from MongoDB may store ids as NumberLong (bson.Int64)."""
    doc = bson.decode(DOCS[0])
    path = tmp_path / "long.bson"
    path.write_bytes(bson.encode(doc | {"_id": Int64(7), "category_id": Int64(5)}))
    s = cat.build_catalogue(path, tmp_path / "out", None, progress=False)
    assert s.products_kept == 1
    assert cat.load_catalogue(tmp_path / "out")["product_id"].tolist() == [7]


def test_too_many_pictures_is_a_reject_not_a_crash(tmp_path):
    doc = {"_id": 9, "imgs": [{"picture": b"\xff\xd8\xff\xd9"}] * (cat.MAX_IMAGES + 1)}
    path = tmp_path / "many.bson"
    path.write_bytes(DOCS[0] + bson.encode(doc))
    s = cat.build_catalogue(path, tmp_path / "out", None, progress=False)
    assert s.products_kept == 1 and s.rejects_by_reason == {"too_many_images": 1}
