#!/usr/bin/env python
"""Elasticsearch kNN beside FAISS HNSW on the same 100k vectors, measured in one run.

    python bench/bench_es.py                      # starts its own node (start-up timed)
    python bench/bench_es.py --url http://127.0.0.1:9200 --types int8_hnsw,hnsw

Figures, side by side:
- node start-up: seconds from launch to health yellow (the Maven test node of
  helpers/services/elasticsearch.py, heap 512 MB), and the node's resident memory after the load;
- bulk load: documents per second through ElasticsearchIndex.build (streaming_bulk,
  chunks of 500, refresh off during the load, count check at the end);
- kNN: the smallest num_candidates reaching recall@10 >= --target against the exact top 10
  (numpy), and its queries/s (all queries, _msearch batches of 256), beside FAISS HNSW with
  the same m / ef_construction at its smallest efSearch reaching the target.

Data: bench_ann.py's 100k Fashion-MNIST vectors (PCA 128), 1,000 held-out queries.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_ann.py

import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import row  # noqa: E402
from bench_ann import fashion_vectors, synthetic_vectors  # noqa: E402

from helpers.evaluate.metrics import measure_qps, recall_at_k  # noqa: E402
from helpers.index import build_index  # noqa: E402
from helpers.index.elasticsearch_index import node_version  # noqa: E402
from helpers.services.servers import start_elasticsearch  # noqa: E402

CANDIDATES = [10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 1000, 2000, 4000]
EFS = [10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512]


def sweep(index, knob: str, values: list[int], queries: np.ndarray, truth: np.ndarray,
          k: int, target: float) -> tuple[int, float, float] | None:
    """(knob value, recall, qps) of the first setting reaching the target, else None."""
    for v in values:
        if v < k and knob == "num_candidates":
            continue
        index.params[knob] = v
        recall = recall_at_k(index.search(queries, k).ids, truth, k)
        print(f"#   {knob}={v:<5} recall@{k}={recall:.3f}", flush=True)
        if recall >= target:
            qps = measure_qps(lambda q: index.search(q, k), queries, repeat=3)
            return v, recall, qps
    return None


def rss_mb(pid: int | None) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an existing node (default: start one here)")
    ap.add_argument("--data", choices=["fashion", "synthetic"], default="fashion")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--m", type=int, default=16, help="HNSW links (Elasticsearch's default)")
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--types", default="int8_hnsw", help="index_options types, comma list")
    ap.add_argument("--merge", action="store_true",
                    help="force-merge to one segment before searching (one graph, as FAISS)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    make = fashion_vectors if args.data == "fashion" else synthetic_vectors
    x, desc = make(args.n + args.nq, args.dim, rng)
    base, queries = x[: args.n], x[args.n:]
    ids = np.arange(args.n, dtype=np.int64)
    cats = (ids % 50).astype(np.int64)
    truth = build_index("exact", base, ids).search(queries, args.k).ids

    server = None
    if args.url:
        url = args.url
    else:
        server = start_elasticsearch()
        url = server.url
    try:
        print(f"# bench_es: {desc}")
        print(f"# n={args.n:,} dim={args.dim} queries={args.nq:,} k={args.k} target "
              f"recall@{args.k} >= {args.target}; m={args.m} ef_construction="
              f"{args.ef_construction}; {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}; faiss {faiss.__version__}")
        if server is not None:
            print(f"node start-up: {server.start_seconds:.1f} s (launch -> health yellow), "
                  f"heap 512 MB")
        rows = []
        figures = []
        if server is not None:
            figures.append(row("Elasticsearch node start-up (launch -> health yellow)",
                               server.start_seconds, unit="s", higher_is_better=False))
        for index_type in args.types.split(","):
            t = time.perf_counter()
            es = build_index("elasticsearch", base, ids, cats, url=url,
                             index=f"bench-{index_type}", recreate=True,
                             index_type=index_type, m=args.m,
                             ef_construction=args.ef_construction, exact_field=False)
            bulk_s = time.perf_counter() - t
            version = node_version(es.client)
            merge_s = 0.0
            if args.merge:
                t = time.perf_counter()
                es.client.indices.forcemerge(index=es.index, max_num_segments=1,
                                             request_timeout=3600)
                merge_s = time.perf_counter() - t
            segments = len(es.client.cat.segments(index=es.index, format="json"))
            print(f"# Elasticsearch {version} {index_type}: {args.n / bulk_s:,.0f} docs/s bulk "
                  f"({bulk_s:.0f} s), {segments} segments"
                  + (f" after a {merge_s:.0f} s force-merge" if args.merge else ""), flush=True)
            best = sweep(es, "num_candidates", CANDIDATES, queries, truth, args.k, args.target)
            rows.append((f"Elasticsearch {index_type}", args.n / bulk_s, best))
            figures.append(row(f"Elasticsearch {index_type} bulk load, {args.n // 1000}k x "
                               f"{args.dim}", args.n / bulk_s, unit="docs/s"))
            if server is not None:
                mem = rss_mb(server.pid)
                print(f"# node memory (RSS) after loading: {mem:,.0f} MB")
                figures.append(row("Elasticsearch node memory (RSS) after the load", mem,
                                   unit="MB", higher_is_better=False))
            es.drop()
        t = time.perf_counter()
        hnsw = build_index("faiss", base, ids, cats, factory=f"HNSW{args.m}",
                           efConstruction=args.ef_construction)
        build_s = time.perf_counter() - t
        print(f"# FAISS HNSW{args.m}: built in {build_s:.1f} s "
              f"({args.n / build_s:,.0f} vectors/s)", flush=True)
        best = sweep(hnsw, "efSearch", EFS, queries, truth, args.k, args.target)
        rows.append((f"FAISS HNSW{args.m}", args.n / build_s, best))

        print(f"\n| engine | build (vectors/s) | knob at recall@{args.k} >= {args.target} | "
              "recall | QPS | QPS / FAISS |")
        print("|---|---|---|---|---|---|")
        faiss_qps = rows[-1][2][2] if rows[-1][2] else float("nan")
        for name, rate, best in rows:
            if best is None:
                print(f"| {name} | {rate:,.0f} | not reached | - | - | - |")
                continue
            knob, recall, qps = best
            print(f"| {name} | {rate:,.0f} | {knob} | {recall:.3f} | {qps:,.0f} | "
                  f"{qps / faiss_qps:.3f}x |")
            if name.startswith("Elasticsearch"):
                figures.append(row(f"{name} kNN QPS vs FAISS HNSW{args.m}, {args.n // 1000}k, "
                                   f"recall@{args.k} >= {args.target}", qps / faiss_qps,
                                   note=f"num_candidates={knob}: {qps:,.0f} vs "
                                        f"{faiss_qps:,.0f} q/s"))
        return figures
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    main()
