"""Speed/quality trade-offs of an index: sweep one knob, measure recall@k and QPS, plot.

    exact = build_index("exact", vectors, ids).search(queries, 10).ids
    table = knob_sweep(index, "efSearch", [16, 32, 64, 128], queries, exact)
    plot_recall_qps({"HNSW32": table}, exact_qps=...)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.evaluate.metrics import measure_qps, recall_at_k


def knob_sweep(index, knob: str, values: Sequence[int], queries: np.ndarray,
               exact_ids: np.ndarray, k: int = 10, repeat: int = 3) -> pd.DataFrame:
    """recall@k (vs ``exact_ids``) and QPS of ``index`` for each value of one search knob.

    The knob is restored afterwards. Queries are searched as one batch, as a
    serving process that batches requests would.
    """
    before = index.params[knob]
    rows = []
    try:
        for v in values:
            index.params[knob] = int(v)
            got = index.search(queries, k).ids
            qps = measure_qps(lambda q: index.search(q, k), queries, repeat=repeat)
            rows.append({knob: int(v), f"recall@{k}": recall_at_k(got, exact_ids, k),
                         "qps": qps})
    finally:
        index.params[knob] = before
    return pd.DataFrame(rows)


def plot_recall_qps(tables: Mapping[str, pd.DataFrame], exact_qps: float | None = None,
                    k: int = 10, ax: plt.Axes | None = None) -> plt.Axes:
    """Recall@k against QPS (log scale), one line per method; knob values as labels."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    col = f"recall@{k}"
    for name, t in tables.items():
        knob = t.columns[0]
        ax.plot(t[col], t["qps"], marker="o", label=f"{name} ({knob})")
        for _, r in t.iterrows():
            ax.annotate(str(int(r[knob])), (r[col], r["qps"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    if exact_qps:
        ax.axhline(exact_qps, color="grey", ls="--", lw=1, label="exact (brute force)")
    ax.set_yscale("log")
    ax.set_xlabel(col)
    ax.set_ylabel("queries per second")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
