"""Forward-pass throughput of the helpers.models extractors (TF vs ONNX, style).

    python bench/bench_models.py                 # batch 32 at 224 and 180
    python bench/bench_models.py --sizes 180 --repeats 1 --backends onnx style

One warm-up call per (model, size) excludes graph tracing / session setup; the
figure is the best of ``--repeats`` timed calls, in images per second.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np

import helpers.models as hm


def images_per_second(
    fn: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, repeats: int
) -> float:
    fn(batch)  # warm-up: tracing, allocation
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        best = min(best, time.perf_counter() - t0)
    return len(batch) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 180])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--backends", nargs="+", default=["tf", "onnx"], choices=["tf", "onnx", "style"]
    )
    parser.add_argument("--style-input-size", type=int, default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    results: dict[str, object] = {"cpus": os.cpu_count(), "batch": args.batch}
    models: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for backend in args.backends:
        t0 = time.perf_counter()
        if backend == "style":
            models[backend] = hm.load_style_extractor(input_size=args.style_input_size)
        else:
            models[backend] = hm.load_extractor(backend, batch_size=args.batch)
        results[f"{backend}_load_s"] = round(time.perf_counter() - t0, 2)

    for size in args.sizes:
        batch = rng.random((args.batch, size, size, 3), dtype=np.float32)
        for name, fn in models.items():
            ips = images_per_second(fn, batch, args.repeats)
            results[f"{name}_{size}_img_per_s"] = round(ips, 1)
        if "tf" in models and "onnx" in models:
            diff = np.abs(models["tf"](batch) - models["onnx"](batch)).max()
            results[f"tf_vs_onnx_{size}_max_abs_diff"] = float(diff)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
