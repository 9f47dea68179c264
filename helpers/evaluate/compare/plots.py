"""Plots and galleries of a comparison (``helpers.evaluate.compare.Comparison``), for 06.

    from helpers.evaluate.compare import plots as cp
    cp.plot_precision(run.table)       # precision@k bars, chance and best-possible lines
    cp.plot_cost(run.table)            # build time, size on disk, resident memory
    cp.plot_galleries(run, images, product_id)   # one query under every method
    cp.category_gallery(run, images, category_id)

Recall against QPS, the sweeps beside the exact methods' single points:
``helpers.evaluate.sweep.plot_recall_qps(run.sweeps, k=k, points=run.single_points())``.
Imports matplotlib and helpers.evaluate.compare.report; helpers.gallery (and
helpers.index.hits) for a gallery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.evaluate.compare.report import Comparison, best_method


def plot_precision(table: pd.DataFrame, ks: Sequence[int] = (5, 10)) -> plt.Figure:
    """Precision@k bars per method, leaf and level 1, with the chance (and best) lines."""
    ok = table[table["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(ok) + 1.8), sharey=True)
    y = np.arange(len(ok))
    h = 0.8 / len(ks)
    for ax, prefix, title in ((axes[0], "", "leaf category"), (axes[1], "l1_", "level 1")):
        for j, kk in enumerate(ks):
            ax.barh(y + j * h, ok[f"{prefix}p@{kk}"], h, label=f"precision@{kk}")
        kk = max(ks)
        chance = ok[f"{prefix}chance@{kk}"].iloc[0] if len(ok) else float("nan")
        ax.axvline(chance, color="k", ls="--", lw=1.2, label=f"chance {chance:.3f}")
        if not prefix:
            ceiling = ok[f"ceiling@{kk}"].iloc[0]
            if ceiling < 0.999:
                ax.axvline(ceiling, color="grey", ls=":", lw=1.2, label=f"best possible "
                           f"{ceiling:.3f}")
        ax.set_title(f"precision by {title}")
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_yticks(y + h * (len(ks) - 1) / 2, ok["method"])
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def plot_cost(table: pd.DataFrame) -> plt.Figure:
    """Build time, size on disk and resident memory per method."""
    ok = table[table["status"] == "ok"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.4 * len(ok) + 1.8), sharey=True)
    for ax, col, title in ((axes[0], "build_s", "build time (s)"),
                           (axes[1], "disk_mb", "size on disk (MB)"),
                           (axes[2], "memory_mb", "resident memory of a loader (MB)")):
        ax.barh(ok["method"], ok[col].fillna(0), color="tab:blue")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def plot_galleries(comparison: Comparison, images: Any, query_id: int,
                   k: int = 8) -> plt.Figure:
    """One query's neighbours under every method, one row per method."""
    methods = list(comparison.results)
    pos = np.flatnonzero(comparison.query_ids == query_id)
    if not len(pos):
        raise KeyError(f"product {query_id} was not a query")
    fig, axes = plt.subplots(len(methods), k + 1, figsize=(1.6 * (k + 1), 1.9 * len(methods)),
                             squeeze=False)
    cats = comparison.categories.set_index("product_id")["category_id"]
    qcat = cats.get(query_id)
    for row, m in zip(axes, methods, strict=True):
        ids_, scores = comparison.results[m]
        i = int(pos[0])
        tiles = [(query_id, None)] + [(int(p), float(s)) for p, s in
                                      zip(ids_[i, :k], scores[i, :k], strict=True) if p >= 0]
        for ax in row:
            ax.axis("off")
        for j, (pid, s) in enumerate(tiles[: k + 1]):
            ax = row[j]
            ax.imshow(images.image(pid))
            same = cats.get(pid) == qcat
            ax.set_title("query" if j == 0 else f"{s:.2f}", fontsize=7,
                         color="k" if j == 0 or same else "tab:red")
        row[0].text(-0.1, 0.5, m, transform=row[0].transAxes, ha="right", va="center",
                    fontsize=8)
    fig.suptitle(f"product {query_id} ({images.label(query_id, 30)}): neighbours under every "
                 "method (red score: another category)", fontsize=9)
    fig.tight_layout(rect=(0.08, 0, 1, 0.97))
    return fig


def category_gallery(comparison: Comparison, images: Any, category_id: int,
                     method: str | None = None, k: int = 8) -> plt.Figure | None:
    """The first query product of a category and its neighbours under ``method`` (default:
    the best at precision@k); None if no query of the run is in that category."""
    from helpers.gallery import neighbours_figure
    from helpers.index.hits import Hit

    kk = comparison.settings["k"]
    method = method or best_method(comparison.table, f"p@{kk}")
    if method is None or method not in comparison.results:
        return None
    cats = comparison.categories.set_index("product_id")["category_id"]
    in_cat = [i for i, q in enumerate(comparison.query_ids.tolist()) if cats.get(q) == category_id]
    if not in_cat:
        return None
    i = in_cat[0]
    ids_, scores = comparison.results[method]
    hits = [Hit(int(p), float(s)) for p, s in zip(ids_[i, :k], scores[i, :k], strict=True)
            if p >= 0]
    row = comparison.per_category.loc[category_id]
    title = (f"{row['name']} ({row['level1']}): {method} precision@{kk} "
             f"{row[f'{method} p@{kk}']:.2f}, chance {row['chance']:.2f}")
    return neighbours_figure(images, Hit(int(comparison.query_ids[i])), hits, title)
