"""Embedding throughput and quality: pipeline vs forward pass, TF vs ONNX, 180 vs 224, style.

    python bench/bench_embed.py                  # built-in sample (1000 products, 1642 images)
    python bench/bench_embed.py --data real      # the real Kaggle sample (82 / 110): noisier
    python bench/bench_embed.py --no-tf          # skip the TensorFlow parts (b, d)

(a) images/s of ``embed_catalogue`` end to end (BSON read, decode + resize on the
    thread pool, model, store writes) vs the ONNX forward pass alone over the same
    batches already decoded in memory. Target: pipeline >= 0.9x forward.
(b) TF vs ONNX forward images/s on the same decoded pictures; TF runs in a separate
    process so its idle threads (which keep spinning) cannot slow ONNX, and vice versa.
(c) 180 vs 224 px: pipeline images/s and precision@10 (share of a product's 10
    nearest products by cosine, exact search, itself excluded, in its category).
(d) the VGG16 style extractor's images/s (in the TF process).

Each timing is the best of ``--rounds`` (forward and pipeline rounds interleaved):
the machine is shared, and other work only ever makes a run slower. Batch 64
(``embed_catalogue``'s default) everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from helpers.images import to_float

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere

from helpers import embed  # noqa: E402
from helpers.catalogue import build_catalogue, load_catalogue  # noqa: E402
from helpers.paths import CDISCOUNT_DIR, SAMPLE_BSON, SAMPLE_CATEGORIES  # noqa: E402

TARGET = 0.9
TF_IMAGES = 256  # pictures the TF process embeds (4 batches of 64)
STYLE_IMAGES = 64


def decoded_batches(df, bson_path: Path, size: int, batch: int) -> list[np.ndarray]:
    """The pipeline's own batches, kept as uint8 (1642 x 224^2 x 3 floats would be 1 GB)."""
    buffers = embed._BufferPool(2, (batch + 8, size, size, 3))
    out = []
    with ThreadPoolExecutor(2) as pool:
        for b in embed._batches(df, bson_path, 0, size, batch, pool, buffers):
            out.append(np.rint(b.pixels * 255).astype(np.uint8))
            buffers.put(b.buffer)
    return out


def cpu_seconds() -> float:
    """CPU time of this process, all threads (onnxruntime's, the decoders')."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def forward_seconds(extractor, batches: list[np.ndarray]) -> float:
    """The model alone: the uint8 -> float conversion is done outside the clock."""
    total = 0.0
    for u8 in batches:
        x = to_float(u8)
        t0 = time.perf_counter()
        extractor(x)
        total += time.perf_counter() - t0
    return total


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn()``."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_seconds() - c0


def chunks(df, images_per_chunk: int) -> list:
    """Catalogue slices of about ``images_per_chunk`` images (whole products)."""
    cut = np.cumsum(df["n_images"].to_numpy()) // images_per_chunk
    return [df[cut == c].reset_index(drop=True) for c in np.unique(cut)]


def compare(extractor, df, bson_path: Path, size: int, args, tmp: Path) -> dict:
    """Forward alone and pipeline, paired chunk by chunk, alternating which goes first.

    Short pairs see nearly the same load from the machine's other users, so the
    median of the per-pair ratios is far steadier than a ratio of two long runs.
    """
    parts = chunks(df, args.chunk)
    decoded = [decoded_batches(part, bson_path, size, args.batch) for part in parts]
    extractor(to_float(decoded[0][0]))  # warm-up: onnxruntime allocations
    n = int(df["n_images"].sum())
    fwd_wall, pipe_wall, ratios = [], [], []
    fwd_cpu = pipe_cpu = 0.0
    for r in range(args.rounds):
        fw = pw = 0.0
        for c, (part, batches) in enumerate(zip(parts, decoded, strict=True)):
            store = tmp / f"store{size}_{c}"

            def fwd(batches=batches) -> None:
                forward_seconds(extractor, batches)

            def pipe(part=part, store=store) -> None:
                embed.embed_catalogue(part, bson_path, extractor, store, image_size=size,
                                      batch_size=args.batch, resume=False, progress=False)

            if (r + c) % 2:
                (p_w, p_c), (f_w, f_c) = timed(pipe), timed(fwd)
            else:
                (f_w, f_c), (p_w, p_c) = timed(fwd), timed(pipe)
            fw, pw = fw + f_w, pw + p_w
            fwd_cpu, pipe_cpu = fwd_cpu + f_c, pipe_cpu + p_c
            ratios.append(f_w / p_w)
        fwd_wall.append(fw)
        pipe_wall.append(pw)
        print(f"  {size}px round {r + 1}: forward {n / fw:6.1f} img/s, pipeline "
              f"{n / pw:6.1f} img/s, load {os.getloadavg()[0]:.1f}", flush=True)
    stores = [embed.VectorStore(tmp / f"store{size}_{c}") for c in range(len(parts))]
    by_product = df.set_index("product_id")["category_id"]
    pids = np.concatenate([st.product_ids for st in stores])
    assert len(pids) == len(df)
    vecs = np.concatenate([np.asarray(st.vectors) for st in stores])
    return {"forward": n / min(fwd_wall), "pipeline": n / min(pipe_wall),
            "ratio": float(np.median(ratios)), "pairs": len(ratios),
            "cpu_ms_forward": 1e3 * fwd_cpu / (n * args.rounds),
            "cpu_ms_pipeline": 1e3 * pipe_cpu / (n * args.rounds),
            "p10": precision_at_10(vecs, by_product.loc[pids].to_numpy(np.int64))}


def precision_at_10(vectors: np.ndarray, categories: np.ndarray, k: int = 10) -> float:
    """Exact cosine search with numpy: all products against all, self excluded."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    return float((categories[top] == categories[:, None]).mean())


def tf_worker(images_path: str, out_path: str, rounds: int, batch: int) -> None:
    """Runs in its own process: TF MobileNetV2 and VGG16 style forward images/s."""
    import helpers.models as hm

    u8 = np.load(images_path)
    res: dict[str, float] = {}
    for name, make, n in (("tf", lambda: hm.load_extractor("tf"), TF_IMAGES),
                          ("style", hm.load_style_extractor, STYLE_IMAGES)):
        t0 = time.perf_counter()
        model = make()
        res[f"{name}_load_s"] = time.perf_counter() - t0
        batches = [u8[i : i + batch] for i in range(0, n, batch)]
        model(to_float(batches[0]))  # warm-up: graph tracing
        res[f"{name}_img_s"] = max(len(u8[:n]) / forward_seconds(model, batches)
                                   for _ in range(rounds))
        del model
    Path(out_path).write_text(json.dumps(res))


def run_tf_process(batches: list[np.ndarray], rounds: int, batch: int, tmp: Path) -> dict:
    images = np.concatenate(batches)[:TF_IMAGES]
    np.save(tmp / "tf_images.npy", images)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, __file__, "--tf-worker", str(tmp / "tf_images.npy"),
           str(tmp / "tf.json"), "--rounds", str(rounds), "--batch", str(batch)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise RuntimeError("the TensorFlow process failed")
    return json.loads((tmp / "tf.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["sample", "real"], default="sample")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 180])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=400, help="images per timed pair")
    parser.add_argument("--no-tf", action="store_true")
    parser.add_argument("--tf-worker", nargs=2, metavar=("IMAGES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tf_worker:
        tf_worker(*args.tf_worker, args.rounds, args.batch)
        return

    import helpers.models as hm

    if args.data == "sample":
        bson_path, cats = SAMPLE_BSON, SAMPLE_CATEGORIES
    else:
        bson_path, cats = CDISCOUNT_DIR / "train_example.bson", CDISCOUNT_DIR / "category_names.csv"
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp_name:
        tmp = Path(tmp_name)
        build_catalogue(bson_path, tmp / "catalogue", cats, progress=False)
        df = load_catalogue(tmp / "catalogue")
        n_images = int(df["n_images"].sum())
        onnx = hm.load_extractor("onnx")
        threads = onnx.session.get_session_options().intra_op_num_threads
        print(f"data: {args.data} ({bson_path.name}): {len(df)} products, {n_images} images, "
              f"{df['category_id'].nunique()} categories; {os.cpu_count()} CPUs; batch "
              f"{args.batch}; ONNX intra-op threads {threads} (idle threads sleep); "
              f"{args.rounds} rounds")

        res, tf_batches = {}, None
        for size in args.sizes:
            res[size] = compare(onnx, df, bson_path, size, args, tmp)
            if size == 224 and not args.no_tf:
                tf_batches = decoded_batches(df.head(TF_IMAGES), bson_path, size, args.batch)

        tf = None
        if tf_batches is not None:
            # ONNX on the very pictures TF gets, before and after it: best of both
            same = [b for b in np.array_split(np.concatenate(tf_batches)[:TF_IMAGES],
                                              TF_IMAGES // args.batch)]
            onnx_same = [TF_IMAGES / forward_seconds(onnx, same) for _ in range(args.rounds)]
            tf = run_tf_process(tf_batches, args.rounds, args.batch, tmp)
            onnx_same += [TF_IMAGES / forward_seconds(onnx, same) for _ in range(args.rounds)]
            tf["onnx_img_s"] = max(onnx_same)

    print("\n(a, c) ONNX MobileNetV2: images/s (best round), pipeline/forward ratio (median of"
          f" paired chunks), CPU ms per image, precision@10 by category; target {TARGET}x")
    print(f"{'size':>5} {'forward':>8} {'pipeline':>8} {'ratio':>6} {'cpu fwd':>8} "
          f"{'cpu pipe':>8} {'cpu ratio':>9} {'P@10':>6}")
    for size, m in res.items():
        verdict = "met" if m["ratio"] >= TARGET else "short"
        cpu_ratio = m["cpu_ms_forward"] / m["cpu_ms_pipeline"]
        print(f"{size:>5} {m['forward']:>8.1f} {m['pipeline']:>8.1f} {m['ratio']:>6.2f} "
              f"{m['cpu_ms_forward']:>8.2f} {m['cpu_ms_pipeline']:>8.2f} {cpu_ratio:>9.2f} "
              f"{m['p10']:>6.3f}  {verdict} ({m['pairs']} pairs)")
    if tf is not None:
        onnx224 = tf["onnx_img_s"]
        print(f"\n(b, d) forward images/s at 224 px, batch {args.batch}, best of {args.rounds}"
              " (TF in its own process)")
        print(f"  ONNX MobileNetV2  {onnx224:7.1f}   ({TF_IMAGES} images, as TF)")
        print(f"  TF   MobileNetV2  {tf['tf_img_s']:7.1f}   (ONNX / TF = "
              f"{onnx224 / tf['tf_img_s']:.2f}x; TF load {tf['tf_load_s']:.1f} s)")
        print(f"  VGG16 style       {tf['style_img_s']:7.1f}   ({STYLE_IMAGES} images; "
              f"load {tf['style_load_s']:.1f} s)")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
