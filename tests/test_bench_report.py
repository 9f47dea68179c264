"""bench/_report.py rows and the `python -m bench` runner (no timing is checked)."""

from __future__ import annotations

import importlib
import math

from bench._report import check_rows, row, table


def test_row_verdicts():
    assert row("a", 12.0, 10)["met"] is True
    assert row("a", 8.0, 10)["met"] is False
    assert row("p99", 4.0, 10, unit="ms", higher_is_better=False)["met"] is True
    assert row("info", 1.7)["met"] is None
    assert row("lost", float("nan"), 10)["met"] is False


def test_check_rows_and_table():
    rows = check_rows([{"name": "x vs y", "value": 2.5, "target": 2}], "b")
    assert rows[0]["met"] is True and rows[0]["unit"] == "x"
    none = check_rows(None, "b")
    assert math.isnan(none[0]["value"]) and "no figures" in none[0]["name"]
    assert "returned int" in check_rows(0, "b")[0]["name"]  # a main() returning a status
    text = table([{**rows[0], "bench": "b"}, {**row("p99", 12, 10, unit="ms",
                                                     higher_is_better=False), "bench": "c"}])
    assert "| b | x vs y | 2.50x | >= 2.00x | met |" in text
    assert "| c | p99 | 12.00 ms | <= 10.00 ms | short |" in text


def test_runner_collects_rows_from_a_bench(tmp_path, monkeypatch, capsys):
    runner = importlib.import_module("bench.__main__")
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    (bench_dir / "_report.py").write_text(
        (runner.HERE / "_report.py").read_text())
    (bench_dir / "bench_toy.py").write_text(
        "from _report import row\n"
        "def main(argv=None):\n"
        "    print('toy detail')\n"
        "    return [row('toy speed-up', 3.0, 2), row('toy info', 1.0)]\n")
    (bench_dir / "bench_old.py").write_text("def main():\n    print('old style')\n")
    monkeypatch.setattr(runner, "HERE", bench_dir)
    monkeypatch.setattr(runner, "PLAN", [])
    rc = runner.main(["--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| toy | toy speed-up | 3.00x | >= 2.00x | met |" in out
    assert "| old | old: no figures" in out
    assert "1 met, 0 short" in out
