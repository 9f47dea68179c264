"""What a search method is: an embedding (a model at a picture size) and an index.

One class for both places that name methods:

- the comparison of ``06_compare`` (``helpers.evaluate.compare``) writes them
  ``"<model>-<size>/<index>"`` and parses them with `parse_method`;
- the apps (``helpers.serve.loader``) open one per engine (``"faiss"``, ``"annoy"``...), with
  its index and the vector store it was built from, or the reason it cannot serve.

Imports nothing of helpers (the standard library only): evaluate and serve both use it, and
serve may import evaluate, never the other way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Index kinds of a comparison: numpy, FAISS (flat, ivf, hnsw, ivfpq), Annoy, Elasticsearch.
INDEXES = ("exact", "flat", "ivf", "hnsw", "ivfpq", "annoy", "elasticsearch")
DEFAULT_IMAGE_SIZE = 224  # what a vector store made before image sizes were recorded used


class MethodError(ValueError):
    """A method string that does not parse."""


@dataclass
class Method:
    """One search method: what makes its vectors, and the index that searches them.

    A method of a comparison is a plan (``index`` is None until it is measured); a method
    of an app is opened: ``index`` and ``store`` are set, or ``reason`` says why not.
    """

    name: str  # "onnx-224/hnsw" (a comparison) or the engine, "faiss" (an app)
    model: str = ""  # "style", a runtime (MobileNetV2 on it) or a network; "" if not told
    image_size: int | None = None  # picture side the vectors are made at (None: the store's)
    kind: str = ""  # the index kind, one of INDEXES (a comparison)
    label: str = ""  # the name people read ("" -> name)
    index: Any = None  # the opened helpers.index VectorIndex
    store: Any = None  # the helpers.vectors store the index was built from
    reason: str | None = None  # why it cannot serve (None: it can)
    upload: bool = False  # can a new photo be searched (its vectors come from ONNX)?

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.name
        if self.image_size is None and self.store is not None:
            self.image_size = int(self.store.made_by.get("image_size", DEFAULT_IMAGE_SIZE))

    @property
    def embedding(self) -> str:
        """``"<model>-<size>"``: methods with the same embedding search the same vectors."""
        return f"{self.model}-{self.image_size}"

    @property
    def available(self) -> bool:
        return self.reason is None and self.index is not None

    @property
    def level(self) -> str:
        """"product" (one vector a product) or "image" (one a picture), as the store says."""
        return self.store.made_by.get("level", "product") if self.store is not None else "product"


def parse_method(spec: str) -> Method:
    """``"onnx-224/hnsw"`` -> Method(model "onnx", image_size 224, kind "hnsw")."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)-(\d+)\s*/\s*([a-z]+)\s*", spec)
    if not m:
        raise MethodError(f"method {spec!r}: expected '<model>-<size>/<index>', e.g. "
                          "'onnx-224/hnsw' or 'style-180/exact'")
    model, size, index = m.group(1), int(m.group(2)), m.group(3)
    if index not in INDEXES:
        raise MethodError(f"method {spec!r}: index {index!r} is not one of {INDEXES}")
    return Method(f"{model}-{size}/{index}", model=model, image_size=size, kind=index)
