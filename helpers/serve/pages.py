"""What a page shows beside the hits: their products' labels and pictures, category
names, and the product picker's search.

    from helpers.serve.pages import category_names, describe, find_products
    describe(rel, hits)                         # [{product_id, score, label, picture, ...}]
    find_products(catalogue, "chaussures")      # a picker's search box: id, category, words

``catalogue`` is anything with the Catalogue methods used (``products``, ``product``,
``page``, ``by_category``, ``category_ids``, ``category_path``, ``ids``): a Catalogue, or
a `helpers.serve.related.Related` for ``describe`` (its product cache).

Imports numpy, the catalogue protocol and `helpers.index.hits` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from helpers.catalogue.protocol import UnknownProductError
from helpers.index.hits import Hit


def describe(catalogue: Any, hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Hits with what a page shows: category path, label, the picture to show (the hit's
    own picture at image level, else the product's first usable one; None if it has none).

    ``catalogue``: anything with ``products(ids)``: a Catalogue, or a `Related` (cached).
    """
    if not hits:
        return []
    products = {p.product_id: p for p in catalogue.products([h.product_id for h in hits])}
    out = []
    for h in hits:
        p = products[h.product_id]
        usable = p.usable_images
        picture = h.image_index if h.image_index is not None else (usable[0] if usable else None)
        out.append({**h.to_dict(), "category_id": p.category_id,
                    "category_path": list(p.category_path) if p.category_path else None,
                    "label": p.label, "picture": picture})
    return out


def category_names(catalogue: Any) -> dict[int, str]:
    """Category id -> "level1 › level2 › level3" for every category of the catalogue."""
    cids = np.unique(catalogue.category_ids(catalogue.ids()))
    out = {}
    for cid in cids.tolist():
        if cid < 0:
            continue
        path = catalogue.category_path(cid)
        out[int(cid)] = " › ".join(path) if path else str(cid)
    return out


def find_products(catalogue: Any, query: str, limit: int = 50,
                  categories: dict[int, str] | None = None) -> list[Any]:
    """Products matching a picker's search box: a product id, a category id, or words of a
    category name (case-insensitive, every word must appear). Empty: the first products."""
    q = (query or "").strip()
    if not q:
        return catalogue.page(0, limit)
    found: list[Any] = []
    if q.isdecimal() and q.isascii() and len(q) <= 18:
        try:
            found.append(catalogue.product(int(q)))
        except UnknownProductError:
            pass
        found += catalogue.by_category(int(q), limit=limit)
        return found[:limit]
    words = q.casefold().split()
    names = categories if categories is not None else category_names(catalogue)
    for cid, name in names.items():
        if all(w in name.casefold() for w in words):
            found += catalogue.by_category(cid, limit=limit - len(found))
            if len(found) >= limit:
                break
    return found[:limit]
