"""Make the built-in Cdiscount-format sample from Fashion-MNIST (Debian: dataset-fashion-mnist).

    python scripts/make_sample.py           # helpers/sample_data/ (committed, 1,000 products)
    python scripts/make_sample.py --full --out bench/data   # all 70,000 photos, for benchmarks
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from helpers.core.paths import SAMPLE_DIR
from helpers.ingest.sample import make_sample
from helpers.ingest.scan import build_catalogue

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=SAMPLE_DIR)
    ap.add_argument("--per-category", type=int, default=100, help="products per category")
    ap.add_argument("--full", action="store_true", help="all 70,000 photos (about 300 MB)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    name = "fashion_full" if args.full else "fashion_sample"
    per = None if args.full else args.per_category
    bson_path, csv_path = make_sample(args.out, per_category=per, seed=args.seed, name=name)
    # Read the file back before anyone relies on it.
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_catalogue(bson_path, tmp, csv_path, progress=False)
    print(f"wrote {bson_path} ({bson_path.stat().st_size / 1e6:.1f} MB) and {csv_path}")
    print(summary)
