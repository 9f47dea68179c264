"""Galleries: static figures for papermill, a live widget for JupyterLab, image-level ids."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.catalogue.image_source import BsonImageSource
from helpers.catalogue.protocol import ParquetCatalogue
from helpers.gallery import (
    Gallery,
    Hit,
    ProductImages,
    as_hit,
    neighbours_figure,
    product_grid,
    searcher,
    to_hits,
)
from helpers.index import SearchResult, build_index
from helpers.ingest import scan as cat
from helpers.ingest.jpeg import decode_image


@pytest.fixture(scope="module")
def catalogue(real_bson, real_categories, tmp_path_factory) -> ParquetCatalogue:
    out = tmp_path_factory.mktemp("cat")
    cat.build_catalogue(real_bson, out, real_categories, progress=False)
    return ParquetCatalogue.open(out)


@pytest.fixture(scope="module")
def images(catalogue, real_bson) -> ProductImages:
    return ProductImages(catalogue, BsonImageSource(real_bson))


def fake_search(calls, ids):
    def search(pid, k):
        calls.append((pid, k))
        return [Hit(int(p), 1.0 - 0.01 * i) for i, p in enumerate(ids[: k + 1]) if p != pid][:k]
    return search


def test_images_and_labels_come_from_the_source(images, catalogue, real_bson):
    pid = int(catalogue.ids()[0])
    img = images.image(pid)
    assert img.shape == (180, 180, 3) and img.dtype.name == "uint8"
    p = catalogue.product(pid)
    assert images.label(pid, width=100) == p.category_path[2]
    # the very picture the document holds
    raw = BsonImageSource(real_bson).pictures(p)[p.usable_images[0]]
    np.testing.assert_array_equal(img, decode_image(raw))


def test_static_figures(images, catalogue):
    ids = catalogue.ids()[:7].tolist()
    fig = product_grid(images, ids, cols=3)
    assert sum(ax.has_data() for ax in fig.axes) == 7
    fig = neighbours_figure(images, Hit(ids[0]), [Hit(ids[1], 0.9), Hit(ids[2], 0.8)], title="t")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("query") and titles[1].startswith("#1  0.900")


def test_widget_redraws_on_query_and_k(images, catalogue):
    ids = catalogue.ids()[:10].tolist()
    calls = []
    g = Gallery(images, fake_search(calls, ids), queries=[ids[0], ids[5]], k=3)
    box = g.widget()
    pick, slider = box.children[0].children
    assert calls == [(ids[0], 3)]
    pick.value = ids[5]
    slider.value = 6
    assert calls[-2:] == [(ids[5], 3), (ids[5], 6)]


def test_new_photo_is_a_different_file_of_the_same_item(images, catalogue, tmp_path):
    pid = int(catalogue.ids()[0])
    path = images.new_photo(pid, tmp_path / "q.jpg")
    assert path.exists() and path.stat().st_size > 1000
    new = decode_image(path.read_bytes()).astype(np.float32)
    assert not np.array_equal(new, images.image(pid).astype(np.float32))  # another picture...

    def shopper_view(product_id: int) -> np.ndarray:  # mirror, crop 10%, resize, as made
        from PIL import Image, ImageOps

        img = ImageOps.mirror(Image.fromarray(images.image(product_id)))
        w, h = img.size
        img = img.crop((w // 10, h // 10, w, h)).resize((w, h), Image.BICUBIC)
        return np.asarray(img, np.float32).ravel()

    # ...of the same item: it is that item's picture seen so, up to JPEG re-encoding,
    same = np.corrcoef(new.ravel(), shopper_view(pid))[0, 1]
    other = np.corrcoef(new.ravel(), shopper_view(int(catalogue.ids()[1])))[0, 1]
    assert same > 0.95 and same > other


def test_image_level_ids_are_decoded(images, catalogue):
    """At level="image" an index holds packed image ids: the gallery shows the matched
    picture of the right product instead of failing on an unknown product id."""
    multi = next(p for p in catalogue.page(0, len(catalogue)) if len(p.usable_images) >= 2)
    item = multi.product_id * 100 + multi.usable_images[1]
    hit = as_hit(item, "image", 0.5)
    assert hit == Hit(multi.product_id, 0.5, multi.usable_images[1])
    res = SearchResult(np.array([[item, -1]]), np.array([[0.5, -np.inf]], np.float32))
    assert to_hits(res, level="image") == [hit]  # padding dropped
    fig = neighbours_figure(images, hit, [hit])
    assert len(fig.axes) == 2


def test_searcher_and_gallery_at_image_level(images, catalogue):
    prods = catalogue.page(0, len(catalogue))
    pairs = [(p.product_id, i) for p in prods for i in p.usable_images]
    item_ids = np.array([pid * 100 + i for pid, i in pairs])
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((len(item_ids), 16)).astype(np.float32)
    cats = catalogue.category_ids([pid for pid, _ in pairs])
    index = build_index("exact", vecs, item_ids, cats)
    search = searcher(index, catalogue, same_category=True, level="image")
    hits = search(int(item_ids[0]), 5)
    assert hits and all(catalogue.category_ids([h.product_id])[0] == cats[0] for h in hits)
    assert all(h.image_index is not None for h in hits)
    g = Gallery(images, searcher(index, level="image"), [int(item_ids[0])], k=4, level="image")
    fig = g.figure(int(item_ids[0]))
    assert len(fig.axes) == 5
