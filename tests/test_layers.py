"""The layers of helpers/ hold: import-linter's contracts (pyproject.toml) and no import cycle.

`make test` also runs `lint-imports`; this test makes a plain `pytest` run check the same, and
adds what import-linter has no contract for: no cycle between any two modules of helpers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    modules = sorted(m for m in graph.modules if m.startswith("helpers"))

    def edges(m: str) -> list[str]:
        return sorted(i for i in graph.find_modules_directly_imported_by(m)
                      if i.startswith("helpers"))

    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges(root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            child = next(it, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges(child))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                scc = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    scc.append(m)
                    if m == node:
                        break
                if len(scc) > 1:
                    out.append(sorted(scc))
    return out


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("helpers.a", "helpers.b", "helpers.c"):
        graph.add_module(m)
    graph.add_import(importer="helpers.a", imported="helpers.b")
    graph.add_import(importer="helpers.b", imported="helpers.a")
    graph.add_import(importer="helpers.c", imported="helpers.a")
    assert _cycles(graph) == [["helpers.a", "helpers.b"]]


def test_no_import_cycles():
    # Parent packages import their children to re-export them, and a child may import its
    # parent's re-exports: only cycles between plain modules count. Imports under
    # `if TYPE_CHECKING:` (type hints naming a class of a module that imports this one)
    # never run, so they make no cycle.
    graph = grimp.build_graph("helpers", cache_dir=None, exclude_type_checking_imports=True)
    packages = {m for m in graph.modules if graph.find_children(m)}
    for pkg in packages:
        for child in graph.find_children(pkg):
            for a, b in ((pkg, child), (child, pkg)):
                if graph.direct_import_exists(importer=a, imported=b):
                    graph.remove_import(importer=a, imported=b)
    assert _cycles(graph) == []


def test_import_linter_contracts():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency (pyproject.toml)"
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
