"""Near-duplicate detection on a labelled set of real catalogue photos: MobileNetV2 cosine
clusters (helpers.index.duplicates) beside the pHash peer (imagehash, as imagededup uses),
on the same set, in one run.

    python bench/bench_duplicates.py                  # both samples
    python bench/bench_duplicates.py --threshold 0.9 --phash-distance 10

Each sample gives originals (a product's first picture), six edited copies of each added as
new products (crop up to 15 %, rescale, JPEG quality 50, colour shift, mirror, text
overlay) and other products of the same categories as hard negatives
(helpers.evaluate.dupset). Every picture is embedded by the real ONNX MobileNetV2 at 224 px.
Both detectors join the pairs they accept into clusters and are scored as pairs (precision,
recall, F1). Targets: F1 >= 0.95 on the built-in sample's set; F1 above pHash's on both.
The sweep lines show the other thresholds, for reading, not for choosing on this set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a script from anywhere

from _report import row  # noqa: E402

from helpers.core.cpu import cpu_info  # noqa: E402
from helpers.core.paths import CDISCOUNT_DIR, SAMPLE_BSON  # noqa: E402
from helpers.evaluate import dupset  # noqa: E402
from helpers.index.duplicates import NEAR_DUP_THRESHOLD  # noqa: E402

SAMPLES = {  # name: (BSON, labelled-set options)
    "built-in": (SAMPLE_BSON, {"originals_per_category": 10, "negatives_per_category": 20}),
    # 82 products in 36 categories: one original a category, the others negatives
    "cdiscount": (CDISCOUNT_DIR / "train_example.bson",
                  {"originals_per_category": 1, "negatives_per_category": 3}),
}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=NEAR_DUP_THRESHOLD)
    ap.add_argument("--phash-distance", type=int, default=dupset.PHASH_DISTANCE)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from helpers.models import load_extractor

    extractor = load_extractor("mobilenet_v2", "onnx")
    cpu = cpu_info()
    print(f"CPU: {cpu}")
    rows, f1 = [], {}
    for name, (bson_path, options) in SAMPLES.items():
        if not bson_path.exists():
            print(f"{name}: {bson_path} not found, skipped")
            rows.append(row(f"near-dup F1, MobileNetV2 vs pHash, {name}", float("nan"),
                            note=f"{bson_path} not found"))
            continue
        ds = dupset.labelled_set(bson_path, seed=args.seed, **options)
        t0 = time.perf_counter()
        vectors = dupset.embed_pictures(ds.pictures, extractor, args.image_size)
        embed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        hashes = dupset.phashes(ds.pictures)
        hash_s = time.perf_counter() - t0
        cnn = dupset.score_vectors(vectors, ds.truth, args.threshold)
        ph = dupset.score_phash(hashes, ds.truth, args.phash_distance)
        print(f"\n{name}: {len(ds)} pictures ({ds.describe()}); "
              f"{cnn['pairs_true']} true pairs")
        print(f"{'detector':<36}{'precision':>10}{'recall':>8}{'F1':>7}{'pairs found':>13}")
        for label, s in ((f"MobileNetV2 cosine >= {args.threshold}", cnn),
                         (f"pHash <= {args.phash_distance} bits (imagededup)", ph)):
            print(f"{label:<36}{s['precision']:>10.3f}{s['recall']:>8.3f}{s['f1']:>7.3f}"
                  f"{s['pairs_found']:>13,}")
        print(f"speed ({cpu.model}; flags {' '.join(sorted(cpu.flags)) or 'unknown'}): "
              f"embedding {len(ds) / embed_s:,.0f} pictures/s, pHash {len(ds) / hash_s:,.0f}"
              f" pictures/s")
        sweep = "  ".join(f"{t:.2f}: {dupset.score_vectors(vectors, ds.truth, t)['f1']:.3f}"
                          for t in (0.85, 0.9, 0.92, 0.95, 0.97))
        print(f"sweep, F1 by cosine threshold: {sweep}")
        sweep = "  ".join(f"{d}: {dupset.score_phash(hashes, ds.truth, d)['f1']:.3f}"
                          for d in (4, 6, 8, 10, 12))
        print(f"sweep, pHash F1 by distance: {sweep}")
        f1[name] = (cnn["f1"], ph["f1"])
        target = 0.95 if name == "built-in" else None
        rows.append(row(f"near-dup F1, MobileNetV2 cosine >= {args.threshold}, {name} "
                        f"labelled set ({len(ds)} pictures)", cnn["f1"], target, unit="",
                        note=f"P {cnn['precision']:.3f}, R {cnn['recall']:.3f}"))
        rows.append(row(f"near-dup F1, MobileNetV2 vs pHash <= {args.phash_distance} bits, "
                        f"{name}", cnn["f1"] - ph["f1"], 0.0, unit="",
                        note=f"difference of F1; pHash F1 {ph['f1']:.3f}"))
    return rows


if __name__ == "__main__":
    main()
