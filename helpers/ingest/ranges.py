"""Document-aligned byte ranges of a BSON file: how the catalogue pass (processes) and
``helpers.scale.distributed`` (Dask tasks) cut one file into ranges that workers scan
independently.

`find_document_start` finds the first real document start at or after an offset;
`partition_offsets` cuts a file into about equal ranges with it. Both are re-exported by
`helpers.ingest.bson_store`. Imports the stdlib and `helpers.ingest.framing` only.
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers.ingest.framing import CHUNK, ID_KEY, MAX_DOC, chain_ok


def find_document_start(path: str | os.PathLike, offset: int, links: int = 3,
                        max_doc: int = MAX_DOC) -> int:
    """The first document start at or after byte ``offset`` (the file size if none).

    A start must be followed by a chain of ``links`` valid documents, so a stray
    ``_id`` inside a JPEG is not taken for one. Used to split a file into
    partitions that workers (processes, Dask tasks) scan independently.
    """
    size = Path(path).stat().st_size
    if offset <= 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = offset
        while pos < size:
            buf = os.pread(fd, CHUNK, pos)
            hit = buf.find(ID_KEY)
            while hit >= 0:
                cand = pos + hit - 5
                if cand >= offset and chain_ok(fd, cand, size, links, max_doc):
                    return cand
                hit = buf.find(ID_KEY, hit + 1)
            if len(buf) < CHUNK:
                break
            pos += len(buf) - len(ID_KEY)  # an anchor may straddle the chunk edge
        return size
    finally:
        os.close(fd)


def partition_offsets(path: str | os.PathLike, parts: int, max_doc: int = MAX_DOC) -> list[int]:
    """Document-aligned offsets ``[0, ..., size]`` cutting the file into ``parts`` ranges
    of about equal size; range ``i`` holds the documents starting in
    ``[offsets[i], offsets[i + 1])``."""
    size = Path(path).stat().st_size
    cuts = [find_document_start(path, size * i // parts, max_doc=max_doc)
            for i in range(1, parts)]
    return sorted({0, *cuts, size})
