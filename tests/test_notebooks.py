"""Every notebook: committed clean, one `parameters` cell that papermill fully understands."""

from __future__ import annotations

import ast

import nbformat
import papermill as pm
import pytest

from run_all import NOTEBOOKS

BOOKS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
COMMON = {"bson_path", "categories_path", "work_dir", "interactive"}


def test_the_core_notebooks_exist():
    names = [b.stem.split("_")[0] for b in BOOKS]
    assert names[:4] == ["01", "02", "03", "04"]
    assert "06" in names  # 06_compare; its runs: tests/test_compare.py (slow)


@pytest.mark.parametrize("path", BOOKS, ids=[b.stem for b in BOOKS])
def test_notebook_is_clean_and_parameterized(path):
    nb = nbformat.read(path, 4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "has outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "needs exactly one cell tagged 'parameters'"
    assigned = {t.id for node in ast.parse(tagged[0].source).body
                if isinstance(node, ast.Assign) for t in node.targets}
    # papermill silently drops a parameter it cannot parse (e.g. '=' in a comment)
    assert set(pm.inspect_notebook(str(path))) == assigned
    assert COMMON <= assigned
