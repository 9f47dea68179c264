"""The catalogue pass on real documents (the committed sample and the Kaggle sample) and on
files crafted to be broken."""

from __future__ import annotations

import io
import json
from pathlib import Path

import bson
import pandas as pd
import pytest
from bson.int64 import Int64
from PIL import Image

from helpers.catalogue.protocol import ParquetCatalogue
from helpers.core import artifacts, ids
from helpers.ingest import bson_store, checkpoint
from helpers.ingest import scan as cat
from helpers.vectors.embed import embed_catalogue


def _docs(path: Path) -> list[dict]:
    return [r.doc for r in bson_store.iter_records(path)]


# ------------------------------------------------------------------ real sample


def test_real_sample_exact_counts(cdiscount_bson, cdiscount_categories, tmp_path):
    summary = cat.build_catalogue(cdiscount_bson, tmp_path, cdiscount_categories,
                                  progress=False)
    df = cat.load_catalogue(tmp_path)
    assert summary.documents == 82 and summary.products_kept == 82
    assert summary.products_rejected == 0 and summary.bad_images == 0
    assert summary.images_kept == 110 == df["n_images"].sum()
    assert df["category_id"].nunique() == 36 == summary.categories
    # every product joined to its three names, and names are trimmed
    for col in cat.LEVELS:
        assert df[col].notna().all()
        assert (df[col] == df[col].str.strip()).all()
    assert len(cat.load_rejects(tmp_path)) == 0


def test_offsets_read_products_back(cdiscount_bson, cdiscount_categories, tmp_path):
    cat.build_catalogue(cdiscount_bson, tmp_path, cdiscount_categories, progress=False)
    df = cat.load_catalogue(tmp_path)
    originals = {d["_id"]: d for d in _docs(cdiscount_bson)}
    with bson_store.BsonImageStore(cdiscount_bson) as store:
        for row in df.itertuples():
            doc = store.read(row.offset, row.length)
            assert doc == originals[row.product_id]


def test_category_names_trimmed(cdiscount_categories):
    raw = pd.read_csv(cdiscount_categories)
    assert len(raw) == 5270
    assert (raw["category_level3"] != raw["category_level3"].str.strip()).any()
    names = cat.load_categories(cdiscount_categories)
    assert (names["category_level3"] == names["category_level3"].str.strip()).all()


# ------------------------------------------------------------------ crafted damage


X = 10**9  # ids of the crafted products: no real or sample id is that large


def _jpeg(color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def broken(real_bson, tmp_path) -> tuple[Path, dict]:
    """A file with every kind of damage; returns it and what each product should become."""
    real = _docs(real_bson)[:10]
    good_cat = real[0]["category_id"]
    # JPEG start/end markers around a body that is not a JPEG: only a decode sees it
    bad_body = b"\xff\xd8" + bytes(range(256)) * 2 + b"\xff\xd9"
    parts: list[bytes] = [bson.encode(d) for d in real[:4]]
    parts.append(b"GARBAGE!" * 50)  # bytes that belong to no document
    parts += [bson.encode(d) for d in real[4:8]]
    extra = {
        X + 0: {"_id": X + 0, "category_id": good_cat, "imgs": []},
        X + 1: {"_id": X + 1, "category_id": good_cat, "imgs": [{"picture": b"GIF89a..."}]},
        X + 2: {"_id": X + 2, "category_id": good_cat,
              "imgs": [{"picture": _jpeg()}, {"picture": b"\x89PNG\r\n\x1a\n"}]},
        X + 3: {"_id": X + 3, "category_id": 123, "imgs": [{"picture": _jpeg()}]},
        X + 4: {"_id": X + 4, "category_id": good_cat, "imgs": [{"picture": bytes(bad_body)}]},
        X + 5: {"_id": X + 5, "category_id": good_cat},
    }
    parts += [bson.encode(d) for d in extra.values()]
    # A duplicate id that differs from the original (another category, one picture):
    # first wins, so the kept row must be the original's, at the original's offset.
    dup = {**real[1], "category_id": real[8]["category_id"], "imgs": real[1]["imgs"][:1] * 3}
    parts.append(bson.encode(dup))
    parts.append(bson.encode(real[8]))
    parts.append(bson.encode(real[9])[:-40])  # truncated last document
    path = tmp_path / "broken.bson"
    path.write_bytes(b"".join(parts))
    expect_kept = {d["_id"] for d in real[:9]} | {X + 2, X + 4}
    tail = len(bson.encode(real[9])) - 40
    return path, {"kept": expect_kept, "extra": extra, "tail": tail, "real": real}


def test_damage_is_counted_never_fatal(broken, real_categories, tmp_path):
    path, expect = broken
    summary = cat.build_catalogue(path, tmp_path / "out", real_categories,
                                  progress=False, checkpoint_every=3)
    df = cat.load_catalogue(tmp_path / "out")
    rej = cat.load_rejects(tmp_path / "out")
    assert set(df["product_id"]) == expect["kept"]
    # in = kept + rejected, over 8 + garbage + 6 + dup + 1 + truncated slots
    assert summary.documents == 18
    assert summary.documents == summary.products_kept + summary.products_rejected
    assert summary.products_kept == 11 and summary.products_rejected == 7
    by = rej.groupby("reason")
    assert set(by.groups) == {"malformed", "no_images", "no_valid_image", "bad_image",
                              "unknown_category", "duplicate_id", "truncated"}
    reason = dict(zip(rej.loc[rej.kind == "product", "product_id"],
                      rej.loc[rej.kind == "product", "reason"], strict=True))
    assert reason[X + 0] == "no_images" and reason[X + 5] == "no_images"
    assert reason[X + 1] == "no_valid_image" and reason[X + 3] == "unknown_category"
    dup = rej[rej.reason == "duplicate_id"]
    assert len(dup) == 1 and "already at offset" in dup["detail"].iloc[0]
    # First wins: the kept row is the first document's (its offset, category, pictures).
    first_offset = len(bson.encode(expect["real"][0]))  # real[1] is the file's 2nd document
    kept = df.set_index("product_id").loc[expect["real"][1]["_id"]]
    assert kept["offset"] == first_offset and dup["offset"].iloc[0] > first_offset
    assert kept["category_id"] == expect["real"][1]["category_id"]
    assert kept["n_images"] == len(expect["real"][1]["imgs"])
    assert f"already at offset {first_offset}" in dup["detail"].iloc[0]
    # the partly bad product is kept: both pictures counted, the bad one's index listed
    row = df.set_index("product_id").loc[X + 2]
    assert row["n_images"] == 2 and list(row["bad_images"]) == [1]
    assert ParquetCatalogue(df).product(X + 2).usable_images == [0]
    img = rej[(rej.kind == "image") & (rej.product_id == X + 2)]
    assert img["image_index"].tolist() == [1] and "not a JPEG" in img["detail"].iloc[0]
    # the garbage region is named by its offset and size, the truncated tail likewise
    garbage = rej[rej.reason == "malformed"].iloc[0]
    assert garbage["length"] == 400 and garbage["kind"] == "document"
    tail = rej[rej.reason == "truncated"].iloc[0]
    assert tail["offset"] + tail["length"] == path.stat().st_size
    assert tail["length"] == expect["tail"]


def test_decode_mode_catches_corrupt_jpeg_body(broken, real_categories, tmp_path):
    path, expect = broken
    cat.build_catalogue(path, tmp_path, real_categories, progress=False,
                        verify_images="decode")
    df = cat.load_catalogue(tmp_path)
    assert set(df["product_id"]) == expect["kept"] - {X + 4}
    rej = cat.load_rejects(tmp_path)
    assert "undecodable" in rej[rej.product_id == X + 4]["detail"].iloc[0]


def test_no_category_file_keeps_unlabelled_products(broken, tmp_path):
    """test.bson has no category_id: products are kept, names are empty."""
    path, _ = broken
    cat.build_catalogue(path, tmp_path, None, progress=False)
    df = cat.load_catalogue(tmp_path)
    assert X + 3 in set(df["product_id"])  # no list to check category 123 against
    assert df["category_level1"].isna().all()


@pytest.mark.parametrize("chunk", [7, 100, 4096, bson_store.CHUNK])
def test_reader_resyncs_whatever_the_chunk_size(broken, chunk):
    path, _ = broken
    recs = list(bson_store.iter_records(path, chunk_size=chunk))
    assert len(recs) == 18
    assert [r.error is None for r in recs].count(False) == 2  # garbage + truncated tail


def _slots(path: Path, **kw) -> list[tuple]:
    return [(r.offset, r.length, r.error is None) for r in bson_store.iter_records(path, **kw)]


@pytest.mark.parametrize("chunk", [7, 100, 4096, bson_store.CHUNK])
@pytest.mark.parametrize("after", ["nothing", "the cut bytes"])
def test_a_cut_document_does_not_swallow_the_next(real_bson, tmp_path, chunk, after):
    """A document cut in its last 3 bytes still frames and decodes: its last field (an
    int32 category id) takes the next document's length prefix, whose third byte is a
    NUL. The next document was lost (tests/data/fuzz_regressions/README.md)."""
    first, a, b, c = (bson.encode(d) for d in _docs(real_bson)[:4])
    assert bson.decode(a[:-3] + b[:3])  # the cut frame decodes: the case at stake
    cut = first + a[:-3] + b + (a[-3:] if after == "the cut bytes" else b"") + c
    path = tmp_path / "cut.bson"
    path.write_bytes(cut)
    slots = _slots(path, chunk_size=chunk)
    at_a, at_b, at_c = len(first), len(first) + len(a) - 3, len(cut) - len(c)
    assert slots[1] == (at_a, at_b - at_a, False)  # the cut document, up to the next one
    assert slots[2] == (at_b, len(b), True) and slots[-1] == (at_c, len(c), True)
    cat.build_catalogue(path, tmp_path / "out", progress=False)
    kept = set(cat.load_catalogue(tmp_path / "out")["product_id"])
    assert kept == {bson.decode(d)["_id"] for d in (first, b, c)}
    rej = cat.load_rejects(tmp_path / "out")
    assert rej.loc[rej.offset == at_a, "reason"].tolist() == ["malformed"]
    assert "runs into the document at offset" in rej.loc[rej.offset == at_a, "detail"].iloc[0]


def test_known_limit_a_document_swallowed_whole(real_bson, tmp_path):
    """What the reader still cannot see: a document cut by exactly the length of the one
    that follows it. Its frame then ends where the next document starts, as a whole
    document's does, and it decodes (the follower's last bytes -- array and document
    ends, the category id -- have the layout of the ones they replace, and the rest
    lands inside the cut document's picture). The follower is lost."""
    docs = _docs(real_bson)
    first, b, c = (bson.encode(d) for d in docs[:3])
    big = b"\xff\xd8" + bytes(range(256)) * (len(b) // 256 + 2) + b"\xff\xd9"
    a = bson.encode({"_id": X + 9, "imgs": [{"picture": big}],
                     "category_id": docs[0]["category_id"]})
    path = tmp_path / "swallowed.bson"
    path.write_bytes(first + a[:-len(b)] + b + c)
    n = len(first)
    assert _slots(path) == [(0, n, True), (n, len(a), True), (n + len(a), len(c), True)]
    s = cat.build_catalogue(path, tmp_path / "out", progress=False)
    # and silently so: the cut picture now ends with the follower's JPEG end marker
    kept = set(cat.load_catalogue(tmp_path / "out")["product_id"])
    assert s.rejects_by_reason == {} and docs[1]["_id"] not in kept and X + 9 in kept


def test_what_image_ids_cannot_pack_is_left_out_at_ingest(tmp_path):
    """The catalogue takes only what helpers.core.ids can encode, so an image-level embedding
    of it never fails when its store is opened (12 hours later, on train.bson)."""
    pic = {"picture": _jpeg()}
    many = ids.IMAGE_ID_BASE + 2
    docs = [{"_id": 1, "imgs": [pic]},
            {"_id": ids.MAX_PRODUCT_ID, "imgs": [pic]},  # the largest id that packs
            {"_id": Int64(ids.MAX_PRODUCT_ID + 1), "imgs": [pic]},
            {"_id": -3, "imgs": [pic]},
            {"_id": 2, "imgs": [pic] * many}]
    path = tmp_path / "limits.bson"
    path.write_bytes(b"".join(bson.encode(d) for d in docs))
    s = cat.build_catalogue(path, tmp_path / "out", progress=False)
    df = cat.load_catalogue(tmp_path / "out").set_index("product_id")
    rej = cat.load_rejects(tmp_path / "out")
    assert sorted(df.index) == [1, 2, ids.MAX_PRODUCT_ID]
    bad_id = rej[rej.reason == "bad_id"]
    assert sorted(bad_id["product_id"]) == [-3, ids.MAX_PRODUCT_ID + 1]
    assert bad_id["detail"].str.contains("outside").all()
    # the product is kept with the pictures an image id can index; the others are named
    assert df.loc[2, "n_images"] == many
    assert list(df.loc[2, "bad_images"]) == [ids.IMAGE_ID_BASE, ids.IMAGE_ID_BASE + 1]
    over = rej[rej.reason == "image_over_limit"]
    assert over["image_index"].tolist() == [ids.IMAGE_ID_BASE, ids.IMAGE_ID_BASE + 1]
    assert (over["kind"] == "image").all() and (over["product_id"] == 2).all()
    assert s.rejects_by_reason == {"bad_id": 2, "image_over_limit": 2}
    store = embed_catalogue(ParquetCatalogue(cat.load_catalogue(tmp_path / "out")), path,
                            lambda b: b.reshape(len(b), -1).mean(1, keepdims=True) + 1.0,
                            tmp_path / "vectors", image_size=16, level="image",
                            progress=False)
    assert len(store) == 2 + ids.IMAGE_ID_BASE
    assert ids.decode(store.item_ids, "image")[1].max() == ids.IMAGE_ID_BASE - 1


def test_not_bson_gets_one_clear_error(tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(_jpeg() * 3)
    with pytest.raises(bson_store.NotBSONError, match="photo.jpg is not a BSON file"):
        cat.build_catalogue(bad, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="nope.bson"):
        cat.build_catalogue(tmp_path / "nope.bson", tmp_path / "out", progress=False)


def test_empty_file_is_zero_products(tmp_path):
    empty = tmp_path / "empty.bson"
    empty.write_bytes(b"")
    summary = cat.build_catalogue(empty, tmp_path / "out", progress=False)
    assert summary.documents == 0 and len(cat.load_catalogue(tmp_path / "out")) == 0


# ------------------------------------------------------------------ slices and resume


def test_skip_and_limit(real_bson, real_categories, tmp_path):
    cat.build_catalogue(real_bson, tmp_path, real_categories, skip=10, limit=20,
                        progress=False)
    df = cat.load_catalogue(tmp_path)
    ids = [d["_id"] for d in _docs(real_bson)]
    assert df["product_id"].tolist() == ids[10:30]


def _artifacts(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return cat.load_catalogue(out), cat.load_rejects(out), cat.load_duplicates(out)


def test_resume_after_stop_gives_identical_catalogue(broken, real_categories, tmp_path):
    path, _ = broken
    cat.build_catalogue(path, tmp_path / "full", real_categories, progress=False)
    out = tmp_path / "resumed"
    part = cat.build_catalogue(path, out, real_categories, progress=False,
                               checkpoint_every=4, stop_after=2)
    assert part.documents == 8 and not (out / cat.CATALOGUE).exists()
    cat.build_catalogue(path, out, real_categories, progress=False, checkpoint_every=4)
    for a, b in zip(_artifacts(tmp_path / "full"), _artifacts(out), strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_resume_after_crash_between_part_and_checkpoint(
    broken, real_categories, tmp_path, monkeypatch
):
    """A kill after a part file is written but before the checkpoint moves on."""
    path, _ = broken
    cat.build_catalogue(path, tmp_path / "full", real_categories, progress=False)
    out = tmp_path / "crashed"
    real_write = artifacts.write_json
    calls = {"n": 0}

    def dying_write(p, obj):
        calls["n"] += 1
        if calls["n"] == 3:  # plan.json, the first checkpoint, then die at the part's
            raise KeyboardInterrupt
        real_write(p, obj)

    monkeypatch.setattr(artifacts, "write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        cat.build_catalogue(path, out, real_categories, progress=False, checkpoint_every=5)
    rng = out / cat.WORK / "range-00"  # the part is on disk, its checkpoint not
    assert (rng / "part-00000.parquet").exists()
    assert artifacts.read_json(rng / "checkpoint.json")["parts"] == 0
    monkeypatch.setattr(artifacts, "write_json", real_write)
    cat.build_catalogue(path, out, real_categories, progress=False, checkpoint_every=5)
    for a, b in zip(_artifacts(tmp_path / "full"), _artifacts(out), strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_resume_refuses_other_parameters(real_bson, real_categories, tmp_path):
    cat.build_catalogue(real_bson, tmp_path, real_categories, progress=False,
                        checkpoint_every=10, stop_after=1)
    with pytest.raises(cat.CatalogueError, match="interrupted run"):
        cat.build_catalogue(real_bson, tmp_path, real_categories, limit=5,
                            progress=False)


def test_finished_catalogue_is_reused(real_bson, real_categories, tmp_path):
    first = cat.build_catalogue(real_bson, tmp_path, real_categories, progress=False)
    mtime = (tmp_path / cat.CATALOGUE).stat().st_mtime_ns
    again = cat.build_catalogue(real_bson, tmp_path, real_categories, progress=False)
    assert again.products_kept == first.products_kept
    assert (tmp_path / cat.CATALOGUE).stat().st_mtime_ns == mtime


# ------------------------------------------------------------------ export


def test_export_jpegs(real_bson, real_categories, tmp_path):
    cat.build_catalogue(real_bson, tmp_path, real_categories, limit=5, progress=False)
    df = cat.load_catalogue(tmp_path)
    n = cat.export_jpegs(df, real_bson, tmp_path / "jpg", by_category=True, progress=False)
    files = sorted((tmp_path / "jpg").rglob("*.jpg"))
    assert n == len(files) == df["n_images"].sum()
    first = df.iloc[0]
    assert (tmp_path / "jpg" / str(first.category_id) / f"{first.product_id}_0.jpg").exists()
    assert Image.open(files[0]).size == (180, 180)


def test_built_in_sample(sample_bson, sample_categories, tmp_path):
    summary = cat.build_catalogue(sample_bson, tmp_path, sample_categories, progress=False,
                                  verify_images="decode")
    assert summary.products_kept >= 1000 and summary.products_rejected == 0
    assert summary.categories == 10


# ------------------------------------------------------------------ parallel ranges


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_partitions_cover_every_record_once(broken, parts):
    path, _ = broken
    whole = list(bson_store.iter_records(path))
    offsets = bson_store.partition_offsets(path, parts)
    assert offsets[0] == 0 and offsets[-1] == path.stat().st_size
    # Really cut: ranges that start mid-file, at document starts of the sequential read.
    # (cuts landing in one document merge: a 20-document file holds up to ~7 ranges)
    assert offsets == sorted(set(offsets)) and len(offsets) >= 3  # one cut mid-file at least
    starts = {r.offset for r in whole}
    assert set(offsets[1:-1]) <= starts
    ranges = zip(offsets, offsets[1:], strict=False)
    pieces = [r for a, b in ranges for r in bson_store.iter_records(path, a, b)]
    assert [(r.offset, r.length, r.error) for r in pieces] == [
        (r.offset, r.length, r.error) for r in whole]


@pytest.fixture
def split_small_files(monkeypatch):
    monkeypatch.setattr(checkpoint, "PARALLEL_MIN_BYTES", 0)


def test_workers_give_the_same_catalogue(broken, real_categories, tmp_path,
                                         split_small_files):
    path, _ = broken
    cat.build_catalogue(path, tmp_path / "one", real_categories, progress=False)
    s = cat.build_catalogue(path, tmp_path / "three", real_categories, progress=False,
                            workers=3)
    assert s.documents == 18
    plan = json.loads((tmp_path / "three" / "catalogue.json").read_text())
    assert plan["summary"]["documents"] == 18
    for a, b in zip(_artifacts(tmp_path / "one"), _artifacts(tmp_path / "three"), strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_parallel_run_resumes(broken, real_categories, tmp_path, split_small_files):
    path, _ = broken
    cat.build_catalogue(path, tmp_path / "full", real_categories, progress=False)
    out = tmp_path / "par"
    cat.build_catalogue(path, out, real_categories, progress=False, workers=2,
                        checkpoint_every=2, stop_after=1)
    assert not (out / cat.CATALOGUE).exists()
    cat.build_catalogue(path, out, real_categories, progress=False, workers=2,
                        checkpoint_every=2)
    for a, b in zip(_artifacts(tmp_path / "full"), _artifacts(out), strict=True):
        pd.testing.assert_frame_equal(a, b)
