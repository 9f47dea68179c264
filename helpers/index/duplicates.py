"""Near-duplicate pictures and products from their vectors: pairs above a cosine threshold,
found by FAISS range search block by block, joined into clusters (connected components).

    pairs = near_duplicate_pairs(store.vectors, threshold=0.9)      # rows a < b, cosine
    clusters = near_duplicate_clusters(store.item_ids, store.vectors, 0.9, level="image")
    clusters.product_cluster_of([pid, ...])                         # -1: no near duplicate
    clusters.save(folder); NearDuplicates.load(folder)

The vectors are read in blocks of ``block_rows`` from the memmap (`helpers.index.chunks`):
each block becomes a FAISS ``IndexFlatIP`` of its unit rows and is range-searched by the
blocks from it on, so memory holds two blocks, never the store, and every pair above the
threshold is found exactly (time grows with the square of the rows: about n^2 d / 2 flops).
Given ``index``, a FAISS index already holding every row (an IVF of the run, say), each
block range-searches it instead: approximate, and linear in the rows.

Clusters are the connected components of the pairs (scipy.sparse.csgraph), so a chain of
near copies is one cluster. At image level a product cluster joins the products whose
pictures are near duplicates; at product level the two are the same. What is kept is the
items in clusters of two or more (``clusters.parquet``; ``meta.json``: threshold, counts).
Imports numpy, pandas, scipy, faiss and the index layer's chunks and artifacts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from helpers.core import artifacts
from helpers.core.ids import decode
from helpers.index.chunks import UnitChunks

# MobileNetV2 cosine at or above which two pictures are near duplicates: precision first
# (0.99 on both samples' labelled sets, bench/bench_duplicates.py), since a cluster hides
# products from related lists; lower finds more edits (crops, overlays) and more lookalikes.
NEAR_DUP_THRESHOLD = 0.95
BLOCK_ROWS = 16_384  # rows a block: two blocks of 1280-d float32 are 160 MB
CLUSTERS = "clusters.parquet"
META = "meta.json"


def near_duplicate_pairs(vectors: Any, threshold: float, *, block_rows: int = BLOCK_ROWS,
                         index: faiss.Index | None = None) -> tuple[np.ndarray, ...]:
    """(rows a, rows b, cosine) of every pair of rows with cosine >= threshold, a < b.

    vectors: [n, d] (ndarray, memmap, sharded matrix), normalised here block by block.
    index: a FAISS inner-product index holding the same n rows in the same order (its own
    range search is then used, exact or not as the index is); None: exact, block pairs.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine in [-1, 1], not {threshold}")
    chunks = UnitChunks(vectors, block_rows)
    if index is not None and index.ntotal != chunks.n:
        raise ValueError(f"the index holds {index.ntotal} rows, the vectors {chunks.n}")
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for qa, q in chunks:
        if index is not None:
            found.append(_range(index, q, qa, 0, threshold))
            continue
        for ba, b in chunks:
            if ba + len(b) <= qa:
                continue  # pairs of earlier blocks were found from them
            base = faiss.IndexFlatIP(chunks.dim)
            base.add(b)
            found.append(_range(base, q, qa, ba, threshold))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    a, b, s = (np.concatenate(x) for x in zip(*found, strict=True))
    return a, b, s


def _range(index: faiss.Index, q: np.ndarray, qa: int, ba: int, threshold: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs (a < b) of one query block against one base block, in global rows."""
    # range_search keeps scores > radius: a hair below the threshold keeps equal ones.
    lims, scores, rows = index.range_search(q, float(np.nextafter(threshold, -2.0)))
    a = qa + np.repeat(np.arange(len(q), dtype=np.int64), np.diff(lims.astype(np.int64)))
    b = ba + rows.astype(np.int64)
    keep = a < b
    return a[keep], b[keep], scores[keep].astype(np.float32)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cluster label of each of n items joined by the pairs (a, b); -1 for an item alone."""
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    # Labels renumbered 0.. in order of first item, singletons -1: the same pairs give the
    # same labels whatever order scipy numbers its components in.
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    out = rank[labels]
    out[sizes[labels] < 2] = -1
    if (out >= 0).any():
        _, out[out >= 0] = np.unique(out[out >= 0], return_inverse=True)
    return out


@dataclass
class NearDuplicates:
    """Items in near-duplicate clusters of two or more, with their clusters."""

    threshold: float
    level: str
    item_ids: np.ndarray  # sorted
    product_ids: np.ndarray
    cluster: np.ndarray  # of items (pictures at image level)
    product_cluster: np.ndarray  # of their products
    counts: dict[str, int] = field(default_factory=dict)

    def product_cluster_of(self, product_ids: Any) -> np.ndarray:
        """The product cluster of each product id; -1 for one without near duplicates."""
        pids = np.asarray(product_ids, np.int64).reshape(-1)
        keys, first = np.unique(self.product_ids, return_index=True)
        i = np.clip(np.searchsorted(keys, pids), 0, max(len(keys) - 1, 0))
        hit = (keys[i] == pids) if len(keys) else np.zeros(len(pids), bool)
        return np.where(hit, self.product_cluster[first[i]] if len(keys) else -1, -1)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"item_id": self.item_ids, "product_id": self.product_ids,
                             "cluster": self.cluster, "product_cluster": self.product_cluster})

    def save(self, folder: str | os.PathLike, inputs: dict[str, Any] | None = None) -> Path:
        """Write ``clusters.parquet`` and ``meta.json`` (atomic); a manifest naming the
        vectors they were found in (``inputs``) makes them findable by the workspace."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        frame = self.frame()
        artifacts.atomic_write(folder / CLUSTERS, lambda t: frame.to_parquet(t, index=False))
        artifacts.write_json(folder / META, {"threshold": self.threshold,
                                             "level": self.level, "counts": self.counts})
        manifest = artifacts.make_manifest(
            "duplicates", {"threshold": self.threshold, "level": self.level},
            inputs=inputs or {})
        artifacts.write_manifest(folder, manifest)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> NearDuplicates:
        folder = Path(folder)
        meta = artifacts.read_json(folder / META)
        df = pd.read_parquet(folder / CLUSTERS)
        return cls(float(meta["threshold"]), meta["level"], df["item_id"].to_numpy(np.int64),
                   df["product_id"].to_numpy(np.int64), df["cluster"].to_numpy(np.int64),
                   df["product_cluster"].to_numpy(np.int64), meta.get("counts", {}))


def near_duplicate_clusters(item_ids: Any, vectors: Any, threshold: float, *,
                            level: str = "product", block_rows: int = BLOCK_ROWS,
                            index: faiss.Index | None = None) -> NearDuplicates:
    """The near-duplicate clusters of a store's items (see `near_duplicate_pairs`)."""
    if level not in ("product", "image"):
        raise ValueError(f"level must be 'product' or 'image', not {level!r}")
    ids = np.asarray(item_ids, np.int64)
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} item ids for {len(vectors)} vectors")
    a, b, _ = near_duplicate_pairs(vectors, threshold, block_rows=block_rows, index=index)
    labels = components(len(ids), a, b)
    pids = decode(ids, level)[0]
    # Products joined by any pair of their items: components over the products.
    products, prow = np.unique(pids, return_inverse=True)
    pa_, pb = prow[a], prow[b]
    other = pa_ != pb
    plabels = components(len(products), pa_[other], pb[other])[prow]
    keep = labels >= 0
    order = np.argsort(ids[keep], kind="stable")
    counts = {"pairs": int(len(a)), "items": int(keep.sum()),
              "clusters": int(labels.max() + 1) if keep.any() else 0,
              "products": int(len(np.unique(pids[plabels >= 0]))),
              "product_clusters": int(plabels.max() + 1) if (plabels >= 0).any() else 0}
    return NearDuplicates(float(threshold), level, ids[keep][order], pids[keep][order],
                          labels[keep][order], plabels[keep][order], counts)
