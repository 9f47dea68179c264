"""Embedding speed and quality of every backend, side by side in one run.

    python bench/bench_embed.py                  # built-in sample (1000 products, 1642 images)
    python bench/bench_embed.py --data real      # the real Kaggle sample (82 / 110): noisier
    python bench/bench_embed.py --backends onnx openvino --sizes 224

For each backend (default: onnx fp32, the reference, and openvino bf16) and size
(224 and 180 px), in the same process, interleaved round by round:

(a) forward pictures/s: the model alone on pictures decoded beforehand, batch 64, in
    the dtype the backend asks for (``input_spec``: float32 for onnx, the float
    conversion outside the clock; uint8 for openvino). Target >= 800/s at 224 px.
(b) end-to-end pictures/s: ``embed_catalogue`` (BSON read, JPEG decode + resize on the
    thread pool, model, store writes) over the whole catalogue. Target >= 500/s.
(c) quality against fp32 at the same size: neighbours@10 overlap (share of each
    product's 10 nearest products, exact cosine, that the fp32 vectors also give;
    target >= 0.95) and category precision@10 (within 0.01 of fp32).
(d) decode cost: ms of CPU per picture for ``decode_image`` alone (one thread).

Then a projection: hours to embed all of train.bson (12,371,293 pictures) on one node
of this size at the best end-to-end rate. Each timing is the best of ``--rounds``: the
machine is shared, and other work only ever makes a run slower (the load average is
printed with every round).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a script from anywhere

from _report import row  # noqa: E402

from helpers.catalogue.protocol import ParquetCatalogue  # noqa: E402
from helpers.core.paths import CDISCOUNT_DIR, SAMPLE_BSON, SAMPLE_CATEGORIES  # noqa: E402
from helpers.ingest.jpeg import decode_image  # noqa: E402
from helpers.ingest.scan import build_catalogue, load_catalogue  # noqa: E402
from helpers.ingest.schema import usable_counts  # noqa: E402
from helpers.vectors import embed  # noqa: E402

TRAIN_PICTURES = 12_371_293
FORWARD_TARGET, PIPELINE_TARGET, OVERLAP_TARGET, P10_SLACK = 800.0, 500.0, 0.95, 0.01
REFERENCE = "onnx"


def pictures(bson_path: Path, size: int) -> np.ndarray:
    """Every picture of the file, decoded and resized to uint8 [N, size, size, 3]."""
    import bson

    out = []
    with open(bson_path, "rb") as f:
        for doc in bson.decode_file_iter(f):
            out.extend(decode_image(img["picture"], size) for img in doc["imgs"])
    return np.stack(out)


def decode_ms(bson_path: Path, size: int, n: int = 400) -> float:
    """CPU ms per picture of decode_image alone, one thread (best of 3)."""
    import bson

    data = []
    with open(bson_path, "rb") as f:
        for doc in bson.decode_file_iter(f):
            data.extend(img["picture"] for img in doc["imgs"])
            if len(data) >= n:
                break
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for d in data:
            decode_image(d, size)
        best = min(best, time.process_time() - t0)
    return 1e3 * best / len(data)


def forward_rate(extractor, u8: np.ndarray, batch: int) -> float:
    """Pictures/s of the model alone; float backends get float32 made outside the clock."""
    wants_u8 = extractor.input_spec.dtype == "uint8"
    total = 0.0
    for i in range(0, len(u8), batch):
        x = u8[i : i + batch]
        if not wants_u8:
            x = np.multiply(x, np.float32(1 / 255), dtype=np.float32)
        t0 = time.perf_counter()
        extractor(x)
        total += time.perf_counter() - t0
    return len(u8) / total


def neighbours(vectors: np.ndarray, k: int = 10) -> np.ndarray:
    """Each row's k nearest other rows by cosine (exact), as indices."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k, axis=1)[:, :k]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of neighbours two top-k lists have in common."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


def load(spec: str, batch: int):
    """``[model/]runtime[:precision]`` (model default mobilenet_v2) -> its extractor."""
    import helpers.models as hm

    name, _, precision = spec.partition(":")
    model, _, runtime = name.rpartition("/")
    return hm.load_extractor(model or "mobilenet_v2", runtime, precision or None,
                             batch_size=batch + 8)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["sample", "real"], default="sample")
    parser.add_argument("--backends", nargs="+", default=["onnx", "openvino"],
                        help="runtimes of helpers.models.RUNTIMES, as [model/]runtime"
                             "[:precision], e.g. openvino:int8, efficientnet_lite2/onnx")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 180])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-tf", action="store_true", help="(kept for python -m bench)")
    args = parser.parse_args(argv)
    if REFERENCE not in args.backends:
        args.backends.insert(0, REFERENCE)

    if args.data == "sample":
        bson_path, cats = SAMPLE_BSON, SAMPLE_CATEGORIES
    else:
        bson_path, cats = CDISCOUNT_DIR / "train_example.bson", CDISCOUNT_DIR / "category_names.csv"
    t_start = time.perf_counter()
    models = {b: load(b, args.batch) for b in args.backends}
    fwd: dict[tuple[str, int], float] = {}
    pipe: dict[tuple[str, int], float] = {}
    quality: dict[tuple[str, int], tuple[float, float]] = {}
    dec: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp_name:
        tmp = Path(tmp_name)
        build_catalogue(bson_path, tmp / "catalogue", cats, progress=False)
        df = load_catalogue(tmp / "catalogue")
        n = int(usable_counts(df).sum())
        names = ", ".join(f"{b} ({m.precision})" for b, m in models.items())
        print(f"data: {args.data} ({bson_path.name}): {len(df)} products, {n} pictures, "
              f"{df['category_id'].nunique()} categories; {os.cpu_count()} CPUs; batch "
              f"{args.batch}; backends {names}")
        for size in args.sizes:
            dec[size] = decode_ms(bson_path, size)
            u8 = pictures(bson_path, size)
            for m in models.values():  # warm-up: compilation, allocations
                forward_rate(m, u8[: args.batch], args.batch)
            for r in range(args.rounds):
                order = list(models) if r % 2 == 0 else list(models)[::-1]
                for b in order:
                    rate = forward_rate(models[b], u8, args.batch)
                    fwd[b, size] = max(fwd.get((b, size), 0.0), rate)
                    t0 = time.perf_counter()
                    embed.embed_catalogue(ParquetCatalogue(df), bson_path, models[b],
                                          tmp / f"{b}-{size}",
                                          image_size=size, batch_size=args.batch,
                                          resume=False, progress=False)
                    rate_p = n / (time.perf_counter() - t0)
                    pipe[b, size] = max(pipe.get((b, size), 0.0), rate_p)
                    print(f"  {size}px round {r + 1} {b:>14}: forward {rate:6.0f}/s, "
                          f"pipeline {rate_p:6.0f}/s, load {os.getloadavg()[0]:.1f}", flush=True)
            del u8
            cat_of = df.set_index("product_id")["category_id"]
            ref_nn = None
            for b in models:
                store = embed.VectorStore(tmp / f"{b}-{size}")
                cats_arr = cat_of.loc[store.product_ids].to_numpy()
                nn = neighbours(np.asarray(store.vectors))
                p10 = float((cats_arr[nn] == cats_arr[:, None]).mean())
                ref_nn = nn if b == REFERENCE else ref_nn
                quality[b, size] = (overlap(nn, ref_nn), p10)

    print(f"\nforward and end-to-end pictures/s (best of {args.rounds}), quality vs "
          f"{REFERENCE} fp32 at the same size; decode_image alone: "
          + ", ".join(f"{dec[s]:.2f} ms/picture at {s}" for s in args.sizes))
    print(f"{'backend':>16} {'size':>4} {'forward':>8} {'pipeline':>8} {'pipe/fwd':>8} "
          f"{'overlap@10':>10} {'P@10':>6}")
    for (b, size), rate in fwd.items():
        ov, p10 = quality[b, size]
        print(f"{b + ' ' + models[b].precision:>16} {size:>4} {rate:>8.0f} {pipe[b, size]:>8.0f} "
              f"{pipe[b, size] / rate:>8.2f} {ov:>10.3f} {p10:>6.3f}")
    best = max(pipe, key=pipe.get)
    hours = TRAIN_PICTURES / pipe[best] / 3600
    print(f"\nprojection: train.bson ({TRAIN_PICTURES:,} pictures) at {pipe[best]:.0f}/s "
          f"({best[0]}, {best[1]} px) = {hours:.1f} h on one {os.cpu_count()}-core node; "
          f"fp32 {REFERENCE} at {best[1]} px: "
          f"{TRAIN_PICTURES / pipe[REFERENCE, best[1]] / 3600:.1f} h")
    print(f"total {time.perf_counter() - t_start:.0f} s")

    rows = []
    for (b, size), rate in fwd.items():
        label = f"{b} {models[b].precision} {size} px, {args.data}"
        rows.append(row(f"forward pictures/s, {label}", rate,
                        FORWARD_TARGET if size == 224 else None, unit="pictures/s"))
        rows.append(row(f"end-to-end pictures/s, {label}", pipe[b, size], PIPELINE_TARGET,
                        unit="pictures/s"))
        if b != REFERENCE:
            ov, p10 = quality[b, size]
            ref_p10 = quality[REFERENCE, size][1]
            rows.append(row(f"neighbours@10 overlap with fp32, {label}", ov, OVERLAP_TARGET,
                            unit="share"))
            rows.append(row(f"P@10 change vs fp32, {label}", abs(p10 - ref_p10), P10_SLACK,
                            unit="abs", higher_is_better=False,
                            note=f"{p10:.3f} vs {ref_p10:.3f}"))
    rows.append(row(f"train.bson embedding time, one node ({best[0]}, {best[1]} px)", hours,
                    unit="h", higher_is_better=False))
    return rows


if __name__ == "__main__":
    main()
