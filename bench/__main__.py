"""Run every benchmark, then print ONE table of the figures of this run, each with its target.

    python -m bench                      # everything (about 10-15 minutes on 2 cores)
    python -m bench --only cosine,ann    # benches whose name contains one of these
    python -m bench --quick              # smaller sizes: a smoke run of the machinery
    python -m bench --json runs/bench.json

Each bench runs in its own process (one's threads and imports cannot slow another), prints
its detailed tables as it goes, and hands back its figures through ``main()`` (the row
contract in bench/README.md and bench/_report.py). The exit status is 0 even when a target
is short: benchmarks report, they never gate CI. It is 1 only if a bench crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _report import check_rows, table  # noqa: E402

# (label, module, arguments, quick arguments). Every other bench/bench_*.py runs after these
# with no arguments (a new bench is picked up by itself); other scripts here (simulate.py:
# a data generator; scale_index.py: bench_scale's index part; fuzz_ingest.py: a fuzzer)
# are not benchmarks.
PLAN: list[tuple[str, str, list[str], list[str]]] = [
    ("ingest", "bench_ingest", [], ["--size-gb", "0.2"]),
    ("embed", "bench_embed", [], ["--no-tf", "--rounds", "1"]),
    ("models", "bench_models", [], []),
    ("cosine", "bench_cosine", [], ["--n", "5000"]),
    ("ann 100k", "bench_ann", [], ["--n", "20000", "--nq", "200"]),
    ("ann 1M", "bench_ann", ["--data", "synthetic", "--n", "1000000"],
     ["--data", "synthetic", "--n", "50000", "--nq", "200"]),
    ("es", "bench_es", [], []),
    ("scale", "bench_scale", [],
     ["--size-gb", "0.2", "--n-vectors", "50000", "--nlist", "256", "--queries", "200"]),
    ("serve scale", "bench_serve_scale", [],
     ["--n", "200000", "--vectors", "20000", "--requests", "500"]),
]

# The child: import the bench as a module, run main(argv), write its rows as JSON.
_CHILD = """
import importlib, inspect, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
module, out, argv = sys.argv[3], sys.argv[4], sys.argv[5:]
sys.argv = [module + ".py", *argv]  # for a main() that reads the command line itself
main = importlib.import_module(module).main
rows = main(argv) if inspect.signature(main).parameters else main()
with open(out, "w") as f:
    json.dump(rows, f, default=float)
"""


def plan(only: str | None, quick: bool) -> list[tuple[str, str, list[str]]]:
    present = {p.stem for p in HERE.glob("bench_*.py")}
    runs = [(label, mod, q if quick else a) for label, mod, a, q in PLAN if mod in present]
    listed = {mod for _, mod, _, _ in PLAN}
    runs += [(mod.removeprefix("bench_"), mod, []) for mod in sorted(present - listed)]
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        runs = [r for r in runs if any(w in r[0] or w in r[1] for w in wanted)]
    return runs


def machine() -> str:
    """One line about the machine: CPU and its instruction sets, memory, load, versions."""
    from helpers.core.cpu import cpu_info

    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1e6
        mem_s = f"{mem:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        mem_s = "RAM unknown"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_info()}, {mem_s}, load {load:.1f} at start; "
            f"Python {platform.python_version()} on {platform.system()} {platform.release()}")


def run_one(label: str, module: str, argv: list[str], timeout: float) -> tuple[list, str]:
    """Run a bench in a child process; (rows, status)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-c", _CHILD, str(ROOT), str(HERE), module, str(out), *argv]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [], f"timed out after {timeout:.0f} s"
        if proc.returncode:
            return [], f"exit status {proc.returncode}"
        rows = json.loads(out.read_text()) if out.exists() else None
        return check_rows(rows, label), "ok"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma list: run benches whose label or module has one")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per bench")
    ap.add_argument("--json", type=Path, help="also write the rows and the machine here")
    args = ap.parse_args(argv)
    runs = plan(args.only, args.quick)
    if not runs:
        print("no bench matches --only", file=sys.stderr)
        return 1
    host = machine()
    print(f"# python -m bench{' --quick' if args.quick else ''}: {len(runs)} benches on {host}",
          flush=True)
    rows, crashed = [], []
    t_all = time.perf_counter()
    for label, module, bench_argv in runs:
        print(f"\n## {label}: {module}.py {' '.join(bench_argv)}", flush=True)
        t0 = time.perf_counter()
        got, status = run_one(label, module, bench_argv, args.timeout)
        secs = time.perf_counter() - t0
        if status != "ok":
            crashed.append(label)
            got = [{"name": f"did not finish: {status}", "value": float("nan"), "unit": "",
                    "target": None, "higher_is_better": True, "met": False, "note": ""}]
        rows += [{**r, "bench": label, "seconds": round(secs, 1)} for r in got]
    print(f"\n# Figures of this run ({time.perf_counter() - t_all:,.0f} s; {host})\n")
    print(table(rows))
    met = sum(r["met"] is True for r in rows)
    short = sum(r["met"] is False for r in rows)
    print(f"\n{met} met, {short} short, {len(rows) - met - short} without target"
          + (f"; crashed: {', '.join(crashed)}" if crashed else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": host, "quick": args.quick, "rows": rows},
                                        indent=2, default=str) + "\n")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
