"""Decode and check product images (JPEG bytes from the BSON store) and query photos.

Cdiscount pictures are 180x180 RGB JPEGs, but a real dump also holds the odd
greyscale or CMYK file, and a damaged one: every decode goes through here so
those become RGB arrays or a clear ``ImageError``. A query photo (an upload: a phone's
EXIF-rotated JPEG or MPO, a transparent PNG) goes through the same ``decode_image``, so
it is prepared exactly as the catalogue pictures it is compared with.

Imports numpy and Pillow only.
"""

from __future__ import annotations

import io
import logging
import re
import struct

import numpy as np
from PIL import Image, ImageOps

# Cdiscount pictures are 180x180; a phone photo used as a query is ~4000x3000. Above
# 4096 a side (16 MP, 50 MB decoded) a picture is refused from its header, before any
# decode: Pillow's own bomb limit (179 MP) would let a 100 MP JPEG take 300 MB.
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE
# Rows of a big non-JPEG picture flattened and reduced at a time (8000 px wide, RGBA:
# 4 MB a strip).
STRIP_ROWS = 128
WHITE = (255, 255, 255, 255)  # what a transparent picture is shown on (a shop page)

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers (the frame header holds the size): C0-CF but DHT, JPG, DAC.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SIZE = struct.Struct(">HH")
log = logging.getLogger(__name__)
_ADDRESS = re.compile(r" ?<[^<>]* object at 0x[0-9a-fA-F]+>")


class ImageError(ValueError):
    """An image that cannot be used: not a JPEG, truncated, or undecodable."""


class ImageTooLargeError(ImageError):
    """A picture whose header declares more pixels than the limit: refused undecoded."""


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header, or None if there is none to read.

    Walks the marker segments from the start (a few steps for a camera or web JPEG:
    APP0, DQT, SOF), reading no pixel data: this is what lets every picture be
    checked against the size limit at the speed of the catalogue pass.
    """
    n, pos = len(data), 2
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    while pos + 9 <= n:
        if data[pos] != 0xFF:
            return None  # not a marker: a damaged file (Pillow will say so)
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker in _SOF:
            h, w = _SIZE.unpack_from(data, pos + 5)
            return w, h
        elif marker == 0xD9 or marker == 0xDA:  # end of image / scan before any frame
            return None
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a segment
            pos += 2
        else:
            pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
    return None


def too_large(data: bytes, max_side: int = MAX_SIDE) -> str | None:
    """Why a JPEG is over ``max_side`` pixels a side, from its header alone, or None
    (also None when there is no readable header: that is ``decode_image``'s call)."""
    size = jpeg_size(data)
    if size is not None and (size[0] > max_side or size[1] > max_side):
        return f"image too large ({size[0]}x{size[1]}, limit {max_side} a side)"
    return None


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


def decode_image(data: bytes, size: int | None = None,
                 max_side: int | None = MAX_SIDE, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode picture bytes to an RGB ``uint8`` array ``[H, W, 3]``: the one preprocessing
    path of catalogue pictures (embedding) and query photos (upload search).

    ``size`` resizes to ``size x size`` (bilinear); ``None`` keeps the native size
    (180x180 for Cdiscount). On the way:

    * EXIF orientation is applied (a phone stores its photo on its side and says so);
    * transparency is composited on white (a cut-out PNG as a shop page shows it);
    * a picture is decoded no larger than it must be: a JPEG (an MPO, a phone's JPEG with
      its preview, too) at 1/2..1/8 scale in the DCT domain (``draft``), to no less than
      ``size`` a side; any other picture is decoded in full, then reduced by an integer
      factor to no less than ``2 * size`` a side, strip by strip, so no second full-size
      copy is made beside the decoded one.

    Memory of one call: a JPEG of W x H pixels decodes to 3 bytes x max(W*H/64, about
    (2 * size)^2) at most (a 40 Mpixel photo at 224 px: 1000 x 625, 1.9 MB); a PNG, WebP,
    GIF or BMP cannot be drafted and takes its full decoded size (up to 4 bytes a pixel:
    160 MB for 40 Mpixels of RGBA) plus a few strips (4 MB each at 8000 px wide, RGBA) and
    the reduced copy (about 1 MB).

    A 180x180 catalogue JPEG goes through none of that (no orientation tag, no alpha, nothing
    to reduce): its pixels are the plain decode, resized. Raises ``ImageError`` with the
    reason, and ``ImageTooLargeError`` (read from the header, nothing decoded) for a
    picture over ``max_side`` pixels a side or ``max_pixels`` pixels in all.
    """
    why = (too_large(data, max_side) if max_side is not None
           and isinstance(data, bytes | bytearray) else None)
    if why is not None:
        raise ImageTooLargeError(why)
    try:
        # No warnings.catch_warnings() here: it swaps process-wide state and this runs on
        # several decode threads at once. The size checks make Pillow's bomb warning moot.
        img = Image.open(io.BytesIO(data))
        # Other formats (a PNG query photo), or a JPEG header that fooled jpeg_size.
        w, h = img.size
        if max_side is not None and (w > max_side or h > max_side):
            raise ImageTooLargeError(f"image too large ({w}x{h}, limit {max_side} a side)")
        if max_pixels is not None and w * h > max_pixels:
            raise ImageTooLargeError(f"image too large ({w}x{h}, limit {max_pixels:,} pixels)")
        if size is not None and (w > 2 * size or h > 2 * size):
            # JPEG draft mode decodes at 1/2, 1/4.. scale: far cheaper for big images.
            # (A no-op for other formats.)
            img.draft("RGB", (size, size))
        img.load()
        small = _shrink(img, size)
        _orient(small, img.info)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow names the file object ("<_io.BytesIO object at 0x7f..>"): drop it, so
        # a reject reads the same in every run.
        raise ImageError(f"undecodable image: {_ADDRESS.sub('', str(exc))}") from exc
    if size is not None and small.size != (size, size):
        # A greyscale picture is resized before it becomes RGB: a third of the work,
        # the same pixels.
        small = small.resize((size, size), Image.BILINEAR)
    if small.mode != "RGB":
        small = small.convert("RGB")  # greyscale -> RGB
    return np.asarray(small)


def _flatten(img: Image.Image) -> Image.Image:
    """``img`` as RGB or L (kept as is when it is one): transparency composited on white,
    CMYK, palette and the rest converted."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return img if img.mode in ("RGB", "L") else img.convert("RGB")


def _shrink(img: Image.Image, size: int | None) -> Image.Image:
    """A loaded picture flattened (``_flatten``) and, when it is over ``2 * size`` pixels
    on its short side (a PNG; a JPEG over 16x ``size`` even after ``draft``), reduced by
    the integer factor that keeps it at least that big. Done ``STRIP_ROWS`` rows at a time:
    converting or reducing an RGBA picture whole would copy it at full size first."""
    factor = min(img.size) // (2 * size) if size else 0
    if factor < 2:
        return _flatten(img)
    w, h = img.size
    rows = factor * max(1, STRIP_ROWS // factor)  # whole blocks of `factor` rows
    out = Image.new("L" if img.mode == "L" else "RGB", (-(-w // factor), -(-h // factor)))
    for top in range(0, h, rows):
        strip = _flatten(img.crop((0, top, w, min(h, top + rows))))
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _orient(img: Image.Image, info: dict) -> None:
    """Turn ``img`` upright in place as the EXIF Orientation of ``info`` (the decoded
    picture's) says; a damaged EXIF block leaves it as stored."""
    if img.info is not info:
        img.info.update(info)  # a reduced copy: exif_transpose reads the tag from info
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many kinds on junk
        log.debug("EXIF orientation unreadable: picture kept as stored", exc_info=True)


def to_float(images: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` (or a list of ``[H, W, 3]``) -> float32 in [0, 1], the
    models' input convention, in one pass.

    ``astype(float32) / 255`` makes two passes and two fresh arrays (38 MB per
    batch of 64 at 224 px): that cost as much CPU as the JPEG decode itself.
    """
    u8 = np.stack(images) if isinstance(images, list) else np.asarray(images)
    out = np.empty(u8.shape, np.float32)
    return np.multiply(u8, np.float32(1 / 255), out=out)
