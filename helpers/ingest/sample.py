"""The built-in sample: a Cdiscount-format dump made from Fashion-MNIST.

Fashion-MNIST (Zalando, MIT licence) holds 70,000 real product photos of ten
clothing categories, 28x28 greyscale. Debian ships it (``dataset-fashion-mnist``).
This module turns it into the Cdiscount layout so every notebook runs on any
machine: one BSON document per product ``{_id, category_id, imgs: [{picture}]}``,
180x180 JPEGs, and a category CSV in ``category_names.csv``'s format (three French levels).

A Cdiscount product has 1 to 4 photos of the same item; Fashion-MNIST has one,
so the extra pictures of a product are views of that photo (mirror, small
shift-and-zoom, exposure change) -- stated here so nobody mistakes them for
independent shots.

Imports numpy, pandas, Pillow, bson and helpers.core.artifacts.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path

import bson
import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageOps

from helpers.core import artifacts

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Cdiscount-style ids, out of the real catalogue's range (1000000000..1000023000).
CATEGORY_BASE = 2_000_000_000
CATEGORIES = [
    # label: (level1, level2, level3) in the catalogue's own style
    ("MODE", "VETEMENTS FEMME", "T-SHIRT - DEBARDEUR"),
    ("MODE", "VETEMENTS FEMME", "PANTALON"),
    ("MODE", "VETEMENTS FEMME", "PULL - GILET"),
    ("MODE", "VETEMENTS FEMME", "ROBE"),
    ("MODE", "VETEMENTS FEMME", "MANTEAU - VESTE"),
    ("CHAUSSURES", "CHAUSSURES FEMME", "SANDALE - NU-PIEDS"),
    ("MODE", "VETEMENTS HOMME", "CHEMISE"),
    ("CHAUSSURES", "CHAUSSURES HOMME", "BASKET"),
    ("BAGAGERIE", "SAC", "SAC A MAIN"),
    ("CHAUSSURES", "CHAUSSURES FEMME", "BOTTINE"),
]
# Share of products with 1, 2, 3, 4 pictures (close to train.bson's 12.4M / 7.07M).
IMAGES_PER_PRODUCT = [0.62, 0.20, 0.09, 0.09]
SIZE = 180


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        magic, = struct.unpack(">I", f.read(4))
        ndim = magic & 0xFF
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def load_fashion_mnist(root: str | os.PathLike = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 images ``[N, 28, 28]`` and labels, train then test."""
    root = Path(root)
    if not (root / "train-images-idx3-ubyte.gz").exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root}: install it with "
            "`sudo apt-get install dataset-fashion-mnist`"
        )
    images = [read_idx(root / f"{s}-images-idx3-ubyte.gz") for s in ("train", "t10k")]
    labels = [read_idx(root / f"{s}-labels-idx1-ubyte.gz") for s in ("train", "t10k")]
    return np.concatenate(images), np.concatenate(labels)


def _views(img: Image.Image, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """The first picture and ``n - 1`` other views of the same item."""
    out = [img]
    ops = [
        lambda im: ImageOps.mirror(im),
        lambda im: _shift_zoom(im, rng),
        lambda im: ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.75, 1.25))),
    ]
    for op in ops[: n - 1]:
        out.append(op(img))
    return out


def _shift_zoom(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w = img.width
    m = int(w * rng.uniform(0.04, 0.12))
    dx, dy = rng.integers(0, m + 1, size=2)
    return img.crop((dx, dy, dx + w - m, dy + w - m)).resize((w, w), Image.BICUBIC)


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_sample(
    out_dir: str | os.PathLike,
    per_category: int = 100,
    seed: int = 0,
    quality: int = 80,
    root: str | os.PathLike = FASHION_DIR,
    name: str = "fashion_sample",
) -> tuple[Path, Path]:
    """Write ``<name>.bson`` and ``<name>_categories.csv`` to ``out_dir``.

    per_category: products per category (10 categories); ``None`` takes all
        70,000 photos (about 300 MB: for benchmarks, not for git).
    Returns the two paths. Same arguments give byte-identical files.
    """
    images, labels = load_fashion_mnist(root)
    rng = np.random.default_rng(seed)
    if per_category is None:
        chosen = np.arange(len(labels))
    else:
        chosen = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(labels == c), per_category, replace=False)
            for c in range(len(CATEGORIES))
        ]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bson_path = out_dir / f"{name}.bson"

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for idx in chosen:
                n = int(rng.choice(4, p=IMAGES_PER_PRODUCT)) + 1
                # Fashion-MNIST is white-on-black; catalogue photos are dark-on-white.
                base = ImageOps.invert(Image.fromarray(images[idx])).resize((SIZE, SIZE),
                                                                            Image.BICUBIC)
                # Greyscale JPEGs (as the photos are): half the size, and they exercise the
                # decoder's grey -> RGB path that real catalogue outliers need.
                pics = [_jpeg(v, quality) for v in _views(base, n, rng)]
                doc = {"_id": int(idx), "imgs": [{"picture": p} for p in pics],
                       "category_id": CATEGORY_BASE + int(labels[idx])}
                f.write(bson.encode(doc))

    artifacts.atomic_write(bson_path, write)  # readers never see half a file
    csv_path = out_dir / f"{name}_categories.csv"
    pd.DataFrame(
        [(CATEGORY_BASE + i, *names) for i, names in enumerate(CATEGORIES)],
        columns=["category_id", "category_level1", "category_level2", "category_level3"],
    ).to_csv(csv_path, index=False)
    return bson_path, csv_path
