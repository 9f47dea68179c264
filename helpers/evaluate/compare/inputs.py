"""What every method of a comparison is measured on: an embedding's vectors at both levels,
the products' categories, and the seeded samples of query products and query pictures.

Imports helpers.core, helpers.vectors (the product mean), helpers.evaluate (the method, the
metrics); helpers.models only to load an extractor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from helpers.catalogue.protocol import Catalogue
from helpers.core import ids as item_ids
from helpers.core.errors import MethodUnavailable
from helpers.evaluate.method import Method
from helpers.evaluate.metrics import multi_item_products
from helpers.vectors.means import product_means

CATEGORY_COLUMNS = ["product_id", "category_id", "level1", "category"]


@dataclass
class Vectors:
    """One embedding's vectors at both levels, from one image-level store."""

    embedding: str
    image_ids: np.ndarray  # item ids (helpers.core.ids, level "image")
    image_vectors: np.ndarray
    product_ids: np.ndarray  # ascending
    product_vectors: np.ndarray  # helpers.vectors.means.product_means of its pictures
    made_by: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_pictures(cls, embedding: str, image_ids: np.ndarray, image_vectors: np.ndarray,
                      made_by: dict[str, Any] | None = None) -> Vectors:
        """Product vectors derived from the pictures' (what the embedding pipeline would
        store at product level), so that each picture is embedded once."""
        image_ids = np.asarray(image_ids, np.int64)
        image_vectors = np.asarray(image_vectors, np.float32)
        pids, means = product_means(item_ids.decode(image_ids, "image")[0], image_vectors)
        order = np.argsort(pids, kind="stable")  # products ascending, whatever the store order
        return cls(embedding, image_ids, image_vectors, pids[order], means[order],
                   dict(made_by or {}))

    @property
    def dim(self) -> int:
        return int(self.image_vectors.shape[1])


def load_embedder(model: str) -> Any:
    """The extractor of an embedding's model: "style" (VGG16), a runtime (MobileNetV2 on
    it) or a network (on onnx)."""
    from helpers import models

    if model == "style":
        return models.load_style_extractor()
    if model in models.RUNTIMES:
        return models.load_extractor("mobilenet_v2", model)
    if model in models.NETS:
        return models.load_extractor(model, "onnx")
    raise MethodUnavailable(f"no runtime or model {model!r} in helpers.models.RUNTIMES "
                      f"({', '.join(models.RUNTIMES)}) or NETS ({', '.join(models.NETS)})")


def embed(ws: Any, catalogue: Catalogue, images: Any, method: Method, *,
          products: np.ndarray | None = None, **kw: Any) -> Vectors:
    """The embedding's vectors of the run (built once by the workspace, then reused).

    images: the pictures (``ws.images(bson_path)``, an ImageSource, or the BSON path).
    products: only the pictures of these products (a sample of a large catalogue: only
    their rows of the memory-mapped store are read)."""
    extractor = load_embedder(method.model)
    store = ws.vectors(catalogue, images, extractor, image_size=method.image_size,
                       level="image", **kw)
    ids, vectors = store.item_ids, store.vectors
    if products is not None:
        rows = np.flatnonzero(np.isin(item_ids.decode(ids, "image")[0], products))
        ids, vectors = ids[rows], vectors[rows]
    return Vectors.from_pictures(method.embedding, ids, vectors, store.made_by)


def product_sample(catalogue: Catalogue, n: int | None, seed: int = 0) -> np.ndarray | None:
    """A seeded sample of ``n`` product ids, or None (every product) when there are no
    more than ``n``: what a comparison of a catalogue too large to index whole runs on."""
    if n is None or len(catalogue) <= n:
        return None
    return sample(np.asarray(catalogue.ids(), np.int64), n, np.random.default_rng(seed))


def category_frame(catalogue: Catalogue, product_ids: np.ndarray) -> pd.DataFrame:
    """category_id, level-1 name and leaf name of each product, from a
    ``helpers.catalogue.protocol.Catalogue`` ("?" where a category has no names)."""
    pids = np.asarray(product_ids, np.int64)
    leaf = np.asarray(catalogue.category_ids(pids), np.int64)
    paths = {int(c): catalogue.category_path(int(c)) for c in np.unique(leaf)}
    level1 = np.array([(paths[int(c)] or ("?",))[0] for c in leaf], object)
    leaf_name = np.array([(paths[int(c)] or ("?", "?", str(c)))[-1] for c in leaf], object)
    return pd.DataFrame({"product_id": pids, "category_id": leaf, "level1": level1,
                         "category": leaf_name})


def sample(ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most n of ids, ascending (all of them when there are no more than n)."""
    if len(ids) <= n:
        return np.asarray(ids, np.int64)
    return np.sort(rng.choice(ids, n, replace=False)).astype(np.int64)


def queries(v: Vectors, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(query products, query pictures): seeded samples of at most n each. A picture is a
    query only if its product has another picture to find."""
    queries_p = sample(v.product_ids, n, rng)
    multi = multi_item_products(v.image_ids, "image")
    pics = v.image_ids[np.isin(item_ids.decode(v.image_ids, "image")[0], multi)]
    return queries_p, sample(pics, n, rng)
