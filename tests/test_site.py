"""`make site`: a run's executed notebooks as static HTML pages, opened in a real browser.

One real run (run_all.py, papermill) of two notebooks: the demo's 01_preprocess on the
built-in sample, and a notebook of live widgets (a tqdm bar and the gallery's own widget,
a query dropdown and a k slider above its figure) that stands for a notebook run with
``interactive=True``. The site is built by the Makefile's target itself; then: the index
lists every notebook, every page holds every figure of its notebook, every widget became
a static picture, every link resolves, nothing is fetched from the network, and headless
Chromium (Debian's, driven by Playwright) shows every page with its images loaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import run_all

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

_spec = importlib.util.spec_from_file_location("build_site", REPO / "scripts" / "build_site.py")
build_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_site)

LIVE_WIDGETS = '''import numpy as np
from tqdm.auto import tqdm

from helpers.gallery import Gallery, Hit


class Tiles:  # stands in for ProductImages: one grey level per product
    def image(self, product_id, image_index=None):
        return np.full((32, 32, 3), 40 * product_id % 256, np.uint8)

    def label(self, product_id, width=22):
        return f"product {product_id}"


for _ in tqdm(range(50), desc="embed"):
    pass
Gallery(Tiles(), lambda pid, k: [Hit(p, 1 - p / 10) for p in range(1, k + 1)],
        queries=[3, 5], k=4, title="live gallery").show(interactive=True)
'''


def _live_widgets_notebook(path: Path) -> None:
    nb = new_notebook(cells=[new_code_cell("work_dir = None\ninteractive = True"),
                             new_markdown_cell("# Live widgets\n\nA [link](#Live-widgets)."),
                             new_code_cell(LIVE_WIDGETS)])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    books = root / "notebooks"
    books.mkdir()
    shutil.copy(run_all.NOTEBOOKS / "01_preprocess.ipynb", books)
    _live_widgets_notebook(books / "02_live_widgets.ipynb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_all, "NOTEBOOKS", books)
        rc = run_all.main(["--sample", "--out", str(root / "runs"), "--name", "sample"])
    assert rc == 0
    return root / "runs" / "sample"


@pytest.fixture(scope="module")
def site(run_dir) -> Path:
    """Built by `make site` itself (`-o install`: this interpreter is installed already)."""
    stale = run_dir / "site" / "09_gone.html"  # a page of an earlier build: removed
    stale.parent.mkdir()
    stale.write_text("<p>old</p>")
    subprocess.run(["make", "-s", "-o", "install", "site", f"RUN={run_dir}",
                    f"PY={sys.executable}"], cwd=REPO, check=True)
    return run_dir / "site"


def _figures(nb: nbformat.NotebookNode) -> int:
    """PNG figures of an executed notebook: in its outputs, and captured by its widgets."""
    count = sum("image/png" in o.get("data", {})
                for c in nb.cells for o in c.get("outputs", []))
    state = nb.metadata.get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return count + sum("image/png" in o.get("data", {})
                       for m in state.values() if m.get("model_name") == "OutputModel"
                       for o in m["state"].get("outputs", []))


class _Page(HTMLParser):
    """The links, sources, ids, images and script tags of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.sources: list[str] = []
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.scripts: list[dict] = []
        self.static_widgets = 0
        self.progress: list[tuple[str, str]] = []  # (value, max) of each progress bar

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if "vps-static-widget" in (a.get("class") or "").split():
            self.static_widgets += 1
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "link" and a.get("href"):
            self.sources.append(a["href"])
        if a.get("src"):
            self.sources.append(a["src"])
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "script":
            self.scripts.append(a)
        if tag == "progress":
            self.progress.append((a.get("value"), a.get("max")))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _executed(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.slow
def test_index_lists_every_notebook(site, run_dir):
    index = _parse(site / "index.html")
    text = (site / "index.html").read_text()
    books = _executed(run_dir)
    assert [b.stem for b in books] == ["01_preprocess", "02_live_widgets"]
    for book in books:
        assert f"{book.stem}.html" in index.links
        assert (site / f"{book.stem}.html").is_file()
    assert text.count('<td class="ok">ok</td>') == len(books)


@pytest.mark.slow
def test_every_page_holds_its_figures(site, run_dir):
    for book in _executed(run_dir):
        nb = nbformat.read(book, as_version=4)
        page = _parse(site / f"{book.stem}.html")
        pngs = [s for s in page.images if s.startswith("data:image/png;base64,")]
        assert len(pngs) == len(page.images) == _figures(nb), book.stem
        assert len(pngs) >= (2 if book.stem == "01_preprocess" else 1)
        widgets = sum(WIDGET_VIEW in o.get("data", {})
                      for c in nb.cells for o in c.get("outputs", []))
        assert page.static_widgets == widgets, book.stem  # headless bars are text, not widgets


@pytest.mark.slow
def test_widgets_become_static_pictures(site, run_dir):
    html = (site / "02_live_widgets.html").read_text()
    assert "widget-view+json" not in html and "widget-state+json" not in html
    assert "VBox(children" not in html  # never the widget's text form
    assert _parse(site / "02_live_widgets.html").progress == [("50", "50")]  # tqdm, finished
    assert "embed:" in html and "50/50" in html
    # The gallery's widget: its dropdown and slider at their values, then its figure.
    bar, gallery = html.split('class="vps-static-widget"')[1:]
    assert "<img" not in bar
    assert "query" in gallery and "<b>3</b>" in gallery and "<b>4</b>" in gallery
    assert gallery.count("<img ") == 1 and 'src="data:image/png;base64,' in gallery
    # That figure exists only in the widget's saved state, nowhere in the cell outputs.
    nb = nbformat.read(run_dir / "02_live_widgets.ipynb", as_version=4)
    assert not any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_links_resolve_and_nothing_comes_from_the_network(site):
    pages = sorted(site.glob("*.html"))
    assert [p.name for p in pages] == ["01_preprocess.html", "02_live_widgets.html", "index.html"]
    for path in pages:
        page = _parse(path)
        assert not any(s.get("src") for s in page.scripts), path.name
        for src in page.sources:
            assert src.startswith("data:") or not urlsplit(src).scheme, (path.name, src)
            if not src.startswith("data:"):
                assert (path.parent / unquote(urlsplit(src).path)).is_file(), (path.name, src)
        for href in page.links:
            url = urlsplit(href)
            if url.scheme in ("http", "https", "mailto"):
                continue  # a hyperlink out is fine; nothing is loaded from it
            assert not url.scheme, (path.name, href)
            target = path.parent / unquote(url.path) if url.path else path
            assert target.is_file(), (path.name, href)
            if url.fragment:  # a browser tries the id as written, then percent-decoded
                ids = _parse(target).ids
                assert url.fragment in ids or unquote(url.fragment) in ids, (path.name, href)
        text = path.read_text()
        assert "cdnjs.cloudflare.com" not in text and "unpkg.com" not in text, path.name


@pytest.mark.slow
def test_screenshots_in_headless_chromium(site):
    if not CHROMIUM.exists():
        msg = "Debian chromium not installed (scripts/install_system.sh)"
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must have it", pytrace=False)
        pytest.skip(msg)
    pytest.importorskip("playwright.sync_api")
    from PIL import Image

    report = build_site.screenshots(site)
    assert sorted(report) == ["01_preprocess", "02_live_widgets", "index"]
    for name, shot in report.items():
        assert shot["network"] == [], name  # offline: nothing was asked of the network
        assert shot["loaded"] == shot["count"], name  # every image decoded in the browser
        path = shot["screenshot"]
        assert path == site / "screenshots" / f"{name}.png" and path.stat().st_size > 10_000
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width == 1280 and im.height >= 900, name
            # Not a blank page: the picture has text and figures in it.
            assert len(im.convert("L").getcolors(256) or []) > 16, name
    assert report["01_preprocess"]["count"] >= 2
    with Image.open(report["01_preprocess"]["screenshot"]) as im:
        assert im.height > 2000  # the whole page, not the first screen


def test_a_widget_without_saved_state_shows_its_text(tmp_path):
    nb = new_notebook(cells=[new_code_cell("bar")])
    nb.cells[0].outputs = [nbformat.v4.new_output(
        "display_data", data={WIDGET_VIEW: {"model_id": "gone", "version_major": 2},
                              "text/plain": "embed: 100% 50/50"})]
    assert build_site.static_widgets(nb) == 1
    data = nb.cells[0].outputs[0]["data"]
    assert list(data) == ["text/html"] and "<pre>embed: 100% 50/50</pre>" in data["text/html"]


def test_no_run_is_one_clear_error(tmp_path, capsys):
    assert build_site.main([str(tmp_path / "nope")]) == 1
    assert "make demo" in capsys.readouterr().err
