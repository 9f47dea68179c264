"""Vector stores (single and sharded) and the embedding pipeline that fills them.

    from helpers.vectors import open_store
    store = open_store("runs/x/artifacts/vectors/mobilenet_v2-onnx-180px-product-ab12")

``open_store`` opens either layout (a single store's ``meta.json``, or a Dask run's
``shards.json``); both answer the same read API (``helpers.vectors.store.StoreReads``).
Imports helpers.core, helpers.catalogue and helpers.models' interface only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from helpers.vectors.sharded import MANIFEST as SHARDS_MANIFEST
from helpers.vectors.sharded import ShardedVectorStore
from helpers.vectors.store import META, StoreReads, VectorStore, VectorStoreError

__all__ = ["ShardedVectorStore", "StoreReads", "VectorStore", "VectorStoreError", "open_store"]


def open_store(folder: str | os.PathLike,
               expect: Mapping[str, Any] | None = None) -> VectorStore | ShardedVectorStore:
    """The finished vector store in ``folder``, single or sharded (VectorStoreError if none)."""
    folder = Path(folder)
    if (folder / SHARDS_MANIFEST).exists():
        return ShardedVectorStore(folder, expect=dict(expect) if expect else None)
    if (folder / META).exists():
        return VectorStore(folder, expect=expect)
    raise VectorStoreError(f"no vector store in {folder} (neither {META} nor {SHARDS_MANIFEST})")
