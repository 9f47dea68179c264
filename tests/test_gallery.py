"""Galleries: static figures for papermill, a live widget for JupyterLab."""

from __future__ import annotations

import pytest

from helpers import catalogue as cat
from helpers.gallery import Gallery, Hit, ProductImages, neighbours_figure, product_grid


@pytest.fixture(scope="module")
def images(cdiscount_bson, cdiscount_categories, tmp_path_factory):
    out = tmp_path_factory.mktemp("cat")
    cat.build_catalogue(cdiscount_bson, out, cdiscount_categories, progress=False)
    return ProductImages(cat.load_catalogue(out), cdiscount_bson)


def fake_search(calls):
    def search(pid, k):
        calls.append((pid, k))
        return [Hit(p, 1.0 - 0.01 * i) for i, p in enumerate(range(1, k + 1)) if p != pid]
    return search


def test_images_and_labels_come_from_the_bson(images):
    img = images.image(0)
    assert img.shape == (180, 180, 3) and img.dtype.name == "uint8"
    assert images.label(0, width=100) == "COQUE TELEPHONE - BUMPER TELEPHONE"


def test_static_figures(images):
    fig = product_grid(images, [0, 1, 2, 3, 4, 5, 6], cols=3)
    assert sum(ax.has_data() for ax in fig.axes) == 7
    fig = neighbours_figure(images, Hit(0), [Hit(1, 0.9), Hit(2, 0.8)], title="t")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("query") and titles[1].startswith("#1  0.900")


def test_widget_redraws_on_query_and_k(images):
    calls = []
    g = Gallery(images, fake_search(calls), queries=[0, 5], k=3)
    box = g.widget()
    pick, slider = box.children[0].children
    assert calls == [(0, 3)]
    pick.value = 5
    slider.value = 6
    assert calls[-2:] == [(5, 3), (5, 6)]


def test_new_photo_is_a_different_file_of_the_same_item(images, tmp_path):
    path = images.new_photo(0, tmp_path / "q.jpg")
    assert path.exists() and path.stat().st_size > 1000
