"""Full train.bson at scale: partitioned scan, embedding per worker, compressed index.

    flock /tmp/vps-heavy.lock python bench/bench_scale.py              # all three parts
    python bench/bench_scale.py --only scan --size-gb 3 --keep
    python bench/bench_scale.py --only index --n-vectors 1000000
    python bench/bench_scale.py --only sizes --sizes 180 128

scan:  a multi-GB Cdiscount-format file of real documents with the real category skew
       (bench/simulate.py), catalogued by Dask (LocalCluster, one task per byte range)
       cold (file evicted from the page cache with posix_fadvise DONTNEED: only this
       file, not the colleagues' cache) and warm, beside a raw sequential read and the
       single-machine process pool.
embed: pictures/s of the ONNX MobileNetV2 pipeline at 180 px (native size) on real
       Cdiscount photos: in-process baseline, Dask 2 workers x 1 thread, 1 worker x 2 ORT
       threads; per worker and per node; worker memory.
sizes: pictures per CPU-second and precision@10 at smaller picture sizes.
annoy: the same vectors: PCA + Annoy built on disk, memory, recall, latency, 12.4 M
       projection (bench/scale_annoy.py).
index: simulated MobileNetV2-like vectors at 1 M+ (real spectrum, real category skew),
       a sharded memory-mapped store; PCA + IVF-PQ + SQ8 refine trained on a sample and
       added in chunks; recall@10 vs exact search on the same reduced vectors and on the
       full 1280-d ones; RAM measured by loading the index in a fresh process; bytes per
       vector extrapolated to 12.4 M.
Then the projection of a full train.bson run (58 GB, 12,371,293 pictures) on 1 node and
on 8 nodes from the measured rates. Targets: <= 8 h on one 2-core node, <= 1 h on 8;
index <= 4 GB at recall@10 >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: no spinning threads

from _report import row  # noqa: E402
from simulate import DATA, category_skew, imbalance, make_bson, make_vectors  # noqa: E402

from helpers.catalogue.protocol import ParquetCatalogue  # noqa: E402
from helpers.core.paths import CDISCOUNT_DIR  # noqa: E402
from helpers.index import compressed as bi  # noqa: E402
from helpers.ingest import scan as cat  # noqa: E402
from helpers.scale import distributed as dist  # noqa: E402

TRAIN_BYTES = 58.0e9  # Kaggle train.bson
TRAIN_PICTURES = 12_371_293
CATS = CDISCOUNT_DIR / "category_names.csv"


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def drop_cache(path: Path) -> None:
    """Evict one file from the page cache (as a 58 GB file always is)."""
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def raw_read(path: Path, cold: bool) -> float:
    if cold:
        drop_cache(path)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass
    return time.perf_counter() - t0


# ---------------------------------------------------------------- scan


def bench_scan(args: argparse.Namespace) -> dict:
    path = make_bson(DATA / "scale.bson", args.size_gb)
    mb = path.stat().st_size / 1e6
    rows, out = [], {}
    with dist.dask_client(workers=args.workers, report=print) as client, \
            tempfile.TemporaryDirectory(dir=DATA) as tmp:
        for cold in (True, False):
            raw_read(path, cold=False)  # same starting point: file cached, then maybe evicted
            raw = raw_read(path, cold)
            raw_read(path, cold=False)
            if cold:
                drop_cache(path)
            t0 = time.perf_counter()
            s = dist.build_catalogue(path, Path(tmp) / "dask", CATS, scheduler=client,
                                     partition_bytes=args.partition_mb << 20, force=True,
                                     progress=False, report=lambda _: None)
            dask_s = time.perf_counter() - t0
            if cold:
                drop_cache(path)
            t0 = time.perf_counter()
            cat.build_catalogue(path, Path(tmp) / "pool", CATS, workers=args.workers,
                                force=True, progress=False)
            pool_s = time.perf_counter() - t0
            tag = "cold" if cold else "warm"
            rows += [(f"raw sequential read ({tag})", raw, raw),
                     (f"catalogue, Dask {args.workers} workers ({tag})", dask_s, raw),
                     (f"catalogue, process pool {args.workers} ({tag})", pool_s, raw)]
            out[f"dask_{tag}_mbs"] = mb / dask_s
    print(f"\nfile {path.name}: {mb:,.0f} MB, {s.documents:,} products, {s.images_in:,} pictures,"
          f" {s.categories:,} categories (real documents, real category skew); load {load()}")
    print(f"{'pass':<44}{'MB/s':>8}{'products/s':>12}{'vs raw':>8}")
    for name, secs, raw in rows:
        print(f"{name:<44}{mb / secs:>8,.0f}{s.documents / secs:>12,.0f}{raw / secs:>7.2f}x")
    return out


# ---------------------------------------------------------------- embed


def bench_embed(args: argparse.Namespace) -> dict:
    from helpers.models import load_extractor
    from helpers.vectors.embed import embed_catalogue

    path = make_bson(DATA / "embed.bson", args.embed_gb, kaggle_only=True)
    rows, out = [], {}
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        tmp = Path(tmp)
        s = cat.build_catalogue(path, tmp / "cat", CATS, progress=False)
        pics = s.images_kept
        df = cat.load_catalogue(tmp / "cat")
        ex = load_extractor("mobilenet_v2", "onnx", intra_op_threads=2)
        t0, c0 = time.perf_counter(), _cpu()
        embed_catalogue(ParquetCatalogue(df), path, ex, tmp / "inproc", image_size=180,
                        level="image", progress=False)
        rows.append(("in-process, ORT 2 threads (no Dask)", time.perf_counter() - t0,
                     _cpu() - c0, 1))
        for workers, threads in ((2, 1), (1, 2)):
            with dist.dask_client(workers=workers, report=lambda _: None) as client:
                c0 = sum(client.run(_cpu).values())
                t0 = time.perf_counter()
                dist.embed_catalogue(tmp / "cat", path, dist.onnx_extractor(threads),
                                     tmp / f"d{workers}", image_size=180, level="image",
                                     scheduler=client, partition_bytes=args.embed_part_mb << 20,
                                     progress=False, report=lambda _: None)
                secs = time.perf_counter() - t0
                cpu = sum(client.run(_cpu).values()) - c0
                rss = max(client.run(_rss).values())
            rows.append((f"Dask {workers} worker(s) x ORT {threads} thread(s)", secs, cpu,
                         workers))
            # Per CPU-second: what a core gives when it is not shared (load-independent).
            out[f"cpu_{workers}x{threads}"] = pics / cpu
            out[f"rss_{workers}x{threads}"] = rss
    print(f"\n{pics:,} real Cdiscount pictures, MobileNetV2 ONNX at 180 px; load {load()}")
    print("wall: under the machine's load at the time; per CPU-second: pictures per second of"
          " CPU the pipeline got, i.e. per core when the core is not shared")
    print(f"{'pipeline':<40}{'pictures/s wall':>16}{'per worker':>11}{'per CPU-s':>10}")
    for name, secs, cpu, workers in rows:
        print(f"{name:<40}{pics / secs:>16,.0f}{pics / secs / workers:>11,.0f}"
              f"{pics / cpu:>10,.0f}")
    for k in ("2x1", "1x2"):
        print(f"worker peak memory, Dask {k}: {out[f'rss_{k}'] / 2**20:,.0f} MiB"
              f" (limit {dist.DEFAULT_MEMORY})")
    # A node of 2 unshared cores running 2 single-threaded workers.
    out["node_pics_s"] = 2 * out["cpu_2x1"]
    return out


def _rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu() -> float:
    """CPU seconds of this process and its threads so far."""
    t = os.times()
    return t.user + t.system


def bench_sizes(args: argparse.Namespace) -> dict:
    """Pictures per CPU-second and precision@10 by category at each picture size: what a
    smaller input buys when one node must embed 12.4 M pictures in 8 hours."""
    from helpers.core.paths import SAMPLE_BSON, SAMPLE_CATEGORIES
    from helpers.evaluate.metrics import precision_at_k
    from helpers.models import load_extractor
    from helpers.vectors.embed import embed_catalogue

    path = make_bson(DATA / "embed.bson", args.embed_gb, kaggle_only=True)
    # one core, as a Dask worker has
    ex = load_extractor("mobilenet_v2", "onnx", intra_op_threads=1)
    out, rows = {}, []
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        tmp = Path(tmp)
        cat.build_catalogue(path, tmp / "cat", CATS, progress=False)
        cat.build_catalogue(SAMPLE_BSON, tmp / "sample", SAMPLE_CATEGORIES, progress=False)
        df, sample = cat.load_catalogue(tmp / "cat"), cat.load_catalogue(tmp / "sample")
        for size in args.sizes:
            c0 = _cpu()
            st = embed_catalogue(ParquetCatalogue(df), path, ex, tmp / f"e{size}", image_size=size,
                                 level="image", decode_threads=1, progress=False)
            rate = len(st) / (_cpu() - c0)
            v = embed_catalogue(ParquetCatalogue(sample), SAMPLE_BSON, ex, tmp / f"s{size}",
                                image_size=size, progress=False)
            x = bi.unit(np.asarray(v.vectors))
            cats = cat.categories_of(sample, v.product_ids)
            nn = np.argsort(-(x @ x.T), axis=1)[:, 1:11]
            prec = precision_at_k(cats[nn], cats, 10)
            rows.append((size, rate, prec))
            out[f"cpu_rate_{size}"] = rate
            out[f"precision_{size}"] = prec
    print(f"\npicture size vs speed (real Cdiscount photos, 1 ORT thread) and precision@10 by "
          f"category (built-in sample, product vectors); load {load()}")
    print(f"{'px':>5}{'pictures/CPU-s':>16}{'precision@10':>14}{'1-node hours':>14}")
    for size, rate, prec in rows:
        print(f"{size:>5}{rate:>16,.0f}{prec:>14.3f}{TRAIN_PICTURES / (2 * rate) / 3600:>14.1f}")
    return out


# ---------------------------------------------------------------- index


def _exact(chunks, queries: np.ndarray, k: int, transform=None) -> np.ndarray:
    """Exact k nearest (L2) of ``queries`` over row chunks, one chunk in RAM at a time."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=False)
    for start, block in chunks:
        x = bi.unit(block) if transform is None else transform(block)
        flat = faiss.IndexFlatL2(x.shape[1])
        flat.add(x)
        d, i = flat.search(queries, k)
        heap.add_result(d, np.where(i < 0, -1, i + start))
    heap.finalize()
    return heap.I


def _recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b, strict=True)]))


def _loaded_rss(path: Path, table: bool) -> int:
    """RSS growth of a fresh process loading the index. table=False: IVFPQ's precomputed
    L2 table (nlist x M x 256 floats, built at load) is not made (slightly slower search)."""
    code = ("import faiss,sys\n"
            f"faiss.cvar.precomputed_table_max_bytes = {2**31 if table else 0}\n"
            "r=lambda: int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0]"
            ".split()[1])*1024\n"
            "a=r(); i=faiss.read_index(sys.argv[1]); print(r()-a)")
    return int(subprocess.check_output([sys.executable, "-c", code, str(path)]).strip())


def _simulated(args: argparse.Namespace) -> tuple:
    """The simulated store (made once), its categories, the held-out unit queries and
    their exact 1280-d top 10 (cached): shared by the index and annoy parts."""
    n, nq, k = args.n_vectors, args.queries, 10
    folder = DATA / f"vectors-{n + nq}"
    t0 = time.perf_counter()
    if (folder / "shards.json").exists():
        from helpers.vectors.sharded import ShardedVectorStore

        store, cats = ShardedVectorStore(folder), np.load(folder / "categories.npy")
    else:
        store, cats = make_vectors(n + nq, folder, within=args.within)
    print(f"\n{store} in {time.perf_counter() - t0:.0f} s; queries: the last {nq} rows "
          f"(held out); {store.vectors.nbytes / 1e9:.1f} GB memory-mapped")
    m = store.vectors
    queries = bi.unit(m[n : n + nq])
    db_chunks = lambda: ((s, b) for s, b in m.chunks(65536) if s < n)  # noqa: E731
    db_chunks_cut = lambda: ((s, b[: n - s]) for s, b in db_chunks())  # noqa: E731
    t0 = time.perf_counter()
    cached = folder / f"truth-{n}-{nq}.npy"
    truth_full = np.load(cached) if cached.exists() else _exact(db_chunks_cut(), queries, k)
    np.save(cached, truth_full)
    print(f"exact 1280-d ground truth: {time.perf_counter() - t0:.0f} s")
    return folder, store, cats, queries, truth_full, db_chunks_cut


def bench_index(args: argparse.Namespace) -> dict:
    import faiss

    n, nq, k = args.n_vectors, args.queries, 10
    folder, store, cats, queries, truth_full, db_chunks_cut = _simulated(args)
    m = store.vectors
    sizes = np.bincount(np.unique(cats[:n], return_inverse=True)[1])
    real = category_skew()["images"].to_numpy()
    print(f"category imbalance factor: simulated {imbalance(sizes):.1f}, "
          f"real train.bson {imbalance(real):.1f}")
    results, out = [], {}
    for dim in args.dims:
        nlist = args.nlist
        index = bi.compressed_index(dim=dim, nlist=nlist, pq=args.pq)
        t0 = time.perf_counter()
        bi.train(index, m, train_size=min(n, 39 * nlist), limit=n)
        train_s = time.perf_counter() - t0
        empty = bi.nbytes(index)
        t0 = time.perf_counter()
        bi.add_chunks(index, m, store.item_ids, limit=n)
        add_s = time.perf_counter() - t0
        size = bi.nbytes(index)
        path = DATA / f"index-{dim}.faiss"
        faiss.write_index(index, str(path))
        rss, rss_table = _loaded_rss(path, table=False), _loaded_rss(path, table=True)
        path.unlink()
        table = nlist * 256 * 4 * args.pq  # IVFPQ's precomputed L2 table, if enabled
        truth_red = _exact(db_chunks_cut(), bi.reduce(index, queries), k,
                           transform=lambda b, ix=index: bi.reduce(ix, b))
        per_vec = (size - empty) / n
        at_12m = empty + per_vec * TRAIN_PICTURES  # same nlist: ~3,000 vectors a list
        lost = _recall(truth_red, truth_full)
        print(f"\nPCA{dim},IVF{nlist},PQ{args.pq},Refine(SQ8): train {train_s:.0f} s "
              f"({min(n, 39 * nlist):,} vectors), add {add_s:.0f} s in 64k-row chunks; "
              f"list imbalance {bi.list_imbalance(index):.2f}")
        print(f"  size {size / 2**20:,.0f} MiB serialized; RSS of a fresh process loading it "
              f"{rss / 2**20:,.0f} MiB (precomputed table off), {rss_table / 2**20:,.0f} MiB "
              f"(on: +{table / 2**20:,.0f} MiB, nlist x {args.pq} x 256 floats)")
        print(f"  {per_vec:.0f} B/vector -> {at_12m / 1e9:.2f} GB at 12.4 M "
              f"({at_12m / 2**30:.2f} GiB), table off")
        print(f"  exact on the {dim}-d vectors vs exact 1280-d: recall@10 {lost:.3f}")
        print(f"  {'nprobe':>7}{'k_factor':>9}{'r@10 vs exact-' + str(dim):>18}"
              f"{'r@10 vs 1280-d':>16}{'QPS':>8}")
        for nprobe, kf in args.knobs:
            bi.search(index, queries[:50], k, nprobe, kf)  # warm
            t0 = time.perf_counter()
            _, ids = bi.search(index, queries, k, nprobe, kf)
            qps = nq / (time.perf_counter() - t0)
            r_red, r_full = _recall(ids, truth_red), _recall(ids, truth_full)
            print(f"  {nprobe:>7}{kf:>9}{r_red:>18.3f}{r_full:>16.3f}{qps:>8,.0f}")
            results.append((dim, nprobe, kf, r_red, r_full, qps, at_12m, rss))
        del index
    ok = [r for r in results if r[3] >= 0.9 and r[6] <= 4e9]
    best = max(ok, key=lambda r: r[5]) if ok else max(results, key=lambda r: r[3])
    out["index"] = best
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="scan,embed,sizes,index,annoy")
    ap.add_argument("--size-gb", type=float, default=3.0, help="scan file size")
    ap.add_argument("--partition-mb", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--embed-gb", type=float, default=0.02, help="embedding file size")
    ap.add_argument("--embed-part-mb", type=int, default=4)
    ap.add_argument("--sizes", type=int, nargs="+", default=[180, 144, 128],
                    help="picture sizes compared by --only sizes")
    ap.add_argument("--n-vectors", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--within", type=float, default=0.6,
                    help="share of variance inside a category (real sample 0.50, built-in 0.72)")
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--pq", type=int, default=32)
    ap.add_argument("--knobs", type=lambda t: [tuple(map(int, x.split(":"))) for x in t.split(",")],
                    default="32:16,64:32,128:32,128:64,256:64,512:128",
                    help="nprobe:k_factor pairs searched")
    ap.add_argument("--annoy-dims", type=int, nargs="+", default=[128, 256],
                    help="PCA dimensions of the on-disk Annoy builds (--only annoy)")
    ap.add_argument("--annoy-trees", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the multi-GB files")
    args = ap.parse_args(argv)
    parts = args.only.split(",")
    print(f"load average at start: {load()} ({os.cpu_count()} cores, shared)")
    got: dict = {}
    try:
        if "scan" in parts:
            got |= bench_scan(args)
        if "embed" in parts:
            got |= bench_embed(args)
        if "sizes" in parts:
            got |= bench_sizes(args)
        if "index" in parts:
            got |= bench_index(args)
        if "annoy" in parts:
            from scale_annoy import bench_annoy

            folder, _, _, queries, truth, _ = _simulated(args)
            got |= bench_annoy(args, folder, args.n_vectors, queries, truth, _exact, load)
    finally:
        if not args.keep:
            for p in [DATA / "scale.bson", *DATA.glob("vectors-*")]:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    print(f"\nload average at end: {load()}")
    rows = []
    if "dask_cold_mbs" in got:
        rows.append(row(f"Dask catalogue scan, {args.size_gb:g} GB real documents, "
                        f"{args.workers} workers, cold", got["dask_cold_mbs"], unit="MB/s"))
    if "cpu_2x1" in got:
        rows.append(row("MobileNetV2 ONNX 180 px, pictures per CPU-second of a 1-thread "
                        "Dask worker", got["cpu_2x1"], unit="pictures/s"))
    if "dask_cold_mbs" in got and "node_pics_s" in got:
        scan_h = TRAIN_BYTES / 1e6 / got["dask_cold_mbs"] / 3600
        embed_h = TRAIN_PICTURES / got["node_pics_s"] / 3600
        one = scan_h + embed_h
        print(f"projection, full train.bson (58 GB, {TRAIN_PICTURES:,} pictures):")
        print(f"  scan {scan_h:.2f} h at {got['dask_cold_mbs']:,.0f} MB/s cold + embed "
              f"{embed_h:.2f} h at {got['node_pics_s']:,.0f} pictures/s a node (2 unshared"
              " cores x measured pictures per CPU-second of a 1-thread worker)")
        rows += [row("full train.bson on 1 node of 2 cores (projected)", one, 8, unit="h",
                     higher_is_better=False),
                 row("full train.bson on 8 nodes (projected)", one / 8, 1, unit="h",
                     higher_is_better=False)]
        print(f"  1 node:  {one:.2f} h   target <= 8 h: {'met' if one <= 8 else 'short'}")
        print(f"  8 nodes: {one / 8:.2f} h   target <= 1 h: {'met' if one / 8 <= 1 else 'short'}"
              " (each node reads its own ranges: storage must give 8x the bandwidth)")
    for size in args.sizes if "sizes" in parts else []:
        hours = TRAIN_PICTURES / (2 * got[f"cpu_rate_{size}"]) / 3600
        note = f"precision@10 {got[f'precision_{size}']:.3f} on the built-in sample"
        rows += [row(f"full train.bson embedding at {size} px, 1 node of 2 cores (projected)",
                     hours, 8, unit="h", higher_is_better=False, note=note),
                 row(f"full train.bson embedding at {size} px, 8 nodes (projected)",
                     hours / 8, 1, unit="h", higher_is_better=False, note=note)]
    if "index" in got:
        dim, nprobe, kf, r_red, r_full, qps, at_12m, rss = got["index"]
        ok = r_red >= 0.9 and at_12m <= 4e9
        print(f"index: PCA{dim} nprobe {nprobe} k_factor {kf}: recall@10 {r_red:.3f} vs exact "
              f"on reduced vectors, {r_full:.3f} vs 1280-d; {at_12m / 1e9:.2f} GB at 12.4 M: "
              f"target <= 4 GB at >= 0.9: {'met' if ok else 'short'}")
        n = f"{args.n_vectors / 1e6:g}M simulated, PCA{dim} nprobe {nprobe} k_factor {kf}"
        rows += [row(f"compressed index recall@10 vs exact on reduced vectors, {n}", r_red,
                     0.9, unit=""),
                 row(f"compressed index size at 12.4 M vectors, {n}", at_12m / 1e9, 4,
                     unit="GB", higher_is_better=False),
                 row(f"compressed index recall@10 vs exact 1280-d, {n}", r_full, unit="")]
    for dim, a in got.get("annoy", {}).items():
        search_k, r_full, r_red, p99 = a["best"]
        n = f"{args.n_vectors / 1e6:g}M simulated, PCA{dim}, {args.annoy_trees} trees, " \
            f"search_k {search_k}"
        print(f"annoy: {n}: recall@10 {r_red:.3f} vs exact on reduced vectors, {r_full:.3f} "
              f"vs 1280-d, p99 {p99:.2f} ms; {a['at_12m'] / 1e9:.2f} GB file at 12.4 M")
        rows += [row(f"Annoy recall@10 vs exact 1280-d, {n}", r_full, unit=""),
                 row(f"Annoy p99 latency, one query, {n}", p99, unit="ms",
                     higher_is_better=False),
                 row(f"Annoy on-disk build peak anonymous memory, {n}", a["peak_anon"] / 2**30,
                     unit="GiB", higher_is_better=False),
                 row(f"Annoy index file at 12.4 M vectors (annoy_footprint), {n}",
                     a["at_12m"] / 1e9, unit="GB", higher_is_better=False)]
    return rows


if __name__ == "__main__":
    main()
