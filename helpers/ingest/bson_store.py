"""Stream a Cdiscount BSON dump: every document with its byte offset, damage named and skipped.

The BSON file is the image store: the catalogue records each product's offset and a
product is read back with one ``pread`` (`helpers.ingest.image_store`), so nothing is
extracted to disk. Streaming keeps memory constant whatever the file size (58 GB for
``train.bson``): the file is read in fixed-size chunks and each document is decoded on its
own, so a damaged document costs only itself. `iter_records` is a fast path over
well-framed documents plus a careful step that refills, or names the damage and resyncs.

Holds the reader, `check_is_bson` and `skip_documents`; re-exports the framing constants
(`helpers.ingest.framing`), the byte ranges (`helpers.ingest.ranges`) and `BsonImageStore`
(`helpers.ingest.image_store`), so ``bson_store.X`` keeps working for all of them.
Imports the stdlib, ``bson`` and those three modules.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import bson

from helpers.ingest.framing import (
    CHUNK,
    DECODE_ERRORS,
    ID_KEY,
    INT32,
    MAX_DOC,
    MIN_DOC,
    chain_ok,
)
from helpers.ingest.image_store import BsonImageStore
from helpers.ingest.ranges import find_document_start, partition_offsets

__all__ = ["CHUNK", "MAX_DOC", "MIN_DOC", "TOO_LARGE", "TRUNCATED", "BsonImageStore",
           "NotBSONError", "Record", "check_is_bson", "find_document_start", "iter_records",
           "partition_offsets", "skip_documents"]

_fadvise = getattr(os, "posix_fadvise", None)  # absent on macOS/Windows


class NotBSONError(ValueError):
    """The file does not start with a BSON document at all."""


class Record(NamedTuple):
    """One slot of the file: a decoded document, or the reason it could not be decoded."""

    offset: int
    length: int
    doc: dict | None = None
    error: str | None = None


# Error messages start with these words; the catalogue maps them to reject reasons.
TRUNCATED = "truncated document"
TOO_LARGE = "document too large"
# BSON element type bytes (spec 1.1): what may follow a document's length prefix.
_TYPES = frozenset([*range(0x01, 0x14), 0x7F, 0xFF])


def _doc_error(buf: bytes, pos: int, length: int, max_doc: int = MAX_DOC) -> str | None:
    """Why the ``length`` bytes at ``buf[pos:]`` cannot be a document, or None."""
    if length < MIN_DOC or length > max_doc:
        return f"invalid document length {length}"
    if buf[pos + length - 1] != 0:
        return "document does not end with a NUL byte"
    return None


class _Window:
    """A sliding read window over a file: constant memory, no big copies."""

    def __init__(self, fd: int, offset: int, chunk_size: int) -> None:
        self.fd, self.chunk = fd, chunk_size
        self.buf, self.base, self.pos, self.eof = b"", offset, 0, False

    @property
    def offset(self) -> int:
        return self.base + self.pos

    @property
    def avail(self) -> int:
        return len(self.buf) - self.pos

    def fill(self, need: int) -> None:
        """Make at least ``need`` bytes available from ``pos`` unless the file ends."""
        if self.avail >= need or self.eof:
            return
        # Re-read the unread tail with the next chunk (one pread, no concatenation).
        start, want = self.offset, max(self.chunk, need)
        self.buf = os.pread(self.fd, want, start)
        self.base, self.pos = start, 0
        self.eof = len(self.buf) < want
        if not self.eof and _fadvise is not None:
            # Ask the kernel to read the next chunks while we parse this one:
            # overlaps disk I/O with decoding when the file is not cached.
            _fadvise(self.fd, start + want, 2 * want, os.POSIX_FADV_WILLNEED)


def iter_records(
    path: str | os.PathLike,
    start: int = 0,
    end: int | None = None,
    decode: bool = True,
    chunk_size: int = CHUNK,
    max_doc: int = MAX_DOC,
) -> Iterator[Record]:
    """Yield every document slot whose first byte lies in ``[start, end)``.

    A damaged region comes out as one ``Record`` with ``error`` set (``doc=None``)
    that spans the bad bytes up to the next decodable document, so callers can
    count and report it and lose nothing else. A document is taken only where the
    next one starts right after it (its ``_id`` key in place) or the file ends;
    otherwise a document starting inside its frame wins (a cut document whose frame
    runs into the next one: see ``_inner_start``). ``start`` must be a document
    boundary (0, or an offset from a checkpoint). With ``decode=False`` only the
    framing is checked (length prefix, trailing NUL): a fast way to count or skip.
    max_doc: a document whose length prefix claims more bytes is refused unread
        (error starting with ``TOO_LARGE``) and the reader carries on after it.
    The slots tile the bytes they cover: each starts where the previous one ends.
    """
    if max_doc < MIN_DOC:
        raise ValueError(f"max_doc must be >= {MIN_DOC}, not {max_doc}")
    size = Path(path).stat().st_size
    end = size if end is None else min(end, size)
    unpack, dec = INT32.unpack_from, bson.decode
    fd = os.open(path, os.O_RDONLY)
    try:
        w = _Window(fd, start, chunk_size)
        while w.offset < end:
            # Fast path: every whole, well-framed document in the buffer, with
            # nothing but locals in the loop (this loop is the ingest speed).
            buf, pos, base = w.buf, w.pos, w.base
            stop, eof, starts = min(len(buf), end - base), size - base, buf.startswith
            while pos + 4 <= stop:
                length = unpack(buf, pos)[0]
                nxt = pos + length
                if not MIN_DOC <= length <= max_doc or nxt > len(buf) or buf[nxt - 1] != 0:
                    break
                # The next document's `_id` key right after this one, or the file's end;
                # else the careful step looks for a document this frame runs into.
                if nxt != eof and not starts(ID_KEY, nxt + 5):
                    break
                if decode:
                    try:
                        doc = dec(buf[pos:nxt])
                    except DECODE_ERRORS:
                        break
                    yield Record(base + pos, length, doc)
                else:
                    yield Record(base + pos, length)
                pos = nxt
            w.pos = pos
            if w.offset >= end:
                return
            yield from _careful_step(w, decode, size, max_doc)
    finally:
        os.close(fd)


def _careful_step(w: _Window, decode: bool, size: int, max_doc: int) -> Iterator[Record]:
    """Read one slot where the fast path stopped: refill, or name and skip the damage."""
    off = w.offset
    w.fill(4)
    if w.avail < 4:
        if w.avail:
            got = w.avail
            w.pos = len(w.buf)
            yield Record(off, got, error=f"{TRUNCATED}: file ends in its length")
        elif w.eof:
            w.pos = len(w.buf)
        return
    (length,) = INT32.unpack_from(w.buf, w.pos)
    if length > max_doc and _looks_like_document(w):
        yield _too_large(w, length, size, max_doc)
        return
    err = None
    if MIN_DOC <= length <= max_doc:
        w.fill(length)
        if w.avail < length:
            err = f"{TRUNCATED}: expects {length} bytes, file has {w.avail}"
    if err is None:
        err = _doc_error(w.buf, w.pos, length, max_doc)
    if err is None:
        try:
            doc = bson.decode(w.buf[w.pos : w.pos + length]) if decode else None
        except DECODE_ERRORS as exc:
            err = f"undecodable document: {exc}"
        else:
            inner = _inner_start(w, length, size, max_doc)
            if inner is None:
                w.pos += length
                yield Record(off, length, doc)
            else:
                w.pos += inner
                yield Record(off, inner, error=f"invalid document length {length}: runs into "
                             f"the document at offset {off + inner}; skipped {inner} bytes "
                             "to the next document")
            return
    skipped = _resync(w, max_doc)
    if err.startswith(TRUNCATED) and w.offset < size:
        # Not the file's last document after all: a bad length prefix, not a cut.
        err = f"invalid document length {length}: runs past the next document"
    if err.startswith(TRUNCATED):
        yield Record(off, skipped, error=err)
    else:
        yield Record(off, skipped, error=f"{err}; skipped {skipped} bytes to the next document")


def _inner_start(w: _Window, length: int, size: int, max_doc: int) -> int | None:
    """Where a document starts inside the well-framed one at ``w.pos``, if the next
    document does not start right after it; None if the frame stands.

    A document cut in its last bytes, followed by another, can still frame and decode:
    its frame borrows the next one's first bytes (a length prefix ends with NUL bytes).
    Then no ``_id`` key follows the frame, and the next document is found inside it,
    by its ``_id`` anchor, framed and decodable. Where a frame ends just before another
    ``_id`` key, or no document starts inside it, the frame stands: garbage after a
    whole document is garbage. What this cannot see (a document swallowed whole by a
    frame that ends where a document starts) is pinned in tests/test_catalogue.py.
    """
    if w.offset + length >= size:
        return None
    w.fill(length + 9)
    p = w.pos
    if w.buf.startswith(ID_KEY, p + length + 5):
        return None
    buf = w.buf
    hit = buf.find(ID_KEY, p + 6, min(p + length + 8, len(buf)))
    while hit >= 0:
        cand = hit - 5
        (n,) = INT32.unpack_from(buf, cand)
        if MIN_DOC <= n <= max_doc and w.base + cand + n <= size and _end_is_nul(w, cand, n):
            raw = buf[cand:cand + n] if cand + n <= len(buf) else \
                os.pread(w.fd, n, w.base + cand)
            try:
                bson.decode(raw)
            except DECODE_ERRORS:
                pass
            else:
                return cand - p
        hit = buf.find(ID_KEY, hit + 1, min(p + length + 8, len(buf)))
    return None


def _looks_like_document(w: _Window) -> bool:
    """Does a document body start after the length prefix at ``w.pos`` (an element type
    byte, then a NUL-terminated key)? Tells a real oversized document from garbage
    whose first four bytes happen to make a large number."""
    w.fill(4 + 1 + 256)
    head = w.buf[w.pos + 4 : w.pos + 4 + 1 + 256]
    return len(head) > 1 and head[0] in _TYPES and head.find(b"\x00", 1) > 0


def _too_large(w: _Window, length: int, size: int, max_doc: int) -> Record:
    """Skip a document whose prefix claims more than ``max_doc`` bytes, without reading it.

    If the claimed end is framed (a NUL byte there, then valid documents or the end
    of the file), jump there with two small reads; otherwise the claim cannot be
    trusted and the reader scans on to the next document, in constant memory.
    """
    off = w.offset
    claim = f"{TOO_LARGE}: claims {length:,} bytes, over the limit of {max_doc:,}"
    end = off + length
    if end <= size and os.pread(w.fd, 1, end - 1) == b"\x00" and \
            chain_ok(w.fd, end, size, 2, max_doc):
        w.buf, w.base, w.pos, w.eof = b"", end, 0, end >= size
        return Record(off, length, error=f"{claim}; skipped it")
    skipped = _resync(w, max_doc)
    return Record(off, skipped, error=f"{claim}; skipped {skipped} bytes to the next document")


def _resync(w: _Window, max_doc: int = MAX_DOC) -> int:
    """Advance ``w`` to the next decodable document (or EOF); return bytes skipped."""
    start = w.offset
    scan = w.pos + 1
    while True:
        hit = w.buf.find(ID_KEY, max(scan, w.pos + 5))
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
        (length,) = INT32.unpack_from(w.buf, cand)
        if MIN_DOC <= length <= max_doc and _end_is_nul(w, cand, length):
            w.fill(rel + length)
            cand = w.pos + rel
            if len(w.buf) - cand >= length and _doc_error(w.buf, cand, length, max_doc) is None:
                try:
                    bson.decode(w.buf[cand : cand + length])
                except DECODE_ERRORS:
                    pass
                else:
                    w.pos = cand
                    return w.offset - start
        scan = w.pos + rel + 6


def _end_is_nul(w: _Window, cand: int, length: int) -> bool:
    """Cheap test of a candidate's last byte, before reading all of it: garbage full of
    ``_id`` anchors claiming megabytes must not make the scan re-read megabytes each."""
    last = cand + length - 1
    if last < len(w.buf):
        return w.buf[last] == 0
    return os.pread(w.fd, 1, w.base + last) == b"\x00"


def check_is_bson(path: str | os.PathLike) -> None:
    """Raise ``NotBSONError`` unless the file starts with a decodable BSON document.

    An empty file passes: it is a valid dump of zero products, and so does a file
    whose first document is merely over the size limit (it is a reject, not a
    wrong file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BSON file not found: {path}")
    first = next(iter_records(path), None)
    if first is not None and first.error is not None and \
            not first.error.startswith(TOO_LARGE):
        with open(path, "rb") as f:
            head = f.read(8)
        raise NotBSONError(
            f"{path} is not a BSON file (first document: {first.error}; first bytes {head!r}). "
            "Expected a mongodump-style file such as Cdiscount's train.bson."
        )


def skip_documents(path: str | os.PathLike, n: int, start: int = 0,
                   max_doc: int = MAX_DOC) -> int:
    """Offset of the document after the first ``n`` slots from ``start`` (framing only)."""
    pos = start
    for i, rec in enumerate(iter_records(path, start, decode=False, max_doc=max_doc)):
        if i == n:
            return rec.offset
        pos = rec.offset + rec.length
    return pos
