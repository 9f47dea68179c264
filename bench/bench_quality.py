"""Better neighbours without labels: pooling and whitening variants of MobileNetV2 features.

    python bench/bench_quality.py                # built-in sample and, if present, the real one
    python bench/bench_quality.py --size 180

Every picture of a catalogue is embedded once (ONNX fp32, and OpenVINO bf16 for the
backend's own row); the variants are computed from the last feature map:

* ``avg``: global average pooling (what the extractors return);
* ``gem3``: generalised-mean pooling, p = 3 (Radenovic et al.), which weighs the
  strongest activations more;
* ``+pcaw<d>``: PCA-whitening learned on the catalogue's own vectors (no labels),
  reduced to d dimensions (at most the number of vectors - 1), then L2-normalised.

Quality, exact cosine search:

* category precision@10, product level (a product's vector: the mean of its pictures'
  unit vectors, as ``embed_catalogue`` stores it), itself excluded;
* same-product hit@1 / hit@5, picture level: for each picture of a product with
  several, is another picture of the same product the nearest / within the 5 nearest
  pictures (itself excluded)?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _report import row  # noqa: E402

from helpers.core.paths import CDISCOUNT_DIR, SAMPLE_BSON  # noqa: E402


def catalogue_pictures(bson_path: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 pictures, their product ids and their products' category ids."""
    import bson

    from helpers.ingest.jpeg import decode_image

    pics, pids, cats = [], [], []
    with open(bson_path, "rb") as f:
        for doc in bson.decode_file_iter(f):
            for img in doc["imgs"]:
                pics.append(decode_image(img["picture"], size))
                pids.append(doc["_id"])
                cats.append(doc["category_id"])
    return np.stack(pics), np.array(pids, np.int64), np.array(cats, np.int64)


def feature_map_session(threads: int = 2):
    """The ONNX MobileNetV2 with one more output: the map before the average pool."""
    import onnx
    import onnxruntime as ort

    from helpers.models.nets import mobilenet_v2

    model = mobilenet_v2.build_onnx_model()
    pool = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        pool.input[0], onnx.TensorProto.FLOAT, ["batch", 1280, "h", "w"]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    return session, pool.input[0]


def pooled(session, name: str, u8: np.ndarray, p: float, batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(u8), batch):
        x = np.multiply(u8[i : i + batch], np.float32(1 / 255), dtype=np.float32)
        (fmap,) = session.run([name], {"images": x})
        if p == 1:
            out.append(fmap.mean(axis=(2, 3)))
        else:  # ReLU6 output is >= 0; clamp for the root
            out.append(np.power(np.power(np.maximum(fmap, 1e-6), p).mean(axis=(2, 3)), 1 / p))
    return np.concatenate(out).astype(np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def pca_whiten(v: np.ndarray, dim: int) -> np.ndarray:
    """Learned on ``v`` itself: centre, rotate to principal axes, scale to unit variance."""
    x = unit(v).astype(np.float64)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    d = min(dim, len(x) - 1)
    proj = vt[:d].T / np.maximum(s[:d] / np.sqrt(len(x) - 1), 1e-8)
    return unit(((x - mean) @ proj).astype(np.float32))


def knn(v: np.ndarray, k: int) -> np.ndarray:
    u = unit(v)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def scores(v: np.ndarray, pids: np.ndarray, cats: np.ndarray) -> dict[str, float]:
    """P@10 (product level), same-product hit@1 and hit@5 (picture level)."""
    u = unit(v)
    uniq, inverse = np.unique(pids, return_inverse=True)
    prod = np.zeros((len(uniq), u.shape[1]))
    np.add.at(prod, inverse, u)
    prod_cats = np.zeros(len(uniq), np.int64)
    prod_cats[inverse] = cats
    nn = knn(prod, 10)
    p10 = float((prod_cats[nn] == prod_cats[:, None]).mean())
    counts = np.bincount(inverse)
    multi = counts[inverse] > 1
    nn5 = knn(u, 5)
    same = pids[nn5] == pids[:, None]
    return {"p10": p10, "hit1": float(same[multi, 0].mean()) if multi.any() else float("nan"),
            "hit5": float(same[multi].any(1).mean()) if multi.any() else float("nan"),
            "queries": int(multi.sum())}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-openvino", action="store_true")
    parser.add_argument("--data", nargs="+", default=["sample", "real"])
    args = parser.parse_args(argv)
    import helpers.models as hm

    datasets = {"sample": SAMPLE_BSON, "real": CDISCOUNT_DIR / "train_example.bson"}
    datasets = {k: v for k, v in datasets.items() if k in args.data and v.exists()}
    session, fmap = feature_map_session()
    ov = None if args.no_openvino else hm.load_extractor("mobilenet_v2", "openvino",
                                                                 intra_op_threads=2)
    rows, table = [], {}
    for data, path in datasets.items():
        u8, pids, cats = catalogue_pictures(path, args.size)
        avg, gem = pooled(session, fmap, u8, 1), pooled(session, fmap, u8, 3)
        variants = {"avg (fp32)": avg, "gem3": gem}
        for d in (256, 512):
            variants[f"avg+pcaw{d}"] = pca_whiten(avg, d)
            variants[f"gem3+pcaw{d}"] = pca_whiten(gem, d)
        if ov is not None:
            variants["avg (openvino bf16)"] = ov(u8)
        for name, v in variants.items():
            table[data, name] = scores(v, pids, cats)
        print(f"{data}: {len(u8)} pictures, {len(np.unique(pids))} products, "
              f"{table[data, 'avg (fp32)']['queries']} pictures with a sibling; "
              f"{args.size} px", flush=True)
    names = list(dict.fromkeys(n for _, n in table))
    print(f"\n{'variant':>22} " + " ".join(f"{d + ' P@10':>12} {'hit@1':>6} {'hit@5':>6}"
                                            for d in datasets))
    for n in names:
        cells = []
        for d in datasets:
            s = table[d, n]
            cells.append(f"{s['p10']:>12.3f} {s['hit1']:>6.3f} {s['hit5']:>6.3f}")
        print(f"{n:>22} " + " ".join(cells))
    for (d, n), s in table.items():
        for metric in ("p10", "hit1", "hit5"):
            rows.append(row(f"{metric}, {n}, {d}, {args.size} px", s[metric], unit="share"))
    return rows


if __name__ == "__main__":
    main()
