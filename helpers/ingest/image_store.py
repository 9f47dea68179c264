"""Read a product back from a BSON file by the ``(offset, length)`` the catalogue recorded.

One ``pread`` a product: the BSON file is the image store, nothing is extracted to disk.
Re-exported by `helpers.ingest.bson_store`. Imports the stdlib and ``bson`` only.
"""

from __future__ import annotations

import os
from pathlib import Path

import bson


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
