"""Walking the layers of a nested FAISS index: the one walker of the index layer.

FAISS builds indexes as wrappers around wrappers: an IndexIDMap / IndexIDMap2 (ids) or an
IndexPreTransform (PCA, OPQ ...) holds its `index`, an IndexRefine re-ranks the candidates
of its `base_index`; the innermost layer does the search (IVF, HNSW, Flat, PQ ...). Knobs
and search parameters belong to particular layers (nprobe to the IVF, efSearch to the
HNSW, k_factor to the Refine), so code that sets them walks down to find the layer:

    ivf = find(index, faiss.IndexIVF)        # None when there is none
    for layer in layers(index): ...          # outermost first, each downcast

Search knobs are passed per call (`search_params`), never set on a shared index: threads
of an app search the same index, and one call's nprobe must not leak into another's.
`id_selector` makes the category filter's selector (a hash set, or a bitmap of rows);
`list_of_ids` and `search_in_lists` probe only the IVF lists that hold a filter's members.

Used by `helpers.index.faiss_index` and `helpers.index.compressed`. Imports faiss and numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import faiss
import numpy as np

T = TypeVar("T")

# A bitmap of n rows (n / 8 bytes) beats a hash set (~50 bytes an id) above n / 400 ids.
BITMAP_SHARE = 400

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


def search_params(index: faiss.Index, knobs: Mapping[str, float] | None = None,
                  sel: Any = None) -> tuple[faiss.SearchParameters | None, list[Any]]:
    """Per-call parameters for ``index.search(..., params=)``, nested as its layers are
    (PreTransform -> Refine -> IVF / HNSW), with the knobs (nprobe, efSearch, k_factor; a
    layer's own value where not given) and an ID selector on the layers that use them.

    Returns (params, keep): FAISS nests the objects by C++ pointer, so the caller keeps
    ``keep`` alive until the search returns. IDMap layers pass params on (and translate the
    selector's ids themselves).
    """
    knobs = knobs or {}
    keep: list[Any] = [] if sel is None else [sel]
    p = None
    for layer in reversed(layers(index)):  # innermost first: each wraps what is below
        if isinstance(layer, faiss.IndexIDMap | faiss.IndexIDMap2):
            continue
        if isinstance(layer, faiss.IndexPreTransform):
            outer = faiss.SearchParametersPreTransform()
            if p is not None:
                outer.index_params = p
            p = outer
        elif isinstance(layer, faiss.IndexRefine):
            p = faiss.IndexRefineSearchParameters(
                k_factor=float(knobs.get("k_factor", layer.k_factor)), base_index_params=p)
        elif isinstance(layer, faiss.IndexIVF):
            p = faiss.SearchParametersIVF(
                nprobe=min(int(knobs.get("nprobe", layer.nprobe)), layer.nlist))
        elif isinstance(layer, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW(
                efSearch=int(knobs.get("efSearch", layer.hnsw.efSearch)))
        else:
            p = faiss.SearchParameters()
        if sel is not None and not isinstance(layer, faiss.IndexRefine | faiss.IndexPreTransform):
            p.sel = sel
        keep.append(p)
    return p, keep


def id_selector(ids: np.ndarray, rows: int | None = None) -> faiss.IDSelector:
    """A FAISS ID selector of `ids`: an IDSelectorBatch (hash set + Bloom filter), or,
    when `ids` are row numbers below `rows` and many, a bitmap of the rows (cheaper in
    memory, one bit test an id). Either keeps what it needs alive itself."""
    ids = np.asarray(ids, np.int64)
    if rows is None or len(ids) * BITMAP_SHARE <= rows:
        return faiss.IDSelectorBatch(ids)
    member = np.zeros(rows, bool)
    member[ids] = True
    # FAISS tests bit (id & 7) of byte id >> 3: little bit order.
    bitmap = np.packbits(member, bitorder="little")
    return faiss.IDSelectorBitmap(bitmap)  # the one-argument form references the array


def list_of_ids(ivf: faiss.IndexIVF, n: int) -> np.ndarray:
    """The inverted list of each id 0..n-1 (ids being row numbers), read once from the
    lists' ids (2 bytes an id while nlist < 65536): which lists hold a filter's members."""
    out = np.zeros(n, np.uint16 if ivf.nlist <= 2**16 else np.int32)  # every id is in one
    lists = ivf.invlists
    for no in range(ivf.nlist):
        size = lists.list_size(no)
        if size:
            out[faiss.rev_swig_ptr(lists.get_ids(no), size)] = no
    return out


def search_in_lists(index: faiss.Index, x: np.ndarray, k: int, lists: np.ndarray,
                    lists_sel: Any, sel: Any, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """IVF search of `x` (before any PreTransform) that probes only `lists` (sorted list
    numbers, `lists_sel` their selector), the nprobe nearest of them, with `sel` on the
    ids: a filter whose members fill few lists scans those, not the lists nearest the
    query. Returns (distances, ids) as `index.search` does."""
    for layer in layers(index):
        if isinstance(layer, faiss.IndexPreTransform):
            for i in range(layer.chain.size()):
                x = faiss.downcast_VectorTransform(layer.chain.at(i)).apply(x)
    ivf = find(index, faiss.IndexIVF)
    nprobe = max(1, min(nprobe, len(lists)))
    coarse = faiss.SearchParameters()
    coarse.sel = lists_sel
    dq, iq = ivf.quantizer.search(x, nprobe, params=coarse)
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    params.sel = sel
    d = np.empty((len(x), k), np.float32)
    ids = np.empty((len(x), k), np.int64)
    # The C++ call: the Python wrapper refuses per-call parameters.
    ivf.search_preassigned_c(len(x), faiss.swig_ptr(np.ascontiguousarray(x)), k,
                             faiss.swig_ptr(iq), faiss.swig_ptr(dq), faiss.swig_ptr(d),
                             faiss.swig_ptr(ids), False, params)
    return d, ids
