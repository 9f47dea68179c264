"""The Streamlit app through streamlit.testing.v1.AppTest: method switch, product picking
(which fills "recently viewed"), category search, upload, and the missing-artifacts page."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from helpers.serve.loader import load_artifacts  # noqa: E402
from helpers.serve.pages import find_products  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "apps" / "streamlit_app.py")


@contextlib.contextmanager
def main_module_kept():
    """AppTest makes the app script ``sys.modules["__main__"]`` and leaves it there; later
    tests that spawn processes (Dask workers, multiprocessing) would then run the app in
    every child. Put the real one back."""
    main = sys.modules["__main__"]
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def keep_main_module():
    with main_module_kept():
        yield


@pytest.fixture(scope="module")
def art(app_artifacts):
    a = load_artifacts(app_artifacts)
    yield a
    a.close()


@pytest.fixture()
def at(app_artifacts, monkeypatch):
    monkeypatch.setenv("VPS_ARTIFACTS", str(app_artifacts))
    t = AppTest.from_file(APP, default_timeout=120)
    t.run()
    assert not t.exception, t.exception
    return t


def subheaders(t) -> list[str]:
    return [s.value for s in t.subheader]


def related_buttons(t, grid: str = "related") -> list[int]:
    return [int(b.key.rsplit("-", 1)[1]) for b in t.button if b.key.startswith(f"{grid}-")]


def test_start_page(at, art):
    assert at.title[0].value == "Visual product search"
    assert at.radio(key="method").value == "faiss"
    assert at.info[0].value.startswith("Pick a product")
    assert len(at.get("image")) == 5  # a first row of products to click


def test_pick_products_fills_recently_viewed(at, art):
    first, second = (int(x) for x in art.catalogue.ids()[:2])
    at.selectbox(key="picker").set_value(first).run()
    assert not at.exception
    assert at.session_state["recent"] == [first]
    assert subheaders(at)[:2] == [f"Product {first}", "Looks like it (FAISS)"]
    assert len(related_buttons(at)) == 10 and first not in related_buttons(at)
    assert "Recently viewed" not in subheaders(at)  # one product: nothing to recall yet
    path = " › ".join(art.catalogue.product(first).category_path)
    assert any(path in m.value for m in at.markdown)

    at.selectbox(key="picker").set_value(second).run()
    assert at.session_state["recent"] == [second, first]
    assert "Related to what you recently viewed" in subheaders(at)
    suggested = related_buttons(at, "recent-related")
    assert suggested and not {first, second} & set(suggested)
    assert set(related_buttons(at, "viewed")) == {first, second}

    # Clicking a related product views it.
    third = related_buttons(at)[0]
    at.button(key=f"related-{third}").click().run()
    assert at.session_state["recent"] == [third, second, first]
    assert subheaders(at)[0] == f"Product {third}"


def test_recommend_controls_and_not_this(at, art):
    ids = [int(x) for x in art.catalogue.ids()]
    first = ids[0]
    second = next(p for p in ids if art.catalogue.product(p).category_id
                  != art.catalogue.product(first).category_id)
    at.selectbox(key="picker").set_value(first).run()
    at.selectbox(key="picker").set_value(second).run()
    assert at.selectbox(key="strategy").value == "round_robin"  # the default
    suggested = related_buttons(at, "recent-related")
    assert len(suggested) == 10
    at.button(key=f"not-recent-related-{suggested[0]}").click().run()
    assert not at.exception
    assert at.session_state["negative"] == [suggested[0]]
    assert suggested[0] not in related_buttons(at, "recent-related")
    assert "Not for you" in subheaders(at)
    assert related_buttons(at, "negative") == [suggested[0]]
    for strategy in ("mean", "best"):
        at.selectbox(key="strategy").set_value(strategy).run()
        assert not at.exception and len(related_buttons(at, "recent-related")) == 10
    at.slider(key="mmr").set_value(0.5).run()
    assert not at.exception and len(related_buttons(at, "recent-related")) == 10
    assert any("diversity 0.5" in c.value for c in at.caption)
    at.button(key="forget-negative").click().run()
    assert at.session_state["negative"] == [] and "Not for you" not in subheaders(at)


def test_switch_method(at, art):
    pid = int(art.catalogue.ids()[3])
    at.selectbox(key="picker").set_value(pid).run()
    faiss = related_buttons(at)
    for method in art.available():
        at.radio(key="method").set_value(method).run()
        assert not at.exception
        assert f"Looks like it ({art.methods[method].label})" in subheaders(at)
        assert len(related_buttons(at)) == 10
    at.radio(key="method").set_value("annoy").run()
    assert len(set(related_buttons(at)) & set(faiss)) >= 8  # Annoy finds much the same
    # The unavailable method is explained, not offered.
    assert "elasticsearch" not in at.radio(key="method").options
    assert any("unavailable" in c.value for c in at.sidebar.caption)


def test_k_and_same_category(at, art):
    p = art.catalogue.product(int(art.catalogue.ids()[0]))
    at.selectbox(key="picker").set_value(p.product_id).run()
    at.slider(key="k").set_value(4).run()
    assert len(related_buttons(at)) == 4
    at.toggle(key="same_category").set_value(True).run()
    hits = related_buttons(at)
    assert hits and (art.catalogue.category_ids(hits) == p.category_id).all()


def test_search_by_category_name(at, art):
    p = art.catalogue.product(int(art.catalogue.ids()[0]))
    word = p.category_path[2].split()[0].lower()
    at.text_input(key="query").set_value(word).run()
    options = at.selectbox(key="picker").options
    assert options and all(word in o.lower() for o in options)
    at.text_input(key="query").set_value(str(p.product_id)).run()
    assert at.selectbox(key="picker").options[0].startswith(str(p.product_id))
    at.text_input(key="query").set_value("no such thing anywhere").run()
    assert any("No product matches" in i.value for i in at.sidebar.info)


def test_find_products(art):
    p = art.catalogue.product(int(art.catalogue.ids()[0]))
    assert find_products(art.catalogue, str(p.product_id))[0] == p
    by_cat = find_products(art.catalogue, str(p.category_id), limit=5)
    assert len(by_cat) == 5 and all(x.category_id == p.category_id for x in by_cat)
    words = " ".join(p.category_path).upper()
    assert all(x.category_id == p.category_id for x in find_products(art.catalogue, words))
    assert len(find_products(art.catalogue, "", limit=7)) == 7
    assert find_products(art.catalogue, "zzzz qqqq") == []


def test_upload(at, art):
    p = art.catalogue.product(int(art.catalogue.ids()[12]))
    data = art.images.pictures(p)[p.usable_images[0]]
    at.file_uploader(key="upload").set_value(("photo.jpg", data, "image/jpeg")).run()
    assert not at.exception
    assert "Looks like your photo (FAISS)" in subheaders(at)
    assert related_buttons(at, "upload")[0] == p.product_id


def test_upload_not_a_picture(at):
    at.file_uploader(key="upload").set_value(("photo.jpg", b"not a picture", "image/jpeg"))
    at.run()
    assert not at.exception
    assert any("not a picture" in w.value for w in at.warning)


def test_upload_with_style_is_explained(at, art):
    if "style" not in art.available():
        pytest.skip("no style vectors")
    buf = io.BytesIO()
    Image.new("RGB", (50, 50), "blue").save(buf, "JPEG")
    at.radio(key="method").set_value("style").run()
    at.file_uploader(key="upload").set_value(("p.jpg", buf.getvalue(), "image/jpeg")).run()
    assert any("TensorFlow" in w.value for w in at.warning)


def test_missing_artifacts_page(tmp_path, monkeypatch):
    monkeypatch.setenv("VPS_ARTIFACTS", str(tmp_path / "nothing"))
    t = AppTest.from_file(APP, default_timeout=60).run()
    assert not t.exception
    assert "make demo" in t.error[0].value



def test_spawned_processes_do_not_run_the_app(app_artifacts, monkeypatch):
    """AppTest swaps the test runner's __main__ for the app; main_module_kept undoes it, so
    a process spawned afterwards (a Dask worker) imports the runner, not the app."""
    monkeypatch.setenv("VPS_ARTIFACTS", str(app_artifacts))
    before = sys.modules["__main__"]
    with main_module_kept():
        AppTest.from_file(APP, default_timeout=120).run()
        swapped = sys.modules["__main__"]
    assert getattr(swapped, "__file__", "") == APP  # what would leak without the guard
    assert sys.modules["__main__"] is before
