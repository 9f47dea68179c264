"""Every notebook: committed clean, one `parameters` cell that papermill fully understands."""

from __future__ import annotations

import ast
import re

import nbformat
import papermill as pm
import pytest

from run_all import NOTEBOOKS

BOOKS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
# Every notebook takes the run's data and catalogue settings (run_all passes them to all).
COMMON = {"bson_path", "categories_path", "work_dir", "interactive", "skip", "limit",
          "verify_images"}


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


@pytest.mark.parametrize("path", BOOKS, ids=[b.stem for b in BOOKS])
def test_notebook_ends_with_exercises(path):
    """3 to 5 exercises, as d2l's chapters end: each says what to change and what a good
    answer shows."""
    last = nbformat.read(path, 4).cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Exercises")
    items = re.split(r"\n(?=\d\. )", last.source)[1:]
    assert 3 <= len(items) <= 5, items
    for n, item in enumerate(items, 1):
        assert item.startswith(f"{n}. **") and "A good answer" in " ".join(item.split()), item
