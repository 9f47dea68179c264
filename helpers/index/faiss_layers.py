"""Walking the layers of a nested FAISS index: the one walker of the index layer.

FAISS builds indexes as wrappers around wrappers: an IndexIDMap / IndexIDMap2 (ids) or an
IndexPreTransform (PCA, OPQ ...) holds its `index`, an IndexRefine re-ranks the candidates
of its `base_index`; the innermost layer does the search (IVF, HNSW, Flat, PQ ...). Knobs
and search parameters belong to particular layers (nprobe to the IVF, efSearch to the
HNSW, k_factor to the Refine), so code that sets them walks down to find the layer:

    ivf = find(index, faiss.IndexIVF)        # None when there is none
    for layer in layers(index): ...          # outermost first, each downcast

Used by `helpers.index.faiss_index` and `helpers.index.compressed`. Imports faiss only.
"""

from __future__ import annotations

from typing import TypeVar

import faiss

T = TypeVar("T")

# Wrappers whose `index` is the next layer down (search parameters pass through them).
WRAPPERS = (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)


def layers(index: faiss.Index) -> list[faiss.Index]:
    """The index and the indexes it wraps, outermost first, each downcast to its class
    (IDMap -> PreTransform -> Refine -> IVF, say). The Refine's own refine_index (the
    codes it re-ranks with) is not a layer of the search path and is left out."""
    out = [faiss.downcast_index(index)]
    while True:
        top = out[-1]
        if isinstance(top, WRAPPERS):
            out.append(faiss.downcast_index(top.index))
        elif isinstance(top, faiss.IndexRefine):
            out.append(faiss.downcast_index(top.base_index))
        else:
            return out


def find(index: faiss.Index, kind: type[T]) -> T | None:
    """The outermost layer that is a `kind` (e.g. faiss.IndexIVF), or None."""
    return next((x for x in layers(index) if isinstance(x, kind)), None)


def has(index: faiss.Index, kind: type) -> bool:
    """Whether some layer is a `kind`."""
    return find(index, kind) is not None
