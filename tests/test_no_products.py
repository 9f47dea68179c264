"""An input without products is said plainly: by the catalogue, by 01, by run_all."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import run_all
from helpers.ingest import scan as cat


def test_require_products_says_why(tmp_path):
    empty = tmp_path / "empty.bson"
    empty.write_bytes(b"")
    summary = cat.build_catalogue(empty, tmp_path / "out", progress=False)
    with pytest.raises(cat.NoProductsError, match="empty.bson holds no products"):
        cat.require_products(summary)
    rejected = cat.CatalogueSummary(source="x.bson", documents=3, products_rejected=3,
                                    rejects_by_reason={"no_images": 3})
    with pytest.raises(cat.NoProductsError, match="all 3 documents were rejected .no_images 3"):
        cat.require_products(rejected)
    cat.require_products(cat.CatalogueSummary(source="x.bson", documents=1, products_kept=1))


def test_run_all_refuses_an_empty_file(tmp_path):
    empty = tmp_path / "empty.bson"
    empty.write_bytes(b"")
    with pytest.raises(SystemExit, match="empty.bson is empty .0 bytes.: it holds no products"):
        run_all.main(["--bson", str(empty), "--out", str(tmp_path)])


def _notebook(path, source):
    nb = new_notebook(cells=[new_code_cell("work_dir = None"), new_code_cell(source)])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


def test_no_products_skips_the_rest_and_kernels_stay_quiet(tmp_path, monkeypatch, capfd):
    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "01_scan.ipynb",
              "from helpers.ingest.scan import CatalogueSummary, require_products\n"
              "require_products(CatalogueSummary(source='x.bson'))")
    _notebook(books / "02_next.ipynb", "print('never run')")
    monkeypatch.setattr(run_all, "NOTEBOOKS", books)
    rc = run_all.main(["--out", str(tmp_path / "runs"), "--name", "t"])
    assert rc == 1
    rows = json.loads((tmp_path / "runs/t/summary.json").read_text())["notebooks"]
    assert [r["status"] for r in rows] == ["failed", "skipped"]
    assert rows[0]["note"].startswith("NoProductsError: x.bson holds no products")
    assert rows[1]["note"].startswith("no data: x.bson holds no products")
    out, err = capfd.readouterr()
    assert "holds no products" in out
    # Kernels run over IPC sockets: ipykernel's TCP warning never reaches the terminal.
    assert "without encryption" not in out + err
