"""Which index fits: the notebooks' choice between an in-RAM FAISS index and the compressed
one, by the number of vectors, said out loud.

    plan = plan_index(len(ids), 1280, factory="HNSW32")
    print(plan.reason)
    index = build_index(plan.method, vectors, ids, cats, source=store, **plan.params)

Below ``compressed_above`` vectors the float32 vectors fit in RAM with room to spare and the
notebook builds what it was asked for (``factory``). Above it (12.4 M pictures x 1280 x 4 B
is 63 GB, a node has 24 GB) it builds ``faiss_compressed``: codes of a few hundred bytes a
vector, re-ranked with the exact vectors read from the memory-mapped store. Imports nothing
but the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

COMPRESSED_ABOVE = 1_000_000  # vectors; HNSW32 over 1 M x 1280 already holds 5.3 GB


@dataclass(frozen=True)
class IndexPlan:
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def compressed(self) -> bool:
        return self.method == "faiss_compressed"


def ivf_lists(n: int) -> int:
    """IVF lists for ``n`` vectors: about 4 sqrt(n) (FAISS's guideline), a power of two,
    with at least 39 training points per list (FAISS warns below that)."""
    want = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(want, n // 39))


def plan_index(n: int, d: int, factory: str = "HNSW32",
               compressed_above: int = COMPRESSED_ABOVE) -> IndexPlan:
    """The index to build over ``n`` vectors of ``d`` floats, and why."""
    gb = n * d * 4 / 1e9
    size = f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1e3:.1f} MB"
    if n <= compressed_above:
        return IndexPlan("faiss", {"factory": factory},
                         f"{n:,} vectors x {d} floats = {size}: they fit in RAM, so "
                         f"FAISS {factory} (up to {compressed_above:,} vectors)")
    nlist = ivf_lists(n)
    return IndexPlan("faiss_compressed", {"nlist": nlist},
                     f"{n:,} vectors x {d} floats = {size}, above {compressed_above:,}"
                     f" vectors: the compressed index (faiss_compressed, IVF{nlist} + PQ "
                     "codes, re-ranked with the exact vectors read from the memory-mapped "
                     "store) instead of " + factory)
