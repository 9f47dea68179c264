"""embed_catalogue / embed_files with the ONNX MobileNetV2 on real product documents.

Every test runs on the committed built-in sample (100 documents; so a fresh clone runs
them) and on the real Kaggle sample in ../shared (82 products, 110 pictures). The
extractor is built once per session (< 1 s); each embedding takes about a second, and
the kill/resume tests use small pictures (128 px): they check bookkeeping, not quality.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import bson
import numpy as np
import pandas as pd
import pytest

import helpers.models as hm
from helpers.catalogue.protocol import ParquetCatalogue
from helpers.ingest import bson_store
from helpers.ingest import scan as cat
from helpers.ingest.jpeg import to_float
from helpers.vectors import derive, embed
from helpers.vectors import store as vectors
from helpers.vectors.embed import embed_catalogue, embed_files
from helpers.vectors.store import VectorStore, VectorStoreError

# Passes the catalogue's JPEG marker check (start and end markers) but is no JPEG.
FAKE_JPEG = b"\xff\xd8" + bytes(range(256)) * 2 + b"\xff\xd9"


@pytest.fixture(scope="session")
def onnx_extractor(tmp_path_factory: pytest.TempPathFactory) -> hm.FeatureExtractor:
    return hm.load_extractor("mobilenet_v2", "onnx", cache_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def real(real_bson, real_categories, tmp_path_factory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("catalogue")
    cat.build_catalogue(real_bson, folder, real_categories, progress=False)
    return cat.load_catalogue(folder)


@pytest.fixture(scope="module")
def real_products(real, real_bson, onnx_extractor, tmp_path_factory) -> VectorStore:
    return embed_catalogue(ParquetCatalogue(real), real_bson, onnx_extractor,
                           tmp_path_factory.mktemp("products"), progress=False)


@pytest.fixture(scope="module")
def real_images(real, real_bson, onnx_extractor, tmp_path_factory) -> VectorStore:
    return embed_catalogue(ParquetCatalogue(real), real_bson, onnx_extractor,
                           tmp_path_factory.mktemp("images"), level="image", progress=False)


class Wrapped:
    """The extractor, counting calls; raises after ``fail_after`` calls (a kill)."""

    def __init__(self, inner: hm.FeatureExtractor, fail_after: int | None = None,
                 with_dim: bool = True) -> None:
        self.inner, self.fail_after, self.calls = inner, fail_after, 0
        if with_dim:
            self.dim = inner.dim

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return self.inner(batch)

    def meta(self) -> dict[str, Any]:
        return self.inner.meta()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "embed-reader"]


# ------------------------------------------------------------------ real sample


def test_product_level(real, real_products, real_bson):
    s = real_products
    n = len(real)
    assert len(s) == n and s.dim == 1280 and s.vectors.shape == (n, 1280)
    np.testing.assert_array_equal(s.product_ids, real["product_id"])  # catalogue order
    assert (s.image_index == -1).all()
    np.testing.assert_array_equal(s.item_ids, real["product_id"])
    assert s.meta["images"] == real["n_images"].sum() and s.meta["failed_images"] == 0
    assert s.made_by["image_size"] == 224 and s.made_by["level"] == "product"
    assert s.made_by["source"] == str(real_bson.resolve())
    assert np.isfinite(s.vectors).all()
    assert not (s.folder / embed.REJECTS).exists()


def test_image_level(real, real_images, real_bson):
    s = real_images
    assert len(s) == real["n_images"].sum() and s.dim == 1280
    order = [(pid, i) for pid, i, _ in cat.iter_images(real, real_bson)]
    assert list(zip(s.product_ids.tolist(), s.image_index.tolist(), strict=True)) == order
    np.testing.assert_array_equal(s.item_ids, s.product_ids * 100 + s.image_index)
    assert s.meta["images"] == len(s)


def test_product_vector_is_mean_of_unit_image_vectors(real, real_products, real_images):
    multi = 0
    for pid in real["product_id"]:
        rows = real_images.product_ids == pid
        multi += rows.sum() > 1
        want = _unit(np.asarray(real_images.vectors[rows])).mean(axis=0)
        np.testing.assert_allclose(real_products.vector(pid), want, rtol=0, atol=1e-6)
    assert multi >= 10  # the sample has products with 2-4 pictures


def test_product_store_derived_from_pictures_is_the_embedded_one(
        real, real_products, real_images, tmp_path, monkeypatch):
    """Deriving products from the image-level store gives the product-level embedding: the
    same settings (content id), ids, order, counts and vectors, whatever the chunking."""
    monkeypatch.setattr(derive, "CHUNK", 3)  # chunks end inside products: never split
    d = derive.product_store(real_images, tmp_path / "p")
    assert d.id == real_products.id and d.made_by == real_products.made_by
    np.testing.assert_array_equal(d.item_ids, real_products.item_ids)
    np.testing.assert_allclose(np.asarray(d.vectors), np.asarray(real_products.vectors),
                               rtol=0, atol=1e-6)
    assert d.meta["images"] == real_products.meta["images"]
    assert d.meta["derived_from_id"] == real_images.id
    assert derive.product_store(real_images, tmp_path / "p").folder == d.folder  # reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # built aside, none left
    with pytest.raises(VectorStoreError, match="image-level"):
        derive.product_store(real_products, tmp_path / "q")
    with pytest.raises(VectorStoreError, match="other settings"):  # never overwritten
        derive.product_store(real_images, _store_with_size(tmp_path, d, 180))


def _store_with_size(tmp_path: Path, store: VectorStore, size: int) -> Path:
    """A finished product store at tmp_path/"s", made with another image size."""
    folder = tmp_path / "s"
    w = vectors.VectorWriter(folder, store.dim, {**store.made_by, "image_size": size})
    w.append(np.asarray(store.vectors[:1]), store.product_ids[:1], [-1], 1)
    w.close()
    return folder


def test_a_run_embeds_each_picture_once_for_both_levels(real, real_bson, onnx_extractor,
                                                        tmp_path):
    """Workspace.vectors at product level, then at image level (03, then 06): the network
    runs on the pictures once; the product store is derived from the image store."""
    from helpers.workspace import Workspace

    ws = Workspace(tmp_path)
    catalogue = ParquetCatalogue(real)
    counted = Wrapped(onnx_extractor)
    products = ws.vectors(catalogue, real_bson, counted, level="product", progress=False)
    calls = counted.calls
    assert calls > 0 and products.meta["derived_from_id"]
    pictures = ws.vectors(catalogue, real_bson, counted, level="image", progress=False)
    assert counted.calls == calls  # found, not embedded again
    assert products.meta["derived_from_id"] == pictures.id
    # Without it (a catalogue above PRODUCTS_VIA_PICTURES), the products are embedded.
    direct = ws.vectors(catalogue, real_bson, counted, image_size=200, level="product",
                        via_pictures=False, progress=False)
    assert "derived_from_id" not in direct.meta and counted.calls > calls
    assert not ws.vectors_dir(counted.meta(), 200, "image", catalogue).exists()


def test_embed_files_matches_catalogue(real, real_images, real_bson, onnx_extractor,
                                       tmp_path):
    pid, i, pic = next(x for x in cat.iter_images(real, real_bson) if x[1] == 1)
    path = tmp_path / f"{pid}_{i}.jpg"
    path.write_bytes(pic)
    got = embed_files([path], onnx_extractor)
    assert got.shape == (1, 1280) and got.dtype == np.float32
    want = real_images.vector(pid * 100 + i)
    assert float(_unit(got[0]) @ _unit(want)) > 0.99
    # same decode and scaling: equal up to the batch's effect on onnxruntime's kernels
    np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-4)


# ------------------------------------------------------------------ undecodable pictures


@pytest.fixture(scope="module")
def damaged(real_bson, real_categories, tmp_path_factory) -> dict:
    """20 real products; one with 3+ pictures loses picture 1, one with 1 picture loses it."""
    docs = [r.doc for r in bson_store.iter_records(real_bson)][:20]
    multi = next(d for d in docs if len(d["imgs"]) >= 3)
    single = next(d for d in docs if len(d["imgs"]) == 1)
    multi["imgs"][1]["picture"] = FAKE_JPEG
    single["imgs"][0]["picture"] = FAKE_JPEG
    folder = tmp_path_factory.mktemp("damaged")
    path = folder / "damaged.bson"
    path.write_bytes(b"".join(bson.encode(d) for d in docs))
    cat.build_catalogue(path, folder / "catalogue", real_categories, progress=False)
    df = cat.load_catalogue(folder / "catalogue")
    # the marker check lets both through: only the decode finds them
    assert len(df) == 20 and df["bad_images"].map(len).sum() == 0
    return {"bson": path, "catalogue": ParquetCatalogue(df), "multi": multi["_id"],
            "single": single["_id"],
            "images": sum(len(d["imgs"]) for d in docs), "multi_n": len(multi["imgs"]),
            "order": [d["_id"] for d in docs]}


def test_undecodable_pictures_are_skipped(damaged, onnx_extractor, real_images, tmp_path):
    d = damaged
    prod = embed_catalogue(d["catalogue"], d["bson"], onnx_extractor, tmp_path / "p",
                           batch_size=8, progress=False)
    img = embed_catalogue(d["catalogue"], d["bson"], onnx_extractor, tmp_path / "i",
                          level="image", batch_size=8, progress=False)
    for s in (prod, img):
        assert s.meta["failed_images"] == 2 and s.meta["images"] == d["images"] - 2
        rejects = pd.read_csv(s.folder / embed.REJECTS)
        want = sorted([(d["multi"], 1), (d["single"], 0)], key=lambda r: d["order"].index(r[0]))
        assert list(zip(rejects["product_id"], rejects["image_index"], strict=True)) == want
        assert rejects["reason"].str.contains("undecodable").all()
    assert len(prod) == 19 and d["single"] not in prod.product_ids
    with pytest.raises(KeyError):
        prod.vector(d["single"])
    # the many-picture product keeps its other pictures, with the vectors they have anyway
    m = d["multi"]
    others = [i for i in range(d["multi_n"]) if i != 1]
    assert img.image_index[img.product_ids == m].tolist() == others
    kept = np.stack([real_images.vector(m * 100 + i) for i in others])
    np.testing.assert_allclose(img.vectors[img.product_ids == m], kept, atol=1e-5)
    np.testing.assert_allclose(prod.vector(m), _unit(kept).mean(axis=0), atol=1e-5)


# ------------------------------------------------------------------ resume and reuse


@pytest.mark.parametrize("kill", ["in_extractor", "after_rejects", "no_dim"])
def test_killed_run_resumes_to_same_store(damaged, onnx_extractor, tmp_path, monkeypatch, kill):
    d = damaged
    args = (d["catalogue"], d["bson"])
    opts: dict[str, Any] = {"image_size": 128, "batch_size": 4, "level": "image",
                            "progress": False}
    counting = Wrapped(onnx_extractor)
    whole = embed_catalogue(*args, counting, tmp_path / "whole", **opts)
    probe = int(kill == "no_dim")  # an extractor without .dim is called once to learn it
    out = tmp_path / "killed"
    # killed while the reader thread waits on a full queue (2 batches ahead)
    killer = Wrapped(onnx_extractor, fail_after=2 + probe, with_dim=kill != "no_dim")
    if kill == "after_rejects":
        # killed after the batch holding picture 1 of #12 wrote its reject, before its
        # vectors: the resumed run reads that batch again and must not list it twice
        calls = {"n": 0}
        append = vectors.VectorWriter.append

        def dying(self: vectors.VectorWriter, *a: Any, **k: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt("killed")
            append(self, *a, **k)

        monkeypatch.setattr(vectors.VectorWriter, "append", dying)
        killer.fail_after = None
    with pytest.raises(KeyboardInterrupt):
        embed_catalogue(*args, killer, out, **opts)
    monkeypatch.undo()
    assert not _reader_threads()  # the reader thread was stopped, not left blocked
    with pytest.raises(VectorStoreError, match="unfinished"):
        VectorStore(out)
    left = json.loads((out / vectors.META).read_text())
    assert 0 < left["next_row"] < len(d["catalogue"]) and left["count"] > 0

    again = Wrapped(onnx_extractor, with_dim=kill != "no_dim")
    store = embed_catalogue(*args, again, out, **opts)
    # only the batches the killed run had not stored were embedded again
    assert 0 < again.calls - probe < counting.calls
    np.testing.assert_array_equal(store.vectors, whole.vectors)  # bit for bit
    np.testing.assert_array_equal(store.item_ids, whole.item_ids)
    for key in ("count", "next_row", "images", "failed_images"):
        assert store.meta[key] == whole.meta[key], key
    # each reject listed once (PIL's reasons name a BytesIO address: compare the ids)
    cols = ["product_id", "image_index"]
    pd.testing.assert_frame_equal(pd.read_csv(out / embed.REJECTS)[cols],
                                  pd.read_csv(whole.folder / embed.REJECTS)[cols])


def test_finished_store_is_reused(real, real_products, real_bson, onnx_extractor):
    counting = Wrapped(onnx_extractor)
    again = embed_catalogue(ParquetCatalogue(real), real_bson, counting, real_products.folder,
                            progress=False)
    assert counting.calls == 0
    np.testing.assert_array_equal(again.vectors, real_products.vectors)


def test_finished_store_other_settings(real, real_bson, onnx_extractor, tmp_path):
    head = real.head(5)
    out = tmp_path / "store"
    first = embed_catalogue(ParquetCatalogue(head), real_bson, onnx_extractor, out, image_size=128,
                            progress=False)
    kept = np.array(first.vectors)
    with pytest.raises(VectorStoreError, match="image_size: is 128, now 96"):
        embed_catalogue(ParquetCatalogue(head), real_bson, onnx_extractor, out, image_size=96,
                        progress=False)
    counting = Wrapped(onnx_extractor)
    store = embed_catalogue(ParquetCatalogue(head), real_bson, counting, out, image_size=96,
                            resume=False, progress=False)
    assert counting.calls == 1 and store.made_by["image_size"] == 96 and len(store) == 5
    # The 128 px embedding was moved aside, not deleted: hours of work are never lost.
    (aside,) = tmp_path.glob("store.stale-*")
    np.testing.assert_array_equal(VectorStore(aside).vectors, kept)
    # another catalogue (same length, other products) is stale too; rebuilt on request
    other = ParquetCatalogue(real.iloc[5:10])
    with pytest.raises(VectorStoreError, match="catalogue_sha256"):
        embed_catalogue(other, real_bson, onnx_extractor, out, image_size=96,
                        progress=False)
    store = embed_catalogue(other, real_bson, onnx_extractor, out, image_size=96,
                            rebuild_stale=True, progress=False)
    assert list(store.product_ids) == list(other.ids())


def test_extractor_error_is_raised_and_cleaned_up(real, real_bson, tmp_path):
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("model on fire")

    broken.dim = 4  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="on fire"):
        embed_catalogue(ParquetCatalogue(real), real_bson, broken, tmp_path, batch_size=2,
                        progress=False)
    assert not _reader_threads()


def test_bad_level(real, real_bson, onnx_extractor, tmp_path):
    with pytest.raises(ValueError, match="level must be one of"):
        embed_catalogue(ParquetCatalogue(real), real_bson, onnx_extractor, tmp_path,
                        level="category")


def test_decode_failure_of_any_kind_is_a_reject(monkeypatch):
    def boom(data: bytes, size: int | None = None) -> np.ndarray:
        raise IndexError("odd plugin failure")

    monkeypatch.setattr(embed, "decode_image", boom)
    assert embed._decode((b"x", 224)) == "undecodable image: IndexError: odd plugin failure"


def test_to_float_matches_plain_scaling():
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 4, 64, 1).repeat(3, axis=3)
    got = to_float([u8[0], u8[0]])
    assert got.dtype == np.float32 and got.shape == (2, 4, 64, 3)
    np.testing.assert_array_equal(got[1], u8[0].astype(np.float32) * (1 / 255))
    assert got.max() == 1.0 and got.min() == 0.0


def _jpeg_bytes(color: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 30), color).save(buf, "JPEG")
    return buf.getvalue()


def test_embed_files_resizes(onnx_extractor, tmp_path: Path):
    """Photos of any size reach the model at image_size x image_size, as the catalogue's do."""
    from PIL import Image

    paths = []
    for color in ("red", "navy"):
        paths.append(tmp_path / f"{color}.jpg")
        paths[-1].write_bytes(_jpeg_bytes(color))  # 20 x 30 pixels
    seen = []

    def spy(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return onnx_extractor(batch)

    got = embed_files(paths, spy, image_size=96)
    assert seen == [(2, 96, 96, 3)] and got.shape == (2, 1280)
    assert float(_unit(got[0]) @ _unit(got[1])) < 0.99
    # The same as resizing the photo to 96 x 96 by hand first.
    by_hand = tmp_path / "red96.png"
    Image.open(paths[0]).convert("RGB").resize((96, 96), Image.BILINEAR).save(by_hand)
    again = embed_files([by_hand], onnx_extractor, image_size=96)
    assert float(_unit(again[0]) @ _unit(got[0])) > 0.98


def test_uint8_backends_get_the_decoded_bytes(real, real_bson, tmp_path):
    """An extractor whose input_spec asks for uint8 is fed uint8 (no float conversion), and
    gives the same vectors as a float extractor doing the scaling itself."""
    from helpers.models.base import InputSpec

    seen = []

    class Mean:
        dim = 3

        def __init__(self, dtype: str) -> None:
            self.input_spec = InputSpec(dtype)

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            seen.append(batch.dtype)
            x = batch.astype(np.float32) / (255 if batch.dtype == np.uint8 else 1)
            return x.reshape(len(x), -1, 3).mean(axis=1) + 1e-3

        def meta(self) -> dict[str, Any]:
            return {"model": "mean", "backend": self.input_spec.dtype}

    head = ParquetCatalogue(real.head(10))
    a = embed_catalogue(head, real_bson, Mean("uint8"), tmp_path / "u8", image_size=32,
                        progress=False)
    assert set(seen) == {np.dtype(np.uint8)}
    seen.clear()
    b = embed_catalogue(head, real_bson, Mean("float32"), tmp_path / "f32", image_size=32,
                        progress=False)
    assert set(seen) == {np.dtype(np.float32)}
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)
