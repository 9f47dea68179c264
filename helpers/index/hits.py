"""Search hits: the one `Hit` of the project, and `SearchResult` rows turned into hits.

    from helpers.index.hits import Hit, to_hits
    res = index.search(q, k=10)
    to_hits(res, level="image")   # [Hit(product_id, score, image_index), ...], best first

An index returns item ids (`helpers.core.ids`): product ids at product level, packed
(product id, picture index) ids at image level, and -1 to pad a missing result. A `Hit`
holds the decoded product id, its score and, at image level, the matched picture. The
notebooks' galleries (`helpers.gallery`) and the apps (`helpers.serve`) both use it.

Imports numpy, `helpers.core.ids` and the index protocol's `SearchResult` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from helpers.core import ids as item_ids
from helpers.index.protocol import SearchResult


@dataclass(frozen=True)
class Hit:
    """One product found: its id, cosine score (None for a query shown as a tile) and,
    at image level, the index of the picture that matched (None: the product's first
    usable picture)."""

    product_id: int
    score: float | None = None
    image_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the score rounded to 6 decimals."""
        return {"product_id": self.product_id,
                "score": None if self.score is None else round(self.score, 6),
                "image_index": self.image_index}


def as_hit(item_id: int, level: str = "product", score: float | None = None) -> Hit:
    """The hit of one index item id (a product id, or a packed image id at image level)."""
    pid, idx = item_ids.product_of(item_id, level)
    return Hit(pid, score, idx)


def to_hits(result: SearchResult, row: int = 0, level: str = "product") -> list[Hit]:
    """One query's row of a ``SearchResult`` as hits, best first; padding (id -1) dropped.

    level: ``"image"`` decodes packed image ids, so each hit names the matched picture.
    """
    pids, idx = item_ids.decode(result.ids[row], level)  # padding decodes to product -1
    scores = np.asarray(result.scores[row]).tolist()
    return [Hit(int(p), float(s), None if i < 0 else int(i))
            for p, i, s in zip(pids.tolist(), idx.tolist(), scores, strict=True) if p >= 0]
