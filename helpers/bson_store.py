"""Stream a Cdiscount BSON dump and read products back by byte offset.

The BSON file is the image store: a product's JPEGs are read back with one
``pread`` at the offset recorded in the catalogue, so nothing is extracted to
disk. Streaming keeps memory constant whatever the file size (58 GB for
``train.bson``): the file is read in fixed-size chunks and each document is
decoded on its own, so a damaged document costs only itself.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bson
from bson.errors import BSONError

# BSON documents are at most 16 MiB (MongoDB's limit); the smallest is 5 bytes ("{}").
MIN_DOC = 5
MAX_DOC = 16 * 1024 * 1024
CHUNK = 8 * 1024 * 1024
_INT32 = struct.Struct("<i")
# mongodump writes `_id` first, so a document starts 5 bytes before "_id\0"
# (4 length bytes + 1 type byte): the anchor used to resynchronise after garbage.
_ID_KEY = b"_id\x00"


class NotBSONError(ValueError):
    """The file does not start with a BSON document at all."""


@dataclass(frozen=True)
class Record:
    """One slot of the file: a decoded document, or the reason it could not be decoded."""

    offset: int
    length: int
    doc: dict | None = None
    error: str | None = None


def _doc_error(buf: bytes, pos: int, length: int) -> str | None:
    """Why the ``length`` bytes at ``buf[pos:]`` cannot be a document, or None."""
    if length < MIN_DOC or length > MAX_DOC:
        return f"invalid document length {length}"
    if buf[pos + length - 1] != 0:
        return "document does not end with a NUL byte"
    return None


class _Window:
    """A sliding read buffer over a file: constant memory, few copies."""

    def __init__(self, f, offset: int, chunk_size: int) -> None:
        self.f, self.chunk = f, chunk_size
        f.seek(offset)
        self.buf, self.base, self.pos, self.eof = b"", offset, 0, False

    @property
    def offset(self) -> int:
        return self.base + self.pos

    @property
    def avail(self) -> int:
        return len(self.buf) - self.pos

    def fill(self, need: int) -> None:
        """Make at least ``need`` bytes available from ``pos`` unless the file ends."""
        while self.avail < need and not self.eof:
            more = self.f.read(max(self.chunk, need - self.avail))
            self.eof = not more
            # Only the unread tail (usually under one document) is copied.
            self.buf = self.buf[self.pos :] + more
            self.base += self.pos
            self.pos = 0


def iter_records(
    path: str | os.PathLike,
    start: int = 0,
    end: int | None = None,
    decode: bool = True,
    chunk_size: int = CHUNK,
) -> Iterator[Record]:
    """Yield every document slot whose first byte lies in ``[start, end)``.

    A damaged region comes out as one ``Record`` with ``error`` set (``doc=None``)
    that spans the bad bytes up to the next decodable document, so callers can
    count and report it and lose nothing else. ``start`` must be a document
    boundary (0, or an offset from a checkpoint). With ``decode=False`` only the
    framing is checked (length prefix, trailing NUL): a fast way to count or skip.
    """
    size = Path(path).stat().st_size
    end = size if end is None else min(end, size)
    with open(path, "rb", buffering=0) as f:
        w = _Window(f, start, chunk_size)
        while w.offset < end:
            off = w.offset
            w.fill(4)
            if w.avail < 4:
                if w.avail:
                    yield Record(off, w.avail, error="truncated document: file ends in its length")
                return
            (length,) = _INT32.unpack_from(w.buf, w.pos)
            if MIN_DOC <= length <= MAX_DOC:
                w.fill(length)
                if w.avail < length:
                    got = w.avail
                    msg = f"truncated document: expects {length} bytes, file has {got}"
                    yield Record(off, got, error=msg)
                    return
            err = _doc_error(w.buf, w.pos, length)
            if err is None:
                raw = w.buf[w.pos : w.pos + length]
                if not decode:
                    w.pos += length
                    yield Record(off, length)
                    continue
                try:
                    doc = bson.decode(raw)
                except (BSONError, ValueError, OverflowError) as exc:
                    err = f"undecodable document: {exc}"
                else:
                    w.pos += length
                    yield Record(off, length, doc)
                    continue
            skipped = _resync(w)
            yield Record(off, skipped, error=f"{err}; skipped {skipped} bytes to the next document")


def _resync(w: _Window) -> int:
    """Advance ``w`` to the next decodable document (or EOF); return bytes skipped."""
    start = w.offset
    scan = w.pos + 1
    while True:
        hit = w.buf.find(_ID_KEY, max(scan, w.pos + 5))
        if hit < 0:
            if w.eof:
                w.pos = len(w.buf)
                return w.offset - start
            # Keep a few tail bytes: an anchor may straddle the chunk boundary.
            keep_from = max(w.pos, len(w.buf) - 8)
            w.pos = keep_from
            w.fill(w.avail + w.chunk)
            scan = w.pos
            continue
        cand = hit - 5
        rel = cand - w.pos
        w.fill(rel + 4)
        cand = w.pos + rel
        (length,) = _INT32.unpack_from(w.buf, cand)
        if MIN_DOC <= length <= MAX_DOC:
            w.fill(rel + length)
            cand = w.pos + rel
            if len(w.buf) - cand >= length and _doc_error(w.buf, cand, length) is None:
                try:
                    bson.decode(w.buf[cand : cand + length])
                except (BSONError, ValueError, OverflowError):
                    pass
                else:
                    w.pos = cand
                    return w.offset - start
        scan = w.pos + rel + 6


def check_is_bson(path: str | os.PathLike) -> None:
    """Raise ``NotBSONError`` unless the file starts with a decodable BSON document.

    An empty file passes: it is a valid dump of zero products.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BSON file not found: {path}")
    first = next(iter_records(path), None)
    if first is not None and first.error is not None:
        with open(path, "rb") as f:
            head = f.read(8)
        raise NotBSONError(
            f"{path} is not a BSON file (first document: {first.error}; first bytes {head!r}). "
            "Expected a mongodump-style file such as Cdiscount's train.bson."
        )


def skip_documents(path: str | os.PathLike, n: int, start: int = 0) -> int:
    """Offset of the document after the first ``n`` slots from ``start`` (framing only)."""
    pos = start
    for i, rec in enumerate(iter_records(path, start, decode=False)):
        if i == n:
            return rec.offset
        pos = rec.offset + rec.length
    return pos


class BsonImageStore:
    """Random access to products in a BSON file by ``(offset, length)``.

    Uses ``os.pread`` on one open descriptor: no shared file position, so it is
    safe to call from several threads at once (the embedding pipeline does).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)

    def read(self, offset: int, length: int) -> dict:
        raw = os.pread(self._fd, length, offset)
        if len(raw) != length:
            raise ValueError(f"{self.path}: cannot read {length} bytes at offset {offset}")
        return bson.decode(raw)

    def pictures(self, offset: int, length: int) -> list[bytes]:
        """The JPEG bytes of every image of the product stored at ``offset``."""
        return [img["picture"] for img in self.read(offset, length).get("imgs", [])]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> BsonImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
