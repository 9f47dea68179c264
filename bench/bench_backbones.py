"""Second backbone and best-match product scoring: EfficientNet-Lite2 beside MobileNetV2.

    python bench/bench_backbones.py                 # built-in sample and, if present, the real one
    python bench/bench_backbones.py --sizes 224 180

Every picture of a catalogue is embedded by each backbone (ONNX fp32) at each size
(EfficientNet-Lite2 also at its native 260); quality is measured with exact cosine
search, with the metrics of ``bench_quality.py``:

* category precision@10, product level, itself excluded, with two product scorings:
  ``mean``: a product is the mean of its pictures' unit vectors (what
  ``embed_catalogue`` stores); ``best match``: two products score the best cosine
  between any picture of one and any picture of the other;
* same-product hit@1 / hit@5, picture level (another picture of the same product
  first / in the first 5, itself excluded): the product scoring does not change it.

``+pcaw512``: PCA-whitening learned on the catalogue's own vectors (bench_quality).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _report import row  # noqa: E402
from bench_quality import catalogue_pictures, pca_whiten, scores, unit  # noqa: E402

from helpers.core.paths import CDISCOUNT_DIR, SAMPLE_BSON  # noqa: E402

BACKBONES = {"mobilenet_v2": "mobilenet_v2", "effnet_lite2": "efficientnet_lite2"}  # -> NETS


def best_match_p10(v: np.ndarray, pids: np.ndarray, cats: np.ndarray, k: int = 10) -> float:
    """Category P@k, products scored by their best-matching pair of pictures."""
    u = unit(v)
    order = np.argsort(pids, kind="stable")
    u, pids, cats = u[order], pids[order], cats[order]
    starts = np.flatnonzero(np.r_[True, pids[1:] != pids[:-1]])
    sims = u @ u.T
    prod = np.maximum.reduceat(np.maximum.reduceat(sims, starts, axis=0), starts, axis=1)
    np.fill_diagonal(prod, -np.inf)
    top = np.argpartition(-prod, k, axis=1)[:, :k]
    prod_cats = cats[starts]
    return float((prod_cats[top] == prod_cats[:, None]).mean())


def embed(extractor, u8: np.ndarray, batch: int = 64) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = np.concatenate([extractor(u8[i : i + batch]) for i in range(0, len(u8), batch)])
    return out, len(u8) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 180])
    parser.add_argument("--data", nargs="+", default=["sample", "real"])
    args = parser.parse_args(argv)
    import helpers.models as hm

    datasets = {"sample": SAMPLE_BSON, "real": CDISCOUNT_DIR / "train_example.bson"}
    datasets = {k: v for k, v in datasets.items() if k in args.data and v.exists()}
    extractors = {name: hm.load_extractor(model, "onnx", intra_op_threads=2)
                  for name, model in BACKBONES.items()}
    runs = [(name, size) for size in args.sizes for name in BACKBONES]
    runs.insert(0, ("effnet_lite2", 260))  # its native size
    rows, table = [], {}
    for data, path in datasets.items():
        pictures = {}
        for name, size in runs:
            if size not in pictures:
                pictures[size] = catalogue_pictures(path, size)
            u8, pids, cats = pictures[size]
            v, rate = embed(extractors[name], u8)
            for whiten in (False, True):
                w = pca_whiten(v, 512) if whiten else v
                label = f"{name} {size}px" + (" +pcaw512" if whiten else "")
                s = scores(w, pids, cats)
                table[data, f"{label}, mean"] = s
                table[data, f"{label}, best match"] = {
                    **s, "p10": best_match_p10(w, pids, cats)}
            print(f"{data}: {name} {size}px: {len(u8)} pictures, {rate:.0f} pictures/s, "
                  f"{s['queries']} with a sibling", flush=True)
    names = list(dict.fromkeys(n for _, n in table))
    width = max(len(n) for n in names)
    print(f"\n{'variant (product scoring)':>{width}} "
          + " ".join(f"{d + ' P@10':>12} {'hit@1':>6} {'hit@5':>6}" for d in datasets))
    for n in names:
        cells = [f"{table[d, n]['p10']:>12.3f} {table[d, n]['hit1']:>6.3f} "
                 f"{table[d, n]['hit5']:>6.3f}" for d in datasets]
        print(f"{n:>{width}} " + " ".join(cells))
    for (d, n), s in table.items():
        for metric in ("p10", "hit1", "hit5"):
            rows.append(row(f"{metric}, {n}, {d}", s[metric], unit="share"))
    return rows


if __name__ == "__main__":
    main()
