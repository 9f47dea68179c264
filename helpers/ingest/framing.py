"""How documents sit in a mongodump BSON file: the framing rules the reader and the range
cutter share.

A document is a little-endian int32 length prefix, its body, and a NUL byte; mongodump
writes ``_id`` first, so a document starts 5 bytes before ``"_id\\0"`` (4 length bytes +
1 type byte): the anchor used to find a document start after garbage or at an arbitrary
offset. `chain_ok` tells a real start from a stray anchor (inside a JPEG) by reading the
documents that follow it. Used by `helpers.ingest.bson_store` (the streaming reader) and
`helpers.ingest.ranges` (document-aligned byte ranges). Imports the stdlib and ``bson``.
"""

from __future__ import annotations

import os
import struct

import bson
from bson.errors import BSONError

# BSON documents are at most 16 MiB (MongoDB's limit); the smallest is 5 bytes ("{}").
# MAX_DOC is the default of ``max_doc``: a slot whose length prefix claims more is
# refused without being read (a bad prefix must not make the reader allocate 2 GB).
MIN_DOC = 5
MAX_DOC = 16 * 1024 * 1024
CHUNK = 8 * 1024 * 1024
INT32 = struct.Struct("<i")
# mongodump writes `_id` first, so a document starts 5 bytes before "_id\0"
# (4 length bytes + 1 type byte): the anchor used to resynchronise after garbage.
ID_KEY = b"_id\x00"

# What bson.decode raises on bad bytes (InvalidBSON and friends; a bad UTF-8 key is a
# ValueError, a datetime out of range an OverflowError).
DECODE_ERRORS = (BSONError, ValueError, OverflowError)


def chain_ok(fd: int, pos: int, size: int, links: int, max_doc: int = MAX_DOC) -> bool:
    """True if ``links`` well-framed, decodable documents follow each other from ``pos``
    (or the file ends cleanly after fewer)."""
    for _ in range(links):
        if pos == size:
            return True
        head = os.pread(fd, 4, pos)
        if len(head) < 4:
            return False
        (length,) = INT32.unpack(head)
        if length < MIN_DOC or length > max_doc or pos + length > size:
            return False
        raw = os.pread(fd, length, pos)
        if raw[-1] != 0:
            return False
        try:
            bson.decode(raw)
        except DECODE_ERRORS:
            return False
        pos += length
    return True
