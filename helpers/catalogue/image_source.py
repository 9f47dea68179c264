"""The image-source protocol: a product's pictures, wherever they are stored.

    source = BsonImageSource("train.bson")
    jpegs = source.pictures(product)        # encoded bytes, every picture of the product
    rgb = source.image(product, 0)          # decoded uint8 [H, W, 3]

Implementations: the BSON dump read by offset (`BsonImageSource`) and a folder of
``<product_id>_<i>.jpg`` files (`JpegFolderSource`, what `export_jpegs` writes). The
embedder, the galleries and the apps take any of them.

Imports numpy, helpers.catalogue.protocol and helpers.ingest (bson_store, jpeg).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from helpers.catalogue.protocol import Product
from helpers.ingest.bson_store import BsonImageStore
from helpers.ingest.jpeg import ImageError, decode_image

PLACEHOLDER_RGB = 200  # a grey tile stands in for a picture that does not decode


@runtime_checkable
class ImageSource(Protocol):
    def pictures(self, product: Product) -> list[bytes]:
        """Every encoded picture of the product (bad ones included), in order."""

    def close(self) -> None: ...


def image(source: ImageSource, product: Product, index: int | None = None,
          size: int | None = None, placeholder: bool = True) -> np.ndarray:
    """One decoded picture (the first usable one by default) as uint8 RGB.

    A picture that does not decode becomes a grey tile (shown, not hidden) unless
    ``placeholder=False``, when the ImageError is raised.
    """
    usable = product.usable_images
    if index is None:
        if not usable:
            if not placeholder:
                raise ImageError(f"product {product.product_id} has no usable picture")
            return np.full((size or 180, size or 180, 3), PLACEHOLDER_RGB, np.uint8)
        index = usable[0]
    pics = source.pictures(product)
    if not 0 <= index < len(pics):
        raise IndexError(f"product {product.product_id} has {len(pics)} pictures, "
                         f"no picture {index}")
    try:
        return decode_image(pics[index], size)
    except ImageError:
        if not placeholder:
            raise
        return np.full((size or 180, size or 180, 3), PLACEHOLDER_RGB, np.uint8)


class BsonImageSource:
    """Pictures read from the BSON dump by the product's offset and length (pread)."""

    def __init__(self, bson_path: str | os.PathLike) -> None:
        self.path = Path(bson_path)
        self._local = threading.local()  # one file handle per thread (apps serve in threads)

    def _store(self) -> BsonImageStore:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = BsonImageStore(self.path)
        return store

    def pictures(self, product: Product) -> list[bytes]:
        if product.offset < 0:
            raise ValueError(f"product {product.product_id} has no BSON offset")
        return self._store().pictures(product.offset, product.length)

    def close(self) -> None:
        store = getattr(self._local, "store", None)
        if store is not None:
            store.close()
            self._local.store = None

    def __repr__(self) -> str:
        return f"BsonImageSource({self.path})"


class JpegFolderSource:
    """Pictures stored as ``<folder>/[<category_id>/]<product_id>_<i>.jpg`` files."""

    def __init__(self, folder: str | os.PathLike, by_category: bool = False) -> None:
        self.folder = Path(folder)
        self.by_category = by_category

    def _path(self, product: Product, i: int) -> Path:
        base = self.folder / str(product.category_id) if self.by_category else self.folder
        return base / f"{product.product_id}_{i}.jpg"

    def pictures(self, product: Product) -> list[bytes]:
        out = []
        for i in range(product.n_images):
            p = self._path(product, i)
            # export_jpegs skips bad pictures: an absent file is an empty (unusable) picture
            out.append(p.read_bytes() if p.is_file() else b"")
        return out

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"JpegFolderSource({self.folder})"
