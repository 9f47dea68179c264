"""A rehearsal of the full train.bson run: the README's full-data commands on a simulated
dump, each stage's peak memory and CPU seconds measured and projected to 12.4 M pictures.

    python bench/rehearsal.py --pictures 3000                     # real embedding (minutes)
    python bench/rehearsal.py --pictures 1050000 --simulate-vectors   # the 1 M rehearsal
    make rehearsal                                                # the 1 M rehearsal

Stages, each a separate process whose tree is watched (sum of RSS every 0.2 s; CPU seconds
of the tree from the kernel's accounting):
  0. dump    ``bench/simulate.py``: real Cdiscount documents (the Kaggle sample and the
             built-in sample) replicated with new ids, categories drawn with the real skew;
  1. 01      ``run_all.py --bson dump --only 01 -p scheduler local -p workers 2``: the
             catalogue on Dask;
  2. embed   the real model, inside 03 below (``--simulate-vectors``: simulated vectors
             of each picture's category written as the shards a Dask embedding writes,
             marked ``"simulated"`` in every manifest; 03 then only merges them);
  3. 03      ``run_all.py --bson dump --only 01,03 -p scheduler local -p workers 2
             -p image_size 180 -p level image``: the index (above 1 M vectors the
             compressed one), its recall on sampled queries, the notebook's figures;
  4. serve   gunicorn (2 workers, the Procfile's app) over the run, the related-products
             API under a bounded load: errors, p99, memory of each worker.

The projection multiplies CPU seconds per picture by 12,371,293 pictures and takes memory
as measured (streaming stages) or per vector (the index). ``tests/test_rehearsal.py`` runs
a small one in ``make test`` to prove the stages connect.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from _report import row  # noqa: E402
from simulate import DATA, make_bson, simulate_embedding  # noqa: E402

from helpers.core.cpu import cpu_info  # noqa: E402
from helpers.core.paths import CDISCOUNT_DIR  # noqa: E402

FULL_PICTURES = 12_371_293
FULL_PRODUCTS = 7_069_896


def watch(cmd: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``cmd``; its wall time, the CPU seconds of its process tree, and the peak of
    the tree's summed RSS (what the node must hold; shared pages count once per process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = open(log, "w") if log else None  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out,
                            stderr=subprocess.STDOUT if out else None)
    top, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [top, *top.children(recursive=True)]
            peak = max(peak, sum(_rss(p) for p in tree))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    if out:
        out.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(cpu, 1), "peak_rss_gb": round(peak / 1e9, 2)}


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0


def run_all(dump: Path, runs: Path, only: str, params: dict, log: Path) -> dict:
    cmd = [sys.executable, "run_all.py", "--bson", str(dump), "--categories",
           str(CDISCOUNT_DIR / "category_names.csv"), "--out", str(runs), "--only", only]
    for k, v in params.items():
        cmd += ["-p", k, str(v)]
    print("$", " ".join(cmd[1:]), flush=True)
    res = watch(cmd, log=log)
    if res["rc"]:
        raise SystemExit(f"stage failed (exit {res['rc']}): see {log}\n"
                         + log.read_text()[-3000:])
    return res


def serve(art: Path, seconds: float, log: Path) -> dict:
    """gunicorn over the run's artifacts; the related-products API under a bounded open-loop
    load; memory of each worker (RSS, and PSS: shared mapped pages split between them)."""
    import random

    from bench_apps import Client, free_port, open_loop, start_server

    from helpers.scale.memory import process_kb
    from helpers.serve.loader import load_artifacts

    a = load_artifacts(art)
    ids = a.catalogue.ids()
    picks = [int(ids[i]) for i in random.Random(0).sample(range(len(ids)), min(300, len(ids)))]
    a.close()
    paths = [f"/api/products/{pid}/related?k=10&method=faiss" for pid in picks]
    port = free_port()
    server = start_server(art, port, 2, 2)
    try:
        warm = Client(port)
        bad = [p for p in paths[:30] if warm.get(p) != 200]
        if bad:
            raise SystemExit(f"warm-up requests failed: {bad[:3]}")
        res = open_loop(port, paths, 20.0, seconds, 16)
        workers = psutil.Process(server.pid).children()
        mem = [process_kb(w.pid) for w in workers]
    finally:
        server.terminate()
        server.wait(20)
    return {**res, "workers": len(mem),
            "worker_rss_gb": round(max(m["Rss"] for m in mem) * 1024 / 1e9, 3),
            "worker_pss_gb": round(max(m["Pss"] for m in mem) * 1024 / 1e9, 3)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pictures", type=int, default=1_050_000)
    ap.add_argument("--simulate-vectors", action="store_true",
                    help="simulated vectors instead of the model's (the index and serving "
                         "stages at 1 M+ pictures)")
    ap.add_argument("--out", type=Path, help="folder (default bench/data/rehearsal-N)")
    ap.add_argument("--compressed-above", type=int, default=None,
                    help="03's compressed_above (default: the notebook's)")
    ap.add_argument("--serve-seconds", type=float, default=10.0)
    ap.add_argument("--json", type=Path, help="write the stage table here")
    ap.add_argument("--until", choices=["embed", "03", "serve"],
                    help="stop after this stage (a rerun goes on from there)")
    ap.add_argument("--fresh", action="store_true", help="run every stage again")
    ap.add_argument("--redo", nargs="*", default=[], metavar="STAGE",
                    help="run these finished stages again (e.g. --redo 03 serve)")
    args = ap.parse_args(argv)
    out = args.out or DATA / f"rehearsal-{args.pictures}"
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    print("CPU:", cpu_info(), flush=True)

    # Finished stages are kept with their figures (stages.json): a rerun (after a fix in
    # 03 or the app) does not scan and simulate a 1 M-picture dump again.
    record = out / "stages.json"
    done = json.loads(record.read_text()) if record.exists() and not args.fresh else {}
    stages: dict[str, dict] = {}

    def stage(name: str, fn: Callable[[], dict]) -> None:
        if name in done and name not in args.redo:
            print(f"{name}: done before, figures as recorded", flush=True)
            stages[name] = done[name]
        else:
            stages[name] = fn()
        record.write_text(json.dumps({k: v for k, v in stages.items()}, indent=2))

    dump = out / "dump.bson"
    stage("dump", lambda: _dump(dump, args.pictures))
    common = {"scheduler": "local", "workers": 2}
    nb03 = {**common, "image_size": 180, "level": "image"}
    if args.compressed_above is not None:
        nb03["compressed_above"] = args.compressed_above
    stage("01", lambda: run_all(dump, runs, "01", common, out / "01.log"))
    art = runs / dump.stem / "artifacts"
    if args.simulate_vectors:
        stage("embed", lambda: _simulated(art, dump, nb03))
    if args.until in (None, "03", "serve"):
        stage("03", lambda: run_all(dump, runs, "01,03", nb03, out / "03.log"))
    if args.until in (None, "serve"):
        stage("serve", lambda: serve(art, args.serve_seconds, out / "serve.log"))
    return report(stages, art, args)


def _dump(dump: Path, pictures: int) -> dict:
    t = time.perf_counter()
    make_bson(dump, n_pictures=pictures)
    return {"wall_s": round(time.perf_counter() - t, 1),
            "size_gb": round(dump.stat().st_size / 1e9, 2)}


def _simulated(art: Path, dump: Path, nb03: dict) -> dict:
    """The simulated embedding, in-process: what the 03 command will find finished."""
    from helpers.models import load_extractor
    from helpers.workspace import Workspace

    ws = Workspace(art)
    catalogue = ws.catalogue(dump, CDISCOUNT_DIR / "category_names.csv")
    meta = load_extractor("mobilenet_v2", "onnx").meta()
    folder = ws.vectors_dir(meta, nb03["image_size"], nb03["level"], catalogue)
    t0, c0 = time.perf_counter(), time.process_time()
    n = simulate_embedding(Path(catalogue.source), dump, folder, meta,
                           image_size=nb03["image_size"], level=nb03["level"],
                           workers=nb03["workers"])
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1), "vectors": n, "simulated": True,
            "peak_rss_gb": round(psutil.Process().memory_info().rss / 1e9, 2)}


def report(stages: dict, art: Path, args: argparse.Namespace) -> list[dict]:
    pictures = args.pictures
    sim = ", simulated vectors" if args.simulate_vectors else ""
    print(f"\nrehearsal: {pictures:,} pictures{sim} -> {art}; CPU {cpu_info()}")
    print(f"{'stage':<7}{'wall s':>9}{'CPU s':>9}{'peak GB':>9}{'CPU s/pic':>11}"
          f"{'12.4 M: CPU h':>15}")
    rows = []
    for name, s in stages.items():
        cpu = s.get("cpu_s")
        per = cpu / pictures if cpu is not None else None
        full_h = per * FULL_PICTURES / 3600 if per is not None else None
        print(f"{name:<7}{s.get('wall_s', 0):>9}{cpu if cpu is not None else '-':>9}"
              f"{s.get('peak_rss_gb', '-'):>9}"
              f"{f'{per * 1e3:.2f} ms' if per is not None else '-':>11}"
              f"{f'{full_h:.1f}' if full_h is not None else '-':>15}")
        if per is not None:
            rows.append(row(f"rehearsal {name}, {pictures:,} pictures: CPU hours projected "
                            "to 12.4 M pictures", full_h, unit="h",
                            note="simulated vectors" if s.get("simulated") else ""))
        if "peak_rss_gb" in s:
            rows.append(row(f"rehearsal {name}, {pictures:,} pictures: peak RSS of the "
                            "process tree", s["peak_rss_gb"], unit="GB",
                            higher_is_better=False))
    for folder in sorted((art / "index").glob("faiss-*")):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"index {folder.name}: {size / 1e9:.2f} GB on disk, {size / pictures:.0f} B a "
              f"picture: {size / pictures * FULL_PICTURES / 1e9:.1f} GB at 12.4 M")
    sv = stages.get("serve")
    if sv is not None:
        print(f"serve: {sv['requests']:,} requests, {sv['errors']} errors, p99 {sv['p99_ms']} ms; "
              f"{sv['workers']} workers, largest RSS {sv['worker_rss_gb']} GB, "
              f"PSS {sv['worker_pss_gb']} GB")
        rows += [row(f"rehearsal serve, {pictures:,} pictures: errors under load", sv["errors"],
                     0, unit="", higher_is_better=False),
                 row(f"rehearsal serve, {pictures:,} pictures: PSS per gunicorn worker",
                     sv["worker_pss_gb"], 1.0, unit="GB", higher_is_better=False)]
    if args.json:
        args.json.write_text(json.dumps({"stages": stages, "cpu": str(cpu_info())}, indent=2))
    return rows


if __name__ == "__main__":
    main()
