"""Decode and check product images (JPEG bytes from the BSON store).

Cdiscount pictures are 180x180 RGB JPEGs, but a real dump also holds the odd
greyscale or CMYK file, and a damaged one: every decode goes through here so
those become RGB arrays or a clear ``ImageError``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

# Far above any catalogue photo; stops a "decompression bomb" from eating RAM.
MAX_PIXELS = 4096 * 4096

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"


class ImageError(ValueError):
    """An image that cannot be used: not a JPEG, truncated, or undecodable."""


def check_jpeg_bytes(data: object) -> str | None:
    """Cheap framing check (no decode): why ``data`` is not a JPEG, or None.

    Catches non-JPEG bytes and truncated files at the cost of two comparisons,
    which is what lets the catalogue pass run at disk speed. ``decode_image``
    (or ``verify_images="decode"`` in the catalogue) catches the rest.
    """
    if not isinstance(data, bytes | bytearray):
        return f"picture is {type(data).__name__}, not bytes"
    if len(data) < 4:
        return f"picture has only {len(data)} bytes"
    if not data.startswith(JPEG_SOI):
        return f"not a JPEG (starts with {bytes(data[:4])!r})"
    # Some encoders pad after the end marker; look in the last few bytes.
    if JPEG_EOI not in data[-32:]:
        return "truncated JPEG (no end-of-image marker)"
    return None


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """Decode JPEG bytes to an RGB ``uint8`` array ``[H, W, 3]``.

    ``size`` resizes to ``size x size`` (bilinear); ``None`` keeps the native
    size (180x180 for Cdiscount). Raises ``ImageError`` with the reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"image too large ({img.width}x{img.height})")
            if size is not None and (img.width > 2 * size or img.height > 2 * size):
                # JPEG draft mode decodes at 1/2, 1/4.. scale: far cheaper for big images.
                img.draft("RGB", (size, size))
            img.load()
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"undecodable image: {exc}") from exc
    if size is not None and img.size != (size, size):
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")  # CMYK, palette...: resample in RGB
        # A greyscale picture is resized before it becomes RGB: a third of the work,
        # the same pixels.
        img = img.resize((size, size), Image.BILINEAR)
    if img.mode != "RGB":
        img = img.convert("RGB")  # greyscale, CMYK, palette -> RGB
    return np.asarray(img)


def to_float(images: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` (or a list of ``[H, W, 3]``) -> float32 in [0, 1], the
    models' input convention, in one pass.

    ``astype(float32) / 255`` makes two passes and two fresh arrays (38 MB per
    batch of 64 at 224 px): that cost as much CPU as the JPEG decode itself.
    """
    u8 = np.stack(images) if isinstance(images, list) else np.asarray(images)
    out = np.empty(u8.shape, np.float32)
    return np.multiply(u8, np.float32(1 / 255), out=out)
