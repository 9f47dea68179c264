"""Recommendations from several products: which strategy serves a mixed session best.

    python bench/bench_recommend.py                   # both samples, 200 sessions each
    python bench/bench_recommend.py --sessions 50 --data real

Sessions of 2 to 4 products from 2 to 3 categories are drawn from the catalogue with a seed
(`helpers.evaluate.sessions.sample_sessions`, categories with 2+ products). Each strategy
of `helpers.index.recommend` (mean, best-score, round-robin; and with MMR) answers every
session through the apps' own path (`Related.recommend`, MobileNetV2 ONNX vectors at
180 px, FAISS Flat: exact search), the session's products left out. Per strategy, over
the sessions:

* coverage@10: the share of the session's categories found in the top 10;
* precision@10: the share of the top 10 in the category of one of the session's products;
* ms per session (with the CPU's flags beside it).

The vectors are the samples' real embeddings, built once under bench/data/ (about a
minute for the built-in sample on 2 cores). Rows for ``make bench``: each strategy's
coverage and precision, and the default strategy's coverage against the mean's (target
1.2x: a mixed session must get clearly more of its kinds of products than the blurred
mean row, not a tie).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _report import row  # noqa: E402

from helpers.core.paths import CDISCOUNT_DIR, SAMPLE_BSON, SAMPLE_CATEGORIES  # noqa: E402

DATA = HERE / "data"
K = 10
MMR = 0.3
STRATEGIES = {  # label -> (strategy, mmr)
    "mean": ("mean", 0.0),
    "best": ("best", 0.0),
    "round_robin": ("round_robin", 0.0),
    f"best + mmr {MMR}": ("best", MMR),
    f"round_robin + mmr {MMR}": ("round_robin", MMR),
}


def datasets(wanted: list[str]) -> dict[str, tuple[Path, Path]]:
    found = {"sample": (SAMPLE_BSON, SAMPLE_CATEGORIES),
             "real": (CDISCOUNT_DIR / "train_example.bson",
                      CDISCOUNT_DIR / "category_names.csv")}
    return {k: v for k, v in found.items() if k in wanted and v[0].exists()}


def run_one(name: str, bson: Path, cats_csv: Path, n_sessions: int, seed: int):
    from helpers.evaluate.sessions import measure_sessions, sample_sessions
    from helpers.serve.loader import build_serving_artifacts, configure_app_process, load_artifacts
    from helpers.serve.related import Related

    configure_app_process()  # the apps' threads (FAISS on one): timings as served
    t = time.perf_counter()
    work = build_serving_artifacts(DATA / f"recommend_{name}", bson, cats_csv)
    art = load_artifacts(work)
    rel = Related(art)
    m = rel.method("faiss")
    pids = np.asarray(m.store.product_ids, np.int64)
    cats = np.asarray(art.catalogue.category_ids(pids), np.int64)
    print(f"{name}: {len(pids)} products with a vector, {len(np.unique(cats))} categories "
          f"(artifacts ready in {time.perf_counter() - t:.0f} s)", flush=True)
    sessions = sample_sessions(pids, cats, n_sessions, seed=seed)
    category_of = dict(zip(pids.tolist(), cats.tolist(), strict=True))

    def runner(strategy: str, mmr: float):
        return lambda s: [h.product_id for h in rel.recommend(s, (), K, "faiss", strategy, mmr)]

    table = measure_sessions({label: runner(*sm) for label, sm in STRATEGIES.items()},
                             sessions, category_of, K)
    ms = {}
    for label, (strategy, mmr) in STRATEGIES.items():  # timed apart from the measuring
        t = time.perf_counter()
        for s in sessions:
            rel.recommend(s, (), K, "faiss", strategy, mmr)
        ms[label] = (time.perf_counter() - t) * 1000 / len(sessions)
    table["ms/session"] = [ms[label] for label in table.index]
    art.close()
    return table, len(sessions)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", nargs="+", default=["sample", "real"])
    args = parser.parse_args(argv)
    from helpers.core.cpu import cpu_info
    from helpers.index.recommend import DEFAULT_STRATEGY

    cpu = cpu_info()
    rows = []
    for name, (bson, cats_csv) in datasets(args.data).items():
        table, n = run_one(name, bson, cats_csv, args.sessions, args.seed)
        print(f"\n{name}: {n} sessions of 2-4 products from 2-3 categories, seed {args.seed},"
              f" top {K}; ms on {cpu}")
        print(table[["coverage", "precision", "ms/session", "short"]].to_string(
            float_format=lambda v: f"{v:.3f}"), flush=True)
        for label in table.index:
            for col in ("coverage", "precision"):
                rows.append(row(f"{col}@{K}, {label}, mixed sessions, {name}",
                                table.loc[label, col], unit="share"))
        ratio = table.loc[DEFAULT_STRATEGY, "coverage"] / table.loc["mean", "coverage"]
        rows.append(row(f"coverage@{K} of mixed sessions, default ({DEFAULT_STRATEGY}) vs "
                        f"mean, {name}", ratio, target=1.2,
                        note=f"precision {table.loc[DEFAULT_STRATEGY, 'precision']:.3f} vs "
                             f"{table.loc['mean', 'precision']:.3f}"))
    return rows


if __name__ == "__main__":
    main()
