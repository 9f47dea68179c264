"""The figures a benchmark hands to ``python -m bench``: one row per figure, with its target.

Contract (see bench/README.md): a bench script's ``main(argv=None)`` parses ``argv`` (None:
the command line), prints its own detailed tables as before, and returns a list of rows
made with ``row``:

    from bench._report import row          # or: sys.path + "from _report import row"
    def main(argv=None) -> list[dict]:
        ...
        return [row("HNSW32 vs FAISS Flat, 100k, recall@10 >= 0.95", 15.3, target=10),
                row("ONNX vs TF forward, 224 px", 1.7)]          # no target: informative

A row is a plain dict: {"name", "value", "unit", "target", "higher_is_better", "met",
"note"}; ``met`` is True / False, or None when there is no target. Values are ratios
measured side by side in the same run (unit "x") unless said otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

COLUMNS = ("name", "value", "unit", "target", "higher_is_better", "met", "note")


def row(name: str, value: float, target: float | None = None, *, unit: str = "x",
        higher_is_better: bool = True, note: str = "") -> dict[str, Any]:
    """One figure. met: value >= target (or <= when not higher_is_better); None without
    a target; False when the value could not be measured (NaN)."""
    v = float(value)
    if target is None:
        met = None
    elif math.isnan(v):
        met = False
    else:
        met = v >= target if higher_is_better else v <= target
    return {"name": str(name), "value": v, "unit": unit, "target": target,
            "higher_is_better": higher_is_better, "met": met, "note": note}


def check_rows(rows: Any, where: str) -> list[dict[str, Any]]:
    """Validate what a bench returned; a bench that returns nothing gets one row saying so."""
    if not isinstance(rows, list | tuple):  # None, an exit status...: an older main()
        what = type(rows).__name__ if rows is not None else "None"
        return [{**row(f"{where}: no figures (main() returned {what}; see bench/_report.py)",
                       float("nan")), "met": None}]
    out = []
    for r in rows:
        if not isinstance(r, Mapping) or not {"name", "value"} <= set(r):
            raise TypeError(f"{where}: a row must be a dict with name and value, got {r!r}")
        full = row(r["name"], r["value"], r.get("target"), unit=r.get("unit", "x"),
                   higher_is_better=r.get("higher_is_better", True), note=r.get("note", ""))
        if "met" in r and r["met"] is not None:
            full["met"] = bool(r["met"])
        out.append(full)
    return out


def verdict(r: Mapping[str, Any]) -> str:
    return {True: "met", False: "short", None: "-"}[r.get("met")]


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    v = float(v)
    if math.isnan(v):
        return "n/a"
    text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
    return f"{text}{unit if unit == 'x' else ' ' + unit if unit else ''}"


def table(rows: Iterable[Mapping[str, Any]]) -> str:
    """Markdown table: bench | figure | value | target | verdict."""
    lines = ["| bench | figure | value | target | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        op = ">=" if r.get("higher_is_better", True) else "<="
        target = "-" if r.get("target") is None else f"{op} {_fmt(r['target'], r['unit'])}"
        name = r["name"] + (f" ({r['note']})" if r.get("note") else "")
        lines.append(f"| {r.get('bench', '')} | {name} | {_fmt(r['value'], r['unit'])} | "
                     f"{target} | {verdict(r)} |")
    return "\n".join(lines)
