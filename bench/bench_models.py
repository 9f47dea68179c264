"""Forward-pass throughput of the helpers.models extractors (every backend, style).

    python bench/bench_models.py                 # batch 32 at 224 and 180
    python bench/bench_models.py --sizes 180 --repeats 1 --backends onnx openvino style

Random pictures, given to each backend in the dtype its ``input_spec`` asks for.

One warm-up call per (model, size) excludes graph tracing / session setup; the
figure is the best of ``--repeats`` timed calls, in images per second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _report import row  # noqa: E402

import helpers.models as hm  # noqa: E402


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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 180])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--backends", nargs="+", default=["onnx", "openvino"],
        choices=[*hm.RUNTIMES, *(n for n in hm.NETS if n != "mobilenet_v2"), "style"],
        help="a runtime (MobileNetV2 on it), another network (on onnx), or style",
    )
    parser.add_argument("--style-input-size", type=int, default=None)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    results: dict[str, object] = {"cpus": os.cpu_count(), "batch": args.batch}
    models: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for backend in args.backends:
        t0 = time.perf_counter()
        if backend == "style":
            models[backend] = hm.load_style_extractor(input_size=args.style_input_size)
        else:
            model, runtime = (backend, "onnx") if backend in hm.NETS else ("mobilenet_v2",
                                                                            backend)
            models[backend] = hm.load_extractor(model, runtime, batch_size=args.batch)
        results[f"{backend}_load_s"] = round(time.perf_counter() - t0, 2)

    for size in args.sizes:
        u8 = rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
        batch = u8 * np.float32(1 / 255)
        for name, fn in models.items():
            spec = getattr(fn, "input_spec", None)
            x = u8 if spec is not None and spec.dtype == "uint8" else batch
            ips = images_per_second(fn, x, args.repeats)
            results[f"{name}_{size}_img_per_s"] = round(ips, 1)
        if "tf" in models and "onnx" in models:
            diff = np.abs(models["tf"](batch) - models["onnx"](batch)).max()
            results[f"tf_vs_onnx_{size}_max_abs_diff"] = float(diff)
    print(json.dumps(results, indent=2))
    return [row(f"forward images/s, {k.removesuffix('_img_per_s')}, batch {args.batch}", v,
                unit="images/s") for k, v in results.items() if k.endswith("_img_per_s")]


if __name__ == "__main__":
    main()
