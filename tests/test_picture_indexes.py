"""A picture keeps its index in the document everywhere (issue #22).

Products whose pictures are [bad, good] and [good, bad, good] are followed through the
catalogue, `Product`, the gallery, the Flask app, the JPEG export and an image-level
embedding: every good picture is reachable at its original index, and the bad one is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import bson
import numpy as np
import pytest

from helpers.catalogue.image_source import PLACEHOLDER_RGB, BsonImageSource, JpegFolderSource
from helpers.catalogue.protocol import ParquetCatalogue
from helpers.gallery import ProductImages
from helpers.index import build_index
from helpers.ingest import bson_store
from helpers.ingest import scan as cat
from helpers.ingest.jpeg import decode_image
from helpers.serve.loader import FEATURE_MODELS, ArtifactMissing, load_artifacts
from helpers.vectors.embed import embed_catalogue
from helpers.workspace import Workspace

NOT_JPEG = b"GIF89a not a jpeg"
BAD_GOOD, GOOD_BAD_GOOD = 10**9 + 1, 10**9 + 2  # no sample id is that large


class Tiny:
    """Block means of the picture: a cheap, deterministic stand-in for MobileNetV2 (its
    model name carries the prefix the apps look for)."""

    dim = 48

    def meta(self) -> dict:
        return {"model": f"{FEATURE_MODELS[0]}-tiny-block-means"}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, h, w, _ = x.shape
        b = x.reshape(n, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4), dtype=np.float64)
        return b.reshape(n, 48).astype(np.float32) + 1e-3


@pytest.fixture(scope="module")
def crafted(sample_bson, tmp_path_factory) -> tuple[Path, dict[int, list[bytes]]]:
    """Six sample products, then the two with a bad picture; returns the file and the
    pictures of those two, by index."""
    docs = [r.doc for r, _ in zip(bson_store.iter_records(sample_bson), range(6), strict=False)]
    good = [img["picture"] for d in docs for img in d["imgs"]]
    cid = docs[0]["category_id"]
    pics = {BAD_GOOD: [NOT_JPEG, good[0]], GOOD_BAD_GOOD: [good[1], NOT_JPEG, good[2]]}
    extra = [{"_id": pid, "imgs": [{"picture": p} for p in ps], "category_id": cid}
             for pid, ps in pics.items()]
    path = tmp_path_factory.mktemp("crafted") / "pictures.bson"
    path.write_bytes(b"".join(bson.encode(d) for d in docs + extra))
    return path, pics


@pytest.fixture(scope="module")
def run(crafted, sample_categories, tmp_path_factory) -> tuple[Path, ParquetCatalogue]:
    """A run's artifacts (the layout the apps read): catalogue, vectors, a FAISS index."""
    path, _ = crafted
    ws = Workspace(tmp_path_factory.mktemp("run"))
    catalogue = ws.catalogue(path, sample_categories)
    store = ws.vectors(catalogue, ws.images(path), Tiny(), image_size=32, progress=False)
    build_index("faiss", store.vectors, store.item_ids,
                catalogue.category_ids(store.product_ids), source=store.made_by,
                factory="Flat").save(ws.index_dir("faiss-Flat"))
    return ws.root, catalogue


def test_the_catalogue_keeps_every_good_picture_at_its_index(run, crafted):
    root, catalogue = run
    path, pics = crafted
    a, b = catalogue.product(BAD_GOOD), catalogue.product(GOOD_BAD_GOOD)
    assert (a.n_images, a.bad_images, a.usable_images) == (2, (0,), [1])
    assert (b.n_images, b.bad_images, b.usable_images) == (3, (1,), [0, 2])
    assert (a.n_usable, b.n_usable) == (1, 2)
    # the summary and the category counts count usable pictures
    folder = next(p for p, _ in Workspace(root).find("catalogue"))
    summary = cat.load_meta(folder)["summary"]
    others = sum(len(p.usable_images) for p in catalogue.page(0, 6))
    assert summary["images_kept"] == others + 3 and summary["bad_images"] == 2
    assert cat.category_counts(catalogue.df)["images"].sum() == others + 3
    rej = cat.load_rejects(folder)
    assert sorted(zip(rej["product_id"], rej["image_index"], strict=True)) == \
        [(BAD_GOOD, 0), (GOOD_BAD_GOOD, 1)]


def test_the_gallery_shows_the_good_picture(run, crafted):
    _, catalogue = run
    path, pics = crafted
    gallery = ProductImages(catalogue, BsonImageSource(path))
    shown = gallery.image(BAD_GOOD)  # the first usable picture: index 1, not a grey tile
    np.testing.assert_array_equal(shown, decode_image(pics[BAD_GOOD][1]))
    assert not (shown == PLACEHOLDER_RGB).all()
    np.testing.assert_array_equal(gallery.image(GOOD_BAD_GOOD, 2),
                                  decode_image(pics[GOOD_BAD_GOOD][2]))


def test_the_app_serves_every_good_picture_and_not_the_bad_one(run, crafted):
    pytest.importorskip("flask")
    from apps.flask_app import create_app

    root, _ = run
    _, pics = crafted
    client = create_app(root).test_client()
    for pid, pictures in pics.items():
        good = [i for i, p in enumerate(pictures) if p != NOT_JPEG]
        body = client.get(f"/api/products/{pid}").get_json()
        assert body["images"] == [f"/images/{pid}/{i}.jpg" for i in good]
        for i, pic in enumerate(pictures):
            r = client.get(f"/images/{pid}/{i}.jpg")
            if i in good:
                assert r.status_code == 200 and r.data == pic
            else:
                assert r.status_code == 404 and "no usable picture" in r.get_json()["error"]
        page = client.get(f"/?product_id={pid}").get_data(as_text=True)
        assert f"{len(good)} picture(s)" in page and "no usable picture" not in page


def test_exported_jpegs_and_image_level_vectors_keep_the_indexes(run, crafted, tmp_path):
    _, catalogue = run
    path, pics = crafted
    n = cat.export_jpegs(catalogue.df, path, tmp_path / "jpg", progress=False)
    assert n == sum(len(p.usable_images) for p in catalogue.page(0, len(catalogue)))
    assert (tmp_path / "jpg" / f"{BAD_GOOD}_1.jpg").read_bytes() == pics[BAD_GOOD][1]
    assert (tmp_path / "jpg" / f"{GOOD_BAD_GOOD}_2.jpg").read_bytes() == pics[GOOD_BAD_GOOD][2]
    assert not (tmp_path / "jpg" / f"{GOOD_BAD_GOOD}_1.jpg").exists()
    folder = JpegFolderSource(tmp_path / "jpg")
    assert folder.pictures(catalogue.product(GOOD_BAD_GOOD))[2] == pics[GOOD_BAD_GOOD][2]
    stores = [embed_catalogue(catalogue, src, Tiny(), tmp_path / name, image_size=32,
                              level="image", progress=False)
              for name, src in (("bson", BsonImageSource(path)), ("jpg", folder))]
    for store in stores:
        pairs = set(zip(store.product_ids.tolist(), store.image_index.tolist(), strict=True))
        assert {(BAD_GOOD, 1), (GOOD_BAD_GOOD, 0), (GOOD_BAD_GOOD, 2)} <= pairs
        assert not {(BAD_GOOD, 0), (GOOD_BAD_GOOD, 1)} & pairs
    np.testing.assert_array_equal(stores[0].item_ids, stores[1].item_ids)
    np.testing.assert_array_equal(stores[0].vectors, stores[1].vectors)


def test_a_catalogue_of_the_old_format_is_refused_and_rebuilt(crafted, sample_categories,
                                                              tmp_path):
    """Format 1 counted good pictures only: read as today's, its counts would be wrong."""
    path, _ = crafted
    ws = Workspace(tmp_path)
    folder = ws.catalogue_dir(path, sample_categories)
    ws.catalogue(path, sample_categories)
    meta = json.loads((folder / cat.META).read_text())
    (folder / cat.META).write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(cat.CatalogueError, match="format 1.*make demo"):
        ParquetCatalogue.open(folder)
    with pytest.raises(ArtifactMissing, match="run_all.py --only 01"):
        load_artifacts(tmp_path)
    ws.catalogue(path, sample_categories)  # the notebooks' call rebuilds it
    assert cat.load_meta(folder)["format_version"] == cat.FORMAT_VERSION
    assert ParquetCatalogue.open(folder).product(BAD_GOOD).usable_images == [1]
