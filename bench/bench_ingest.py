"""Ingest throughput: catalogue + offsets vs a raw sequential read of the same file.

    python bench/bench_ingest.py                 # makes bench/data/big.bson (>= 1 GB) once
    python bench/bench_ingest.py --size-gb 2

The large file replicates the real Cdiscount sample's documents with new ids
(real JPEGs, real document sizes). Both timings read the file from the page
cache (the raw read runs first and warms it), so the ratio compares parsing
cost with pure I/O. Target: catalogue >= 0.5x raw read. The exact-duplicate hash (XXH3 of
every picture's bytes, taken by the scan) is costed side by side: one process, warm cache,
the pass as it is against the same pass with the hash replaced by a constant.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import bson

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a script from anywhere

from _report import row  # noqa: E402

from helpers.core.cpu import cpu_info  # noqa: E402
from helpers.core.paths import CDISCOUNT_DIR  # noqa: E402
from helpers.ingest import products  # noqa: E402
from helpers.ingest.bson_store import iter_records  # noqa: E402
from helpers.ingest.scan import build_catalogue  # noqa: E402


def make_big(src: Path, dst: Path, size_gb: float) -> Path:
    if dst.exists() and dst.stat().st_size >= size_gb * 1e9:
        return dst
    docs = [r.doc for r in iter_records(src)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    written, next_id = 0, 10_000_000
    with open(tmp, "wb") as f:
        while written < size_gb * 1e9:
            for d in docs:
                raw = bson.encode({**d, "_id": next_id})
                f.write(raw)
                written += len(raw)
                next_id += 1
    tmp.replace(dst)
    return dst


def drop_cache(path: Path) -> None:
    """Evict the file from the page cache, as when it is far larger than RAM (58 GB)."""
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def raw_read(path: Path, chunk: int = 8 << 20, cold: bool = False) -> float:
    if cold:
        drop_cache(path)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(chunk):
            pass
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--source", type=Path, default=CDISCOUNT_DIR / "train_example.bson")
    ap.add_argument("--file", type=Path, default=HERE / "data" / "big.bson")
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="catalogue processes (default: all cores)")
    args = ap.parse_args(argv)
    path = make_big(args.source, args.file, args.size_gb)
    size, mb = path.stat().st_size, path.stat().st_size / 1e6
    cats = CDISCOUNT_DIR / "category_names.csv"

    def catalogue(cold: bool, **kw) -> tuple[float, object]:
        kw.setdefault("workers", args.workers)
        if cold:
            drop_cache(path)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            s = build_catalogue(path, tmp, cats, progress=False, **kw)
            return time.perf_counter() - t0, s

    rows = []
    for cold in (True, False):
        raw_read(path)  # warm (or re-warm) the page cache
        raw = min(raw_read(path, cold=cold) for _ in range(2))
        cat_s, s = min((catalogue(cold) for _ in range(2)), key=lambda r: r[0])
        rows.append((cold, raw, cat_s))
    # Full JPEG decode of every picture, on a 50 MB slice (CPU-bound, far slower).
    n_slice = int(50e6 / (size / s.documents))
    dec_s, _ = catalogue(False, limit=n_slice, verify_images="decode", workers=1)
    dec_mb = n_slice * size / s.documents / 1e6

    print(f"file: {path} ({mb:,.0f} MB, {s.documents:,} products, {s.images_kept:,} images; "
          "real Cdiscount documents replicated with new ids)")
    print("cold: file evicted from the page cache first (train.bson, 58 GB, never fits in RAM);"
          " warm: file cached")
    print(f"{'pass':<44}{'MB/s':>9}{'products/s':>12}{'vs raw':>9}")
    for cold, raw, cat_s in rows:
        tag = "cold" if cold else "warm"
        print(f"{'raw sequential read, 8 MB chunks (' + tag + ')':<44}{mb / raw:>9,.0f}"
              f"{s.documents / raw:>12,.0f}{1.0:>8.2f}x")
        print(f"{f'catalogue + offsets, {args.workers} workers ({tag})':<44}{mb / cat_s:>9,.0f}"
              f"{s.documents / cat_s:>12,.0f}{raw / cat_s:>8.2f}x")
    warm_raw = rows[1][1]
    print(f"{'catalogue, every JPEG decoded, 1 worker':<44}{dec_mb / dec_s:>9,.0f}"
          f"{n_slice / dec_s:>12,.0f}{(dec_mb / dec_s) / (mb / warm_raw):>8.2f}x")
    figures = []
    for cold, raw, cat_s in rows:
        ratio = raw / cat_s
        tag = "cold" if cold else "warm"
        print(f"target catalogue >= 0.5x raw read ({tag}): "
              f"{'met' if ratio >= 0.5 else 'short'} ({ratio:.2f}x)")
        figures.append(row(f"catalogue + offsets vs raw read, {mb / 1e3:.1f} GB, {tag} cache, "
                           f"{args.workers} workers", ratio, 0.5))
    # The picture hashes' cost: the same one-process warm pass with and without them.
    hashed = min(catalogue(False, workers=1)[0] for _ in range(3))
    real_hash = products.xxh3_64_intdigest
    products.xxh3_64_intdigest = lambda _: 1  # the loop's global, read at each call
    try:
        plain = min(catalogue(False, workers=1)[0] for _ in range(3))
    finally:
        products.xxh3_64_intdigest = real_hash
    cost = hashed / plain
    print(f"picture hashes (XXH3, exact duplicates), 1 worker, warm: {mb / hashed:,.0f} MB/s "
          f"with, {mb / plain:,.0f} MB/s without: {cost:.3f}x the time; CPU {cpu_info()}")
    figures.append(row(f"catalogue pass with vs without picture hashes (time), "
                       f"{mb / 1e3:.1f} GB, warm, 1 worker", cost, 1.1, higher_is_better=False,
                       note=f"CPU {cpu_info()}"))
    return figures


if __name__ == "__main__":
    main()
