"""Serving at catalogue scale: the Flask app over a simulated catalogue of train.bson's size.

    python bench/bench_serve_scale.py                        # 7,069,896 products
    python bench/bench_serve_scale.py --n 1000000 --requests 2000
    python bench/bench_serve_scale.py --parquet-baseline     # + the in-memory catalogue alone

gunicorn --preload, 2 workers x 2 threads, over ``bench/simulate.py catalogue`` (real
category skew and names; written once under bench/data/), served memory-mapped
(`helpers.catalogue.columnar`). Measured:

1. memory of each worker, idle and after the load, from /proc/<pid>/smaps_rollup: RSS
   (mapped pages counted whole in every worker), PSS (shared pages divided among their
   sharers) and USS (the worker's own pages); the catalogue file's share of them;
2. a bounded load: ``--requests`` related-products requests (k=10, random products) from
   ``--clients`` concurrent keep-alive clients, then as many product requests over the
   whole catalogue (they touch its pages everywhere): errors, QPS, p50/p99.

Vectors exist for ``--vectors`` products only (128-d, clustered by category, FAISS Flat):
the catalogue is what is measured, not the index. Target: RSS <= 1 GB per worker, 0 errors.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _report import row  # noqa: E402
from bench_apps import Client, free_port, start_server  # noqa: E402
from simulate import DATA, make_catalogue  # noqa: E402

from helpers.catalogue.columnar import SERVING_FILE, ColumnarCatalogue  # noqa: E402
from helpers.core.cpu import cpu_info  # noqa: E402
from helpers.scale.memory import mapping_kb, process_kb  # noqa: E402
from helpers.workspace import Workspace  # noqa: E402

TRAIN_PRODUCTS = 7_069_896
DIM = 128
GB = 1 << 20  # kB in a GiB

# A child that holds the Parquet catalogue as the apps did before (pandas, in memory).
_PARQUET_CHILD = """
import sys
from helpers.catalogue.protocol import ParquetCatalogue
from helpers.scale.memory import process_kb
cat = ParquetCatalogue.open(sys.argv[1])
cat.product(int(cat.ids()[len(cat) // 2]))
m = process_kb(__import__("os").getpid())
print(m["Rss"], m["Uss"])
"""


def serving_set(n: int, n_vectors: int, seed: int = 0) -> tuple[Path, np.ndarray]:
    """The run folder (catalogue, vectors of ``n_vectors`` products, FAISS Flat index),
    built once; and the product ids that have vectors."""
    from helpers.index import build_index
    from helpers.vectors.store import VectorStore, VectorWriter

    root = DATA / f"serve-{n}"
    cat_dir = make_catalogue(n, root / "catalogue" / f"simulated-{n}", seed)
    t0 = time.perf_counter()
    catalogue = ColumnarCatalogue.open(cat_dir)
    print(f"catalogue: {len(catalogue):,} products, {catalogue.path.stat().st_size / 1e6:,.0f} MB"
          f" mapped ({SERVING_FILE}; opened or written in {time.perf_counter() - t0:.1f} s)")
    folder = root / "vectors" / f"mobilenet_v2_simulated-{n_vectors}"
    made_by = {"model": "mobilenet_v2_simulated", "runtime": "simulated", "image_size": 180,
               "level": "product", "catalogue_sha256": catalogue.fingerprint,
               "catalogue_rows": len(catalogue), "source": "simulated"}
    try:
        store = VectorStore(folder, expect=made_by)
    except Exception:  # noqa: BLE001 - not there yet (or another catalogue's): write it
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(catalogue), n_vectors, replace=False))
        pids = catalogue.ids()[rows]
        cats = catalogue.category_ids(pids)
        _, inverse = np.unique(cats, return_inverse=True)
        centres = rng.standard_normal((inverse.max() + 1, DIM), dtype=np.float32)
        x = centres[inverse] + 0.7 * rng.standard_normal((n_vectors, DIM), dtype=np.float32)
        writer = VectorWriter(folder, DIM, made_by, resume=False)
        writer.append(x, pids, np.full(n_vectors, -1), len(catalogue))
        store = writer.close()
    ws = Workspace(root)
    if not ws.indexes("faiss", store):
        cats = catalogue.category_ids(store.product_ids)
        build_index("faiss", store.vectors, store.item_ids, cats, source=store.made_by,
                    factory="Flat").save(ws.index_dir("faiss-Flat"))
    return root, np.asarray(store.product_ids)


def workers_of(master: int) -> list[int]:
    """The pids whose parent is ``master`` (gunicorn's workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            out.append(int(stat.parent.name))
    return sorted(out)


def memory(master: int, mapped: Path) -> list[dict]:
    rows = []
    for pid in workers_of(master):
        m, f = process_kb(pid), mapping_kb(pid, mapped)
        rows.append({"pid": pid, "rss": m["Rss"], "pss": m["Pss"], "uss": m["Uss"],
                     "file_rss": f["Rss"], "file_pss": f["Pss"]})
    return rows


def print_memory(label: str, rows: list[dict]) -> None:
    for r in rows:
        print(f"  {label} worker {r['pid']}: RSS {r['rss'] / 1024:,.0f} MB, PSS "
              f"{r['pss'] / 1024:,.0f} MB, USS {r['uss'] / 1024:,.0f} MB; of the catalogue "
              f"file: RSS {r['file_rss'] / 1024:,.0f} MB, PSS {r['file_pss'] / 1024:,.0f} MB")


def fixed_load(port: int, paths: list[str], clients: int) -> dict:
    """Every path once, ``clients`` keep-alive connections at a time: errors and latency."""
    lat = np.zeros(len(paths))
    status = np.zeros(len(paths), np.int32)
    nxt = iter(range(len(paths)))
    lock = threading.Lock()

    def run() -> None:
        c = Client(port)
        while True:
            with lock:
                j = next(nxt, None)
            if j is None:
                return
            t = time.perf_counter()
            status[j] = c.get(paths[j])
            lat[j] = time.perf_counter() - t

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    return {"requests": len(paths), "errors": int((status != 200).sum()),
            "qps": len(paths) / took, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=TRAIN_PRODUCTS, help="catalogue products")
    ap.add_argument("--vectors", type=int, default=100_000, help="products with a vector")
    ap.add_argument("--requests", type=int, default=4000, help="requests of each phase")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parquet-baseline", action="store_true",
                    help="also measure one process holding the Parquet catalogue (pandas)")
    args = ap.parse_args(argv)
    print(f"# serving at scale on {cpu_info()}, load {os.getloadavg()[0]:.1f}")
    root, with_vectors = serving_set(args.n, args.vectors)
    catalogue = ColumnarCatalogue.open(next((root / "catalogue").iterdir()))
    rng = random.Random(0)
    related = [f"/api/products/{rng.choice(with_vectors.tolist())}/related?k=10&method=faiss"
               for _ in range(args.requests)]
    ids = catalogue.ids()
    products = [f"/api/products/{ids[rng.randrange(len(ids))]}" for _ in range(args.requests)]
    port = free_port()
    t0 = time.perf_counter()
    server = start_server(root, port, args.workers, args.threads)
    print(f"gunicorn --preload, {args.workers} workers x {args.threads} threads, up in "
          f"{time.perf_counter() - t0:.1f} s")
    try:
        time.sleep(1.0)  # the workers' imports settle
        idle = memory(server.pid, catalogue.path)
        print_memory("idle", idle)
        rel = fixed_load(port, related, args.clients)
        prod = fixed_load(port, products, args.clients)
        loaded = memory(server.pid, catalogue.path)
        print_memory("after load", loaded)
    finally:
        server.terminate()
        server.wait(30)
    n = f"{args.n / 1e6:.2f} M products"
    for name, r in (("related products (k=10)", rel), ("product", prod)):
        print(f"{name}: {r['requests']:,} requests, {args.clients} clients: {r['errors']} "
              f"errors, {r['qps']:,.0f} QPS, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    rss = max(r["rss"] for r in loaded) / GB
    pss = max(r["pss"] for r in loaded) / GB
    uss = max(r["uss"] for r in loaded) / GB
    print(f"per worker, after the load (the larger of {len(loaded)}): RSS {rss:.2f} GiB, "
          f"PSS {pss:.2f} GiB, USS {uss:.2f} GiB; {cpu_info()}")
    out = [row(f"RSS per gunicorn worker, {n}, mapped catalogue", rss, 1.0, unit="GiB",
               higher_is_better=False, note=str(cpu_info())),
           row(f"PSS per gunicorn worker, {n}, mapped catalogue", pss, 1.0, unit="GiB",
               higher_is_better=False),
           row(f"USS per gunicorn worker, {n}", uss, unit="GiB", higher_is_better=False),
           row(f"related-products API errors, {n}, {args.requests:,} requests, "
               f"{args.clients} clients", rel["errors"] + prod["errors"], 0, unit="errors",
               higher_is_better=False),
           row(f"related-products API, {n}, p99", rel["p99_ms"], unit="ms",
               higher_is_better=False)]
    if args.parquet_baseline:
        child = subprocess.run([sys.executable, "-c", _PARQUET_CHILD,
                                str(catalogue.path.parent)], capture_output=True, text=True,
                               cwd=HERE.parent, env={**os.environ, "PYTHONPATH": str(HERE.parent)},
                               check=True)
        p_rss, p_uss = (int(x) / GB for x in child.stdout.split())
        print(f"the Parquet catalogue held in memory, one process: RSS {p_rss:.2f} GiB, "
              f"USS {p_uss:.2f} GiB")
        out.append(row(f"Parquet catalogue in memory, one process, {n} (before)", p_rss,
                       unit="GiB", higher_is_better=False))
    return out


if __name__ == "__main__":
    main()
