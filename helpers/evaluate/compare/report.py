"""The results of a comparison: the `Comparison` (table, per category, sweeps, top-k
lists), its files (compare.csv, compare.json), and reading it: the best method, the worst
categories, and the advice text, written from the run's own numbers.

Imports pandas and numpy only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RECALL_TARGET = 0.95  # an approximate index "finds what exact search finds" from here on
EXACT_INDEXES = ("exact", "flat")


@dataclass
class Comparison:
    """Everything a comparison measured (``compare.compare``)."""

    table: pd.DataFrame  # one row per method (compare.csv)
    per_category: pd.DataFrame  # category x method precision@k (leaf)
    sweeps: dict[str, pd.DataFrame]  # method -> knob sweep (recall, qps)
    settings: dict[str, Any]
    results: dict[str, tuple[np.ndarray, np.ndarray]]  # method -> product-level top k
    categories: pd.DataFrame  # product_id, category_id, level1, category
    query_ids: np.ndarray  # the query products, row i of every results[method]

    def save(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """compare.csv (the table) and compare.json (everything, to diff two runs)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv, js = out / "compare.csv", out / "compare.json"
        self.table.to_csv(csv, index=False, float_format="%.6g")
        doc = {
            "settings": self.settings,
            "methods": _records(self.table),
            "per_category": _records(self.per_category.reset_index()),
            "sweeps": {m: _records(t) for m, t in self.sweeps.items()},
            "advice": advice(self.table, self.settings),
        }
        js.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
        return csv, js

    def single_points(self) -> dict[str, tuple[float, float]]:
        """(recall@k, QPS) of each measured method without a knob sweep (exact search):
        the single points of ``helpers.evaluate.sweep.plot_recall_qps`` beside the sweeps."""
        k = self.settings["k"]
        ok = self.table[self.table["status"] == "ok"]
        return {r["method"]: (float(r[f"recall@{k}"]), float(r["qps"]))
                for _, r in ok.iterrows() if r["method"] not in self.sweeps}


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records", double_precision=6))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    return str(o)


def per_category_table(per_cat: Mapping[str, pd.DataFrame], cats: pd.DataFrame | None,
                       k: int) -> pd.DataFrame:
    """category x method precision@k, with the category's size, chance and ceiling."""
    if not per_cat or cats is None:
        return pd.DataFrame()
    names = cats.drop_duplicates("category_id").set_index("category_id")
    first = next(iter(per_cat.values()))
    base = first.groupby("category").agg(queries=("query_id", "size"),
                                         chance=("chance", "mean"),
                                         ceiling=("ceiling", "mean"))
    for name, t in per_cat.items():
        base[f"{name} p@{k}"] = t.groupby("category")["precision"].mean()
    base.insert(0, "name", names.reindex(base.index)["category"].to_numpy())
    base.insert(1, "level1", names.reindex(base.index)["level1"].to_numpy())
    base.index.name = "category_id"
    return base


# -- reading the results ------------------------------------------------------------------------


def best_method(table: pd.DataFrame, column: str, exact_only: bool = True) -> str | None:
    """The method with the highest ``column``. exact_only: among exact searches (exact,
    Flat): quality is the embedding's, an approximate index can only lose some of it, and
    one that scores a hair above its exact search does so by luck."""
    if column not in table:
        return None
    ok = table[(table["status"] == "ok") & table[column].notna()]
    if exact_only and ok["index"].isin(EXACT_INDEXES).any():
        ok = ok[ok["index"].isin(EXACT_INDEXES)]
    return None if len(ok) == 0 else str(ok.loc[ok[column].idxmax(), "method"])


def worst_categories(comparison: Comparison, method: str | None = None,
                     n: int = 10) -> pd.DataFrame:
    """The n categories where ``method`` (default: the best at precision@k) does worst."""
    k = comparison.settings["k"]
    method = method or best_method(comparison.table, f"p@{k}")
    col = f"{method} p@{k}"
    pc = comparison.per_category
    if method is None or col not in pc:
        return pd.DataFrame()
    cols = ["name", "level1", "queries", "chance", "ceiling", col]
    return pc[cols].sort_values([col, "queries"], ascending=[True, False]).head(n)


def advice(table: pd.DataFrame, settings: Mapping[str, Any]) -> str:
    """"Which to use when", written from this run's numbers (nothing here is hand-typed
    about a particular result: every sentence is chosen and filled by the figures)."""
    k = settings.get("k", 10)
    ok = table[table["status"] == "ok"].set_index("method")
    if ok.empty:
        return "No method ran: nothing to recommend."
    n = int(settings.get("n_products", 0))
    out = []
    best_p = best_method(table, f"p@{k}")
    b = ok.loc[best_p]
    ratio = b[f"p@{k}"] / b[f"chance@{k}"] if b[f"chance@{k}"] > 0 else float("inf")
    out.append(f"**Related products (same category):** {best_p} ranks best of the exact "
               f"searches, precision@{k} "
               f"{b[f'p@{k}']:.3f} against {b[f'chance@{k}']:.3f} by chance ({ratio:.1f}x) "
               f"and {b[f'ceiling@{k}']:.3f} at best on {n:,} products.")
    if ok["hit@1"].notna().any():
        best_h = best_method(table, "hit@1")
        h = ok.loc[best_h]
        out.append(f"**The same item again** (another picture of the query's product): "
                   f"{best_h}, hit@1 {h['hit@1']:.3f}, hit@5 {h['hit@5']:.3f}, "
                   f"MRR {h['mrr']:.3f}.")
    style = [m for m in ok.index if m.startswith("style-")]
    cnn = [m for m in ok.index if not m.startswith("style-") and m.endswith("/exact")]
    if style and cnn:
        s, c = ok.loc[style[0]], ok.loc[max(cnn, key=lambda m: ok.loc[m, f"p@{k}"])]
        if s[f"p@{k}"] < c[f"p@{k}"]:
            out.append(f"**Style vectors** (VGG16 Gram) match colour and texture, not kind: "
                       f"precision@{k} {s[f'p@{k}']:.3f} vs {c[f'p@{k}']:.3f} for "
                       f"{c.name}; use them for 'same look', not to find related products.")
        else:
            out.append(f"**Style vectors** do as well as MobileNetV2 here (precision@{k} "
                       f"{s[f'p@{k}']:.3f} vs {c[f'p@{k}']:.3f}): this catalogue's "
                       "categories are told apart by look.")
    sizes = {int(m.split("/")[0].rsplit("-", 1)[1]): m for m in cnn
             if m.split("/")[0].split("-")[0] == cnn[0].split("/")[0].split("-")[0]}
    if 180 in sizes and 224 in sizes:
        a, z = ok.loc[sizes[180]], ok.loc[sizes[224]]
        d = a[f"p@{k}"] - z[f"p@{k}"]
        verdict = ("no worse: use 180 px, the native size, 1.5x fewer pixels to embed"
                   if d >= -0.01 else "worse: keep 224 px, the size the network was trained at")
        out.append(f"**180 vs 224 px:** precision@{k} {a[f'p@{k}']:.3f} vs {z[f'p@{k}']:.3f}, "
                   f"hit@1 {a['hit@1']:.3f} vs {z['hit@1']:.3f}: 180 px is {verdict}.")
    exact = ok[ok["index"].isin(EXACT_INDEXES)]
    approx = ok[~ok["index"].isin(EXACT_INDEXES)]
    if len(exact):
        e = exact.loc[exact["qps"].idxmax()]
        good = approx[approx[f"recall@{k}"] >= RECALL_TARGET]
        if len(good):
            f = good.loc[good["qps"].idxmax()]
            same = exact[exact["embedding"] == f["embedding"]]  # same vectors, same work
            if len(same):
                e = same.loc[same["qps"].idxmax()]
            gain = f["qps"] / e["qps"]
            if gain >= 2:
                out.append(f"**Speed:** {f.name} answers {gain:.1f}x as many queries per second "
                           f"as exact search ({f['qps']:,.0f} vs {e['qps']:,.0f}) at recall@{k} "
                           f"{f[f'recall@{k}']:.3f}: use it at this size and above.")
            else:
                out.append(f"**Speed:** at {n:,} vectors exact search answers one query in "
                           f"{e['p50_ms']:.2f} ms (p50) and {e['qps']:,.0f} queries/s in a batch"
                           f"; the fastest approximate index at recall@{k} >= {RECALL_TARGET} "
                           f"({f.name}) is only {gain:.2g}x that: use exact search. "
                           "Approximate indexes pay off from about 100k vectors "
                           "(bench/bench_ann.py).")
        elif len(approx):
            out.append(f"**Speed:** no approximate index reached recall@{k} >= "
                       f"{RECALL_TARGET} at its default setting here; use exact search.")
    lossy = ok[ok["index"] == "ivfpq"]
    flat = ok[ok["index"].isin(["flat", "exact"])]
    if len(lossy) and len(flat):
        p, f = lossy.iloc[0], flat.loc[flat["disk_mb"].idxmax()]
        out.append(f"**Memory:** IVF-PQ ({p.name}) stores the vectors in "
                   f"{p['disk_mb']:.2f} MB instead of {f['disk_mb']:.2f} MB "
                   f"({f['disk_mb'] / max(p['disk_mb'], 1e-9):.0f}x smaller) at recall@{k} "
                   f"{p[f'recall@{k}']:.3f}: for catalogues that do not fit in RAM.")
    annoy = ok[ok["index"] == "annoy"]
    if len(annoy):
        a = annoy.iloc[0]
        out.append(f"**Several processes:** Annoy ({a.name}) is one memory-mapped file "
                   f"({a['disk_mb']:.2f} MB) shared by every worker, recall@{k} "
                   f"{a[f'recall@{k}']:.3f}; it cannot add or remove items: rebuild.")
    es = ok[ok["index"] == "elasticsearch"]
    if len(es):
        s = es.iloc[0]
        out.append(f"**Elasticsearch** ({s.name}): p50 {s['p50_ms']:.1f} ms a query, a "
                   f"server round trip; choose it to combine vectors with text and filters "
                   "in one query, not for speed.")
    skipped = table[table["status"] == "skipped"]
    if len(skipped):
        out.append("Not measured here: " + "; ".join(
            f"{r.method} ({str(r.reason).split('. ')[0].rstrip('.')})"
            for r in skipped.itertuples()) + ".")
    return "\n\n".join(out)
