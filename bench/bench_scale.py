"""Full train.bson at scale: partitioned scan, embedding per worker, compressed index.

    flock /tmp/vps-heavy.lock python bench/bench_scale.py              # all three parts
    python bench/bench_scale.py --only scan --size-gb 3 --keep
    python bench/bench_scale.py --only index --n-vectors 1001000 --train-size 160000
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
index: the `faiss_compressed` method at 1 M+ simulated MobileNetV2-like vectors (real
       spectrum, real category skew) in a sharded memory-mapped store: built from it,
       loaded in a fresh process, recall@10 vs exact 1280-d cosine, p99 of one query, a
       0.01 % category as the filter, resident memory projected to 12.4 M
       (bench/scale_index.py).
Then the projection of a full train.bson run (58 GB, 12,371,293 pictures) on 1 node and
on 8 nodes from the measured rates. Targets: <= 8 h on one 2-core node, <= 1 h on 8;
index <= 4 GB resident at 12.4 M, recall@10 >= 0.9 vs exact 1280-d, p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: no spinning threads

from _report import row  # noqa: E402
from scale_index import add_arguments, bench_index, index_rows  # noqa: E402
from simulate import DATA, make_bson  # noqa: E402

from helpers.catalogue.protocol import ParquetCatalogue  # noqa: E402
from helpers.core.paths import CDISCOUNT_DIR  # noqa: E402
from helpers.index.protocol import as_unit_vectors  # noqa: E402
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
            x = as_unit_vectors(np.asarray(v.vectors))
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


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="scan,embed,sizes,index")
    ap.add_argument("--size-gb", type=float, default=3.0, help="scan file size")
    ap.add_argument("--partition-mb", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--embed-gb", type=float, default=0.02, help="embedding file size")
    ap.add_argument("--embed-part-mb", type=int, default=4)
    ap.add_argument("--sizes", type=int, nargs="+", default=[180, 144, 128],
                    help="picture sizes compared by --only sizes")
    add_arguments(ap)  # the index part's: --n-vectors, --nlist, --pq, --knobs ...
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
            got |= bench_index(args, DATA)
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
        rows += index_rows(got)
    return rows


if __name__ == "__main__":
    main()
