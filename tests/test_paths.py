"""Where runs go: the same folder wherever in the checkout a process (a kernel) starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHOW = ("import json; from helpers.core.paths import RUNS_DIR, resolve_work_dir; "
        "print(json.dumps([str(RUNS_DIR), str(resolve_work_dir(None)), "
        "str(resolve_work_dir('runs/x/artifacts'))]))")


def _where(cwd: Path, **env: str) -> list[str]:
    """RUNS_DIR and resolved work dirs as a fresh process started in ``cwd`` sees them."""
    base = {k: v for k, v in os.environ.items() if k != "VPS_RUNS_DIR"}
    out = subprocess.run([sys.executable, "-c", SHOW], cwd=cwd, capture_output=True, text=True,
                         env={**base, "PYTHONPATH": str(REPO), **env}, check=True)
    return json.loads(out.stdout)


def test_runs_dir_does_not_depend_on_the_start_folder():
    runs = str(REPO / "runs")
    want = [runs, f"{runs}/sample/artifacts", f"{runs}/x/artifacts"]
    assert _where(REPO) == want
    assert _where(REPO / "notebooks") == want  # where `make lab` starts its kernels
    assert _where(REPO / "helpers" / "index") == want


def test_runs_dir_from_the_environment_and_outside_a_checkout(tmp_path):
    assert _where(REPO / "notebooks", VPS_RUNS_DIR=str(tmp_path / "r"))[:2] == \
        [str(tmp_path / "r"), str(tmp_path / "r" / "sample" / "artifacts")]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert _where(outside)[0] == str(outside.resolve() / "runs")


@pytest.mark.parametrize("nb", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_resolve_their_work_dir(nb):
    """A notebook's default work_dir is not a path relative to the kernel's folder."""
    import nbformat

    cells = nbformat.read(nb, 4).cells
    params = next(c for c in cells if "parameters" in c.metadata.get("tags", []))
    scope: dict = {}
    exec(params.source, scope)  # noqa: S102 - the notebook's own parameter cell
    assert scope["work_dir"] is None
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    assert code.index("work_dir = resolve_work_dir(work_dir)") < code.index("Workspace(work_dir)")
