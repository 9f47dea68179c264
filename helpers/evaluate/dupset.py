"""A labelled near-duplicate set made from real catalogue photos, and how well a detector
finds its copies.

    ds = labelled_set(bson_path, seed=0)        # originals, edited copies, hard negatives
    ds.pictures, ds.truth, ds.kind              # JPEG bytes, true group (-1: none), edit
    vectors = embed_pictures(ds.pictures, extractor)        # the real model, not simulated
    cnn = score_vectors(vectors, ds.truth, threshold=0.9)   # precision, recall, F1
    phash = score_phash(ds.pictures, ds.truth, max_distance=10)

Each original is the first picture of a real product; each of its edited copies is added as
a new product: a crop of up to 15 % (each side cut at random, about a third of it on
average), a rescale (x0.5 to x1.5), a JPEG recompression at quality 50, a small colour shift
(saturation and brightness ±10 %, channels ±12 levels), a mirror, a text overlay (a
price band). Hard negatives are other products of the same categories, their first
pictures. An original and its copies share a true group; a negative is alone.

Both detectors put items together the same way: the pairs they accept, joined into
clusters (`helpers.index.duplicates.components`), scored as pairs
(`helpers.evaluate.metrics.pair_scores`). The pHash peer is ``imagehash.phash`` (64 bits),
pairs within ``max_distance`` bits, as imagededup does (its default: 10).
Imports numpy, Pillow, `helpers.ingest` (documents, decoding), `helpers.index.duplicates`
and metrics; imagehash on `score_phash` only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from helpers.evaluate.metrics import pair_scores
from helpers.index.duplicates import components, near_duplicate_pairs
from helpers.ingest.bson_store import iter_records
from helpers.ingest.jpeg import decode_image, to_float

EDITS = ("crop", "rescale", "jpeg50", "colour", "mirror", "text")
PHASH_DISTANCE = 10  # imagededup's default max_distance_threshold for 64-bit hashes


@dataclass
class DupSet:
    """Pictures (JPEG bytes) with their true near-duplicate group (-1: alone)."""

    pictures: list[bytes] = field(default_factory=list)
    truth: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)  # "original", an edit, or "negative"
    category: list[int] = field(default_factory=list)
    source: list[int] = field(default_factory=list)  # the real product it came from

    def add(self, picture: bytes, truth: int, kind: str, category: int, source: int) -> None:
        self.pictures.append(picture)
        self.truth.append(truth)
        self.kind.append(kind)
        self.category.append(category)
        self.source.append(source)

    def __len__(self) -> int:
        return len(self.pictures)

    def describe(self) -> str:
        n = {k: self.kind.count(k) for k in dict.fromkeys(self.kind)}
        return ", ".join(f"{v} {k}" for k, v in n.items())


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def edit(img: Image.Image, kind: str, rng: np.random.Generator) -> bytes:
    """One edited copy of ``img`` as JPEG bytes (quality 90, 50 for ``jpeg50``)."""
    w, h = img.size
    if kind == "crop":  # up to 15 % of each side, split at random between its two ends
        cw, ch = (int(round(s * rng.uniform(0.05, 0.15))) for s in (w, h))
        left, top = int(rng.integers(0, cw + 1)), int(rng.integers(0, ch + 1))
        return _jpeg(img.crop((left, top, w - (cw - left), h - (ch - top))))
    if kind == "rescale":
        f = float(rng.choice([rng.uniform(0.5, 0.8), rng.uniform(1.2, 1.5)]))
        return _jpeg(img.resize((max(8, round(w * f)), max(8, round(h * f))),
                                Image.Resampling.BICUBIC))
    if kind == "jpeg50":
        return _jpeg(img, quality=50)
    if kind == "colour":
        out = ImageEnhance.Color(img).enhance(rng.uniform(0.9, 1.1))
        out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.9, 1.1))
        shift = rng.integers(-12, 13, size=3)
        arr = np.clip(np.asarray(out, np.int16) + shift, 0, 255).astype(np.uint8)
        return _jpeg(Image.fromarray(arr))
    if kind == "mirror":
        return _jpeg(ImageOps.mirror(img))
    if kind == "text":  # a price band across the lower part, as shops stamp photos
        out = img.copy()
        draw = ImageDraw.Draw(out)
        size = max(10, h // 9)
        y = int(h * rng.uniform(0.65, 0.8))
        draw.rectangle((0, y, w, y + size + 6), fill=(200, 20, 30))
        font = ImageFont.load_default(size=size)
        draw.text((w // 10, y + 2), f"PROMO -{int(rng.integers(10, 60))}%", fill="white",
                  font=font)
        return _jpeg(out)
    raise ValueError(f"unknown edit {kind!r}; edits: {EDITS}")


def labelled_set(bson_path: str | os.PathLike, *, originals_per_category: int = 10,
                 negatives_per_category: int = 20, seed: int = 0,
                 edits: tuple[str, ...] = EDITS) -> DupSet:
    """Originals, their edited copies and same-category hard negatives from a BSON dump.

    Per category (products in a seeded order): the first ``originals_per_category`` become
    originals with one copy per edit, the next ``negatives_per_category`` hard negatives.
    A category of one product gives an original and no negative.
    """
    rng = np.random.default_rng(seed)
    by_cat: dict[int, list[tuple[int, bytes]]] = {}
    for rec in iter_records(bson_path):
        doc = rec.doc
        if rec.error is not None or not doc.get("imgs"):
            continue
        by_cat.setdefault(int(doc.get("category_id") or -1), []).append(
            (int(doc["_id"]), doc["imgs"][0]["picture"]))
    ds = DupSet()
    group = 0
    for cat in sorted(by_cat):
        products = [by_cat[cat][i] for i in rng.permutation(len(by_cat[cat]))]
        for pid, pic in products[:originals_per_category]:
            ds.add(pic, group, "original", cat, pid)
            img = Image.fromarray(decode_image(pic))
            for kind in edits:
                ds.add(edit(img, kind, rng), group, kind, cat, pid)
            group += 1
        for pid, pic in products[originals_per_category:
                                 originals_per_category + negatives_per_category]:
            ds.add(pic, -1, "negative", cat, pid)
    if group == 0:
        raise ValueError(f"{bson_path}: no product with a picture to copy")
    return ds


def embed_pictures(pictures: list[bytes], extractor: Callable[[np.ndarray], np.ndarray],
                   image_size: int = 224, batch: int = 64) -> np.ndarray:
    """Vectors of JPEG bytes, decoded as catalogue pictures are (`decode_image`)."""
    out = []
    for i in range(0, len(pictures), batch):
        imgs = [decode_image(p, image_size) for p in pictures[i:i + batch]]
        out.append(np.asarray(extractor(to_float(imgs)), np.float32))
    return np.concatenate(out)


def score_vectors(vectors: np.ndarray, truth: list[int] | np.ndarray,
                  threshold: float) -> dict[str, float]:
    """Pair precision, recall and F1 of clusters of vectors with cosine >= threshold."""
    a, b, _ = near_duplicate_pairs(vectors, threshold)
    return pair_scores(components(len(vectors), a, b), truth)


def phashes(pictures: list[bytes]) -> np.ndarray:
    """64-bit pHash of each picture (``imagehash.phash``), as [n, 64] bools."""
    import imagehash

    return np.stack([imagehash.phash(Image.open(io.BytesIO(p))).hash.ravel()
                     for p in pictures])


def score_phash(pictures_or_hashes: list[bytes] | np.ndarray, truth: list[int] | np.ndarray,
                max_distance: int = PHASH_DISTANCE) -> dict[str, float]:
    """Pair precision, recall and F1 of clusters of pHashes within ``max_distance`` bits."""
    h = pictures_or_hashes if isinstance(pictures_or_hashes, np.ndarray) \
        else phashes(pictures_or_hashes)
    bits = h.astype(np.int16)
    # Hamming distances of every pair: bits differing = n - agreements.
    dist = h.shape[1] - (bits @ bits.T + (1 - bits) @ (1 - bits).T)
    a, b = np.nonzero(np.triu(dist <= max_distance, 1))
    return pair_scores(components(len(h), a, b), truth)
