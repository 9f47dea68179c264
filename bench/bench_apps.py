"""Load test of the related-products API: gunicorn on loopback, a Python load generator.

    python bench/bench_apps.py                    # runs/sample/artifacts, or builds a set
    python bench/bench_apps.py --seconds 10 --method annoy --workers 2

Two phases against GET /api/products/<id>/related?k=10&method=...  (random product ids):
1. capacity: closed loop, --connections keep-alive connections as fast as they go, for a few
   seconds -> the QPS this machine holds (server and load generator share the cores);
2. load: open loop, each request sent on a fixed schedule and timed from its scheduled
   start (a stalled server is not hidden by a stalled client: no coordinated omission).
   Short probes (3 s) at 80, 60, 40, 25 % of capacity find the highest rate whose p99 is
   under the target; then --seconds at that rate -> QPS, p50/p99 latency, errors.
Target: p99 < 50 ms with 0 errors at the QPS 2 cores hold. Bounded: about --seconds + 20 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers.core.paths import RUNS_DIR, SAMPLE_BSON, SAMPLE_CATEGORIES  # noqa: E402

BENCH_ARTIFACTS = REPO / "bench" / "data" / "apps_artifacts"


def artifacts_dir(given: str | None) -> Path:
    """The artifacts to serve: --artifacts, the demo run's, or a set built once here."""
    if given:
        return Path(given)
    demo = RUNS_DIR / "sample" / "artifacts"
    if (demo / "catalogue" / "catalogue.json").is_file():
        try:
            from helpers.serve.loader import load_artifacts

            load_artifacts(demo).close()
            return demo
        except Exception as exc:  # noqa: BLE001 - fall back to a set of our own
            print(f"demo artifacts not servable ({exc}); building a set for the bench")
    from helpers.serve.loader import build_serving_artifacts

    return build_serving_artifacts(BENCH_ARTIFACTS, SAMPLE_BSON, SAMPLE_CATEGORIES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(art: Path, port: int, workers: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "VPS_ARTIFACTS": str(art), "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "--preload", "-w", str(workers),
           "-k", "gthread", "--threads", str(threads), "-b", f"127.0.0.1:{port}",
           "--log-level", "warning", "apps.flask_app:create_app()"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("gunicorn did not start in 120 s")


class Client:
    """One keep-alive connection; get() returns (status, seconds)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str) -> int:
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            return -1


def capacity(port: int, paths: list[str], connections: int, seconds: float) -> float:
    """Closed loop: requests per second the server answers with ``connections`` busy."""
    stop = time.monotonic() + seconds
    counts = [0] * connections

    def run(i: int) -> None:
        c, rng = Client(port), random.Random(i)
        while time.monotonic() < stop:
            if c.get(rng.choice(paths)) == 200:
                counts[i] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def open_loop(port: int, paths: list[str], qps: float, seconds: float,
              connections: int) -> dict:
    """Requests on a fixed schedule at ``qps``; latency from each scheduled start."""
    n = int(qps * seconds)
    start = time.monotonic() + 0.2
    schedule = start + np.arange(n) / qps
    lat = np.full(n, np.nan)
    status = np.zeros(n, np.int32)
    nxt = iter(range(n))
    lock = threading.Lock()

    def run(i: int) -> None:
        c, rng = Client(port), random.Random(100 + i)
        while True:
            with lock:
                j = next(nxt, None)
            if j is None:
                return
            wait = schedule[j] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            status[j] = c.get(rng.choice(paths))
            lat[j] = time.monotonic() - schedule[j]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    ok = status == 200
    return {"requests": n, "seconds": round(took, 2), "qps": round(n / took, 1),
            "errors": int((~ok).sum()), "p50_ms": round(float(np.nanpercentile(lat, 50)) * 1e3, 2),
            "p99_ms": round(float(np.nanpercentile(lat, 99)) * 1e3, 2),
            "max_ms": round(float(np.nanmax(lat)) * 1e3, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", help="a run's artifacts folder (default: the demo run's)")
    ap.add_argument("--method", default="faiss")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the load phase")
    ap.add_argument("--capacity-seconds", type=float, default=4.0)
    ap.add_argument("--load", type=float, default=None,
                    help="fraction of capacity offered (default: probe for the target)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn processes")
    ap.add_argument("--threads", type=int, default=2, help="threads per gunicorn process")
    ap.add_argument("--connections", type=int, default=8, help="closed-loop connections")
    ap.add_argument("--open-connections", type=int, default=32,
                    help="open-loop connections (enough that the schedule never waits)")
    ap.add_argument("--target-p99-ms", type=float, default=50.0)
    args = ap.parse_args(argv)

    art = artifacts_dir(args.artifacts)
    from helpers.serve.loader import load_artifacts

    a = load_artifacts(art)
    ids = [int(x) for x in a.catalogue.ids()]
    a.close()
    paths = [f"/api/products/{pid}/related?k={args.k}&method={args.method}"
             for pid in random.Random(0).sample(ids, min(500, len(ids)))]
    port = free_port()
    server = start_server(art, port, args.workers, args.threads)
    try:
        warm = Client(port)
        for p in paths[:50]:
            assert warm.get(p) == 200, f"warm-up request failed: {p}"
        cap = capacity(port, paths, args.connections, args.capacity_seconds)
        load = args.load
        if load is None:  # probe: the highest offered rate that keeps p99 under target
            for load in (0.8, 0.6, 0.4, 0.25):
                probe = open_loop(port, paths, cap * load, 3.0, args.open_connections)
                print(f"  probe {load:.0%} of capacity: {probe['qps']:,.0f} QPS, "
                      f"p99 {probe['p99_ms']} ms, {probe['errors']} errors")
                if probe["p99_ms"] < args.target_p99_ms and probe["errors"] == 0:
                    break
        res = open_loop(port, paths, cap * load, args.seconds, args.open_connections)
    finally:
        server.terminate()
        server.wait(20)
    cores = os.cpu_count()
    print(f"related-products API, {len(ids):,} products, method={args.method}, k={args.k}; "
          f"gunicorn {args.workers} workers x {args.threads} threads; {cores} cores shared "
          f"with the load generator")
    print(f"capacity (closed loop, {args.connections} connections): {cap:,.0f} QPS")
    print(f"load ({load:.0%} of capacity, open loop, {res['seconds']} s): "
          f"{res['qps']:,.0f} QPS, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
          f"max {res['max_ms']} ms, {res['errors']} errors of {res['requests']:,}")
    met = res["p99_ms"] < args.target_p99_ms and res["errors"] == 0
    print(f"target p99 < {args.target_p99_ms:g} ms with 0 errors: {'met' if met else 'SHORT'}")
    print(json.dumps({"capacity_qps": round(cap, 1), **res}))
    return 0 if res["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
