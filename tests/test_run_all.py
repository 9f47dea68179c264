"""run_all.py: runs the notebooks present, reports ok / failed / skipped, exits accordingly."""

from __future__ import annotations

import json
import os
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import run_all


def _notebook(path, *sources, params="x = 1"):
    nb = new_notebook(cells=[new_code_cell(params), *(new_code_cell(s) for s in sources)])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def fake_books(tmp_path, monkeypatch):
    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "01_ok.ipynb", "print(work_dir, x)",
              params="work_dir = None\nx = 1")
    _notebook(books / "02_service.ipynb",
              "from helpers.core.errors import ServiceUnavailable\n"
              "raise ServiceUnavailable('no Elasticsearch at http://localhost:9200')")
    _notebook(books / "03_broken.ipynb", "1 / 0")
    monkeypatch.setattr(run_all, "NOTEBOOKS", books)
    return tmp_path


def test_statuses_and_exit_code(fake_books, capsys):
    rc = run_all.main(["--out", str(fake_books / "runs"), "--name", "t", "-p", "x", "5"])
    assert rc == 1  # 03 failed
    summary = json.loads((fake_books / "runs/t/summary.json").read_text())
    status = {r["notebook"]: r["status"] for r in summary["notebooks"]}
    assert status == {"01_ok": "ok", "02_service": "skipped", "03_broken": "failed"}
    skipped = next(r for r in summary["notebooks"] if r["status"] == "skipped")
    assert "no Elasticsearch" in skipped["note"]
    executed = nbformat.read(fake_books / "runs/t/01_ok.ipynb", 4)
    text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert text.strip().endswith(" 5")  # the -p value reached the notebook


def test_only_selects_and_skipped_is_not_failure(fake_books):
    rc = run_all.main(["--out", str(fake_books / "runs"), "--name", "t", "--only", "01,02"])
    assert rc == 0


def test_only_unknown_prefix(fake_books):
    with pytest.raises(SystemExit, match="no notebook starts with"):
        run_all.main(["--out", str(fake_books / "runs"), "--only", "09"])


def _outputs(path):
    nb = nbformat.read(path, 4)
    outs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for o in outs)
    pngs = sum("image/png" in o.get("data", {}) for o in outs)
    return text, pngs


def _check_core_run(run, products, categories, level="product"):
    text, pngs = _outputs(run / "01_preprocess.ipynb")
    assert f"kept {products} + rejected 0" in text and f"{categories} categories" in text
    assert pngs >= 2  # category bar chart + product grid
    if level == "product":  # 02 has no level: it runs once, with the product-level run
        text, pngs = _outputs(run / "02_cosine_style.ipynb")
        assert f"VectorStore({products} x 768" in text and pngs >= 4  # a gallery per query
    text, pngs = _outputs(run / "03_faiss.ipynb")
    assert f"{level} level" in text  # the store printed: VectorStore(n x 1280, <level> level..)
    assert "reloaded: same results" in text and "all in the category: True" in text
    assert "after remove: False" in text and "after add back: True" in text
    assert pngs >= 6  # galleries, new-photo query, recall-vs-QPS plot
    text, pngs = _outputs(run / "04_annoy.ipynb")
    assert "NotSupportedError" in text and "pss_kb" in text and pngs >= 6
    summary = (run / "summary.md").read_text()
    assert summary.count("| ok |") == (4 if level == "product" else 3)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["product", "image"])
def test_notebooks_01_to_04_on_real_sample(level, cdiscount_bson, cdiscount_categories,
                                           tmp_path):
    only = "01,02,03,04" if level == "product" else "01,03,04"
    rc = run_all.main(["--bson", str(cdiscount_bson), "--categories", str(cdiscount_categories),
                       "--only", only, "--out", str(tmp_path), "-p", "level", level])
    assert rc == 0
    _check_core_run(tmp_path / "train_example", 82, 36, level)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["product", "image"])
def test_notebooks_01_to_04_on_builtin_sample(level, tmp_path):
    """The committed sample: what a fresh clone without ../shared still runs."""
    only = "01,02,03,04" if level == "product" else "01,03,04"
    rc = run_all.main(["--sample", "--only", only, "--out", str(tmp_path), "--name", "s",
                       "-p", "limit", "300", "-p", "level", level])
    assert rc == 0
    _check_core_run(tmp_path / "s", 300, 10, level)


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="BSON file not found: .*nope.bson"):
        run_all.main(["--bson", str(tmp_path / "nope.bson"), "--out", str(tmp_path)])


def test_a_long_cell_says_where_it_is(tmp_path, monkeypatch, capsys):
    """A headless run relays the kernels' progress bars (helpers.core.progress: text, not
    a widget, under run_all), so a long cell is never a silent minute; the saved notebook
    keeps the bar's last state."""
    monkeypatch.setattr(run_all, "PROGRESS_EVERY", 0.5)
    monkeypatch.delenv("VPS_TEXT_PROGRESS", raising=False)
    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "01_slow.ipynb",
              "import time\nfrom helpers.core.progress import tqdm\n"
              "for _ in tqdm(range(6), desc='embed images', mininterval=0):\n"
              "    time.sleep(0.4)", params="work_dir = None")
    monkeypatch.setattr(run_all, "NOTEBOOKS", books)
    assert run_all.main(["--out", str(tmp_path / "runs"), "--name", "t"]) == 0
    out = capsys.readouterr().out
    assert "01_slow: embed images:" in out and "/6" in out
    text, _ = _outputs(tmp_path / "runs" / "t" / "01_slow.ipynb")
    assert "embed images: 100%" in text


def test_kernels_draw_inline_even_if_the_caller_set_agg(tmp_path, monkeypatch):
    """A library in the calling process (Streamlit, on import) may set MPLBACKEND=Agg:
    the notebooks' figures must still come out."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "01_plot.ipynb",
              "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
              params="work_dir = None")
    monkeypatch.setattr(run_all, "NOTEBOOKS", books)
    assert run_all.main(["--out", str(tmp_path / "runs"), "--name", "t"]) == 0
    _, pngs = _outputs(tmp_path / "runs" / "t" / "01_plot.ipynb")
    assert pngs == 1


@pytest.mark.slow
def test_the_run_starts_its_own_elasticsearch_node_for_05(tmp_path, monkeypatch):
    """No ELASTICSEARCH_URL and no es_url: run_all starts a local node for 05 (as make demo
    does), 05 runs against it (ok, not skipped), and the node is stopped afterwards."""
    import urllib.request

    monkeypatch.delenv("ELASTICSEARCH_URL", raising=False)
    rc = run_all.main(["--sample", "--only", "05", "--out", str(tmp_path), "--name", "es",
                       "-p", "limit", "120", "-p", "image_size", "96"])
    summary = json.loads((tmp_path / "es" / "summary.json").read_text())
    assert rc == 0, summary
    assert [r["status"] for r in summary["notebooks"]] == ["ok"], summary
    text, _ = _outputs(tmp_path / "es" / "05_elasticsearch.ipynb")
    url = text.split("Elasticsearch at ", 1)[1].split()[0]
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(OSError):  # stopped with the run
        urllib.request.urlopen(url, timeout=3)
    assert "ELASTICSEARCH_URL" not in os.environ


@pytest.mark.slow
def test_a_node_started_in_the_background_is_found_up_after_its_start_timeout():
    """run_all starts the node before 01 and first waits for it before 05, maybe minutes
    later (02's embedding). A node that came up meanwhile is up, even past the start
    timeout: the demo once skipped 05 and 06 because the wait never asked it."""
    from helpers.services.elasticsearch import (
        cluster_health,
        start_elasticsearch,
        wait_for_elasticsearch,
    )

    node = start_elasticsearch(wait=False)
    try:
        deadline = time.monotonic() + 240
        while (cluster_health(node.url) or {}).get("status") not in ("yellow", "green"):
            assert time.monotonic() < deadline, node.log_tail()
            time.sleep(0.5)
        time.sleep(1.5)  # now past a 1 s start timeout
        assert wait_for_elasticsearch(node, timeout=1).start_seconds > 1
    finally:
        node.stop()
