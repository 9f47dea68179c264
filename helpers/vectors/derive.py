"""A product-level store derived from an image-level one: each picture embedded once.

    pictures = embed_catalogue(catalogue, images, extractor, folder_i, level="image")
    products = product_store(pictures, folder_p)   # the mean of each product's pictures

The network runs once per picture whatever the level asked: a run that needs both levels
(02-05 search products, 06 also finds pictures of the same product) embeds the pictures
and derives the products' means (``helpers.vectors.means``, the definition the embedding
pipeline uses at product level). The derived store carries the settings a product-level
embedding would record, so it is found, checked and reused like one; its meta.json says it
was derived, and from which store. Imports numpy and helpers.vectors.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from helpers.core import artifacts
from helpers.vectors.means import product_means
from helpers.vectors.store import (
    REJECTS,
    StoreReads,
    VectorStore,
    VectorStoreError,
    VectorWriter,
    read_meta,
)

log = logging.getLogger(__name__)

CHUNK = 65_536  # pictures read at a time from the (memory-mapped) image-level store


def product_store(pictures: StoreReads, out_dir: str | os.PathLike) -> VectorStore:
    """The product-level store of ``pictures`` (an image-level store) at ``out_dir``.

    A finished store there with the same settings is returned as is; one made by other
    settings is refused (as ``embed_catalogue`` refuses it). The store is built in a hidden
    folder beside ``out_dir`` and renamed into place when finished. Products are written in the
    order of the pictures (the catalogue's), each the mean of its unit picture vectors.
    """
    if pictures.level != "image":
        raise VectorStoreError(f"{pictures.folder}: a product store is derived from an "
                               f"image-level store, not a {pictures.level!r} one")
    out_dir = Path(out_dir)
    made_by = {**pictures.made_by, "level": "product"}
    old = read_meta(out_dir)
    if old is not None:
        diff = artifacts.settings_diff(old["made_by"], made_by)
        if diff:
            raise VectorStoreError(
                f"{out_dir} holds vectors made by other settings ("
                + artifacts.describe_diff(diff, "is", "now") + "); move it away to rebuild")
        if old.get("complete"):
            return VectorStore(out_dir)
    def build(tmp: Path) -> None:
        writer = VectorWriter(tmp, pictures.dim, made_by, resume=False)
        pids = np.asarray(pictures.product_ids, np.int64)
        n, start = len(pids), 0
        while start < n:
            stop = min(start + CHUNK, n)
            if stop < n:  # end the chunk where a product ends: its pictures stay together
                differ = np.flatnonzero(pids[start:stop] != pids[stop])
                if len(differ):
                    stop = start + int(differ[-1]) + 1
                else:  # one product with more pictures than a chunk: take all of them
                    after = np.flatnonzero(pids[stop:] != pids[stop])
                    stop += int(after[0]) if len(after) else n - stop
            ids, means = product_means(pids[start:stop],
                                       np.asarray(pictures.vectors[start:stop]))
            writer.append(means, ids, np.full(len(ids), -1), 0, images=stop - start)
            start = stop
        meta = pictures.meta
        writer.meta["next_row"] = meta.get("next_row", 0)  # the catalogue row embedded to
        if (Path(pictures.folder) / REJECTS).exists():
            shutil.copyfile(Path(pictures.folder) / REJECTS, tmp / REJECTS)
        writer.close(failed_images=meta.get("failed_images", 0),
                     seconds=meta.get("seconds", 0),
                     derived_from=str(Path(pictures.folder).resolve()),
                     derived_from_id=pictures.id)

    # Built in a hidden sibling, then renamed into place: a killed derivation leaves no
    # half store that a later run could take for a resumable embedding.
    store = VectorStore(artifacts.publish_dir(out_dir, build))
    log.info("%s: %s products derived from the %s pictures of %s", out_dir, len(store),
             len(pictures), pictures.folder)
    return store
