"""Speed/quality trade-offs of an index: sweep its search knob, measure recall@k and QPS, plot.

    truth = exact_truth(vectors, ids, query_ids, 10)   # helpers.evaluate.truth
    table = knob_sweep(index, "efSearch", [16, 32, 64, 128], queries, truth,
                       query_ids=query_ids)             # each query left out of its answers
    plot_recall_qps({"HNSW32": table}, exact_qps=...)

The one knob sweep and the one recall-vs-QPS plot: notebooks 03-05 call them directly, and
the comparison of 06 (``helpers.evaluate.compare``) sweeps every approximate index with
them. Imports helpers.evaluate.metrics; matplotlib only to plot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from helpers.core.cpu import cpu_info
from helpers.evaluate.metrics import (
    TIE_SLACK,
    batch_qps,
    measure_qps,
    pareto_frontier,
    recall_at_k,
)

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

# The search knob each index kind of a comparison trades speed for recall with.
KNOBS = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch", "annoy": "search_k",
         "elasticsearch": "num_candidates"}
COLUMNS = ["knob", "value", "recall", "qps"]


def knob_values(index: Any, kind: str, k: int) -> list[int]:
    """The settings of an index kind's knob a comparison sweeps, cheapest first: from one
    IVF list to all of them, efSearch 8 to 256, Annoy's search_k from 1/8 to 16 times
    its default (k x trees), Elasticsearch's num_candidates from k to 50 k."""
    if kind in ("ivf", "ivfpq"):
        nlist = int(re.search(r"IVF(\d+)", index.build_params["factory"]).group(1))
        return sorted({v for v in (1, 2, 4, 8, 16, 32, 64, 128, nlist) if v <= nlist})
    if kind == "hnsw":
        return [8, 16, 32, 64, 128, 256]
    if kind == "annoy":
        trees = index.build_params.get("n_trees", 50)
        return [max(1, int(k * trees * f)) for f in (0.125, 0.25, 0.5, 1, 4, 16)]
    return [v for v in (k, 2 * k, 5 * k, 10 * k, 50 * k) if v <= max(len(index), k)]


def knob_sweep(index: Any, knob: str, values: Sequence[int], queries: np.ndarray,
               truth: Any, k: int = 10, *, query_ids: np.ndarray | None = None,
               repeat: int | None = 3) -> pd.DataFrame:
    """recall@k (``metrics.recall_at_k`` against ``truth``, the exact answers: ids, or
    ``truth.exact_truth``'s result for ties) and QPS of ``index`` for each value of one
    search knob: a table with columns knob, value, recall, qps. The knob is restored
    afterwards.

    query_ids: the queries' own ids, left out of their results (``truth`` leaves them out
    too); a few more than k results are asked so that k remain. Queries are searched as
    one batch, as a serving process that batches requests would: QPS is the best of
    ``repeat`` runs, or, with ``repeat=None``, of as many as fill 0.3 s (3 to 50).
    """
    before = index.params[knob]
    deep = k if query_ids is None else min(len(index), k + TIE_SLACK)
    rows = []
    try:
        for v in values:
            index.params[knob] = int(v)
            got = index.search(queries, deep).ids
            if repeat is None:
                qps = batch_qps(lambda q: index.search(q, k), queries)
            else:
                qps = measure_qps(lambda q: index.search(q, k), queries, repeat=repeat)
            rows.append({"knob": knob, "value": int(v), "qps": qps,
                         "recall": recall_at_k(got, truth, k, query_ids=query_ids)})
    finally:
        index.params[knob] = before
    return pd.DataFrame(rows, columns=COLUMNS)


def plot_recall_qps(sweeps: Mapping[str, pd.DataFrame], exact_qps: float | None = None,
                    k: int = 10, ax: plt.Axes | None = None, *,
                    points: Mapping[str, tuple[float, float]] | None = None,
                    title: str | None = None) -> plt.Axes:
    """Recall@k against QPS (log scale), the ann-benchmarks way: up and right is better.

    sweeps: method -> `knob_sweep` table; a line joins its Pareto-optimal settings (no
    other setting both faster and more accurate), the others are faint dots, each labelled
    with its knob value. points: method -> (recall, qps) of methods without a knob (exact
    search: recall 1). exact_qps: a horizontal line at the QPS of exact search. The CPU
    (model and instruction sets, helpers.core.cpu) is written in the figure's corner.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    for name, t in sweeps.items():
        if t.empty:
            continue
        front = t.iloc[pareto_frontier(t["recall"], t["qps"])]
        line, = ax.plot(front["recall"], front["qps"], marker="o",
                        label=f"{name} ({t['knob'].iloc[0]})")
        ax.plot(t["recall"], t["qps"], ls="none", marker=".", color=line.get_color(),
                alpha=0.4)
        for r in t.itertuples():
            ax.annotate(str(int(r.value)), (r.recall, r.qps), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    for name, (recall, qps) in (points or {}).items():
        ax.plot([recall], [qps], marker="s", ls="none", label=name)
    if exact_qps:
        ax.axhline(exact_qps, color="grey", ls="--", lw=1, label="exact (brute force)")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{k} (vs exact search on the same vectors)")
    ax.set_ylabel("queries per second (batch, log)")
    # Speed depends on the instruction sets (AVX2 vs AVX-512...): the figure names its CPU.
    ax.annotate(f"measured on {cpu_info()}", (0, 0), xycoords="figure fraction",
                xytext=(4, 2), textcoords="offset points", fontsize=6, color="grey")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return ax
