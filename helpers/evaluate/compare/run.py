"""A comparison run: every method measured in turn on the same products and pictures.

`compare` parses the methods, gets each embedding's vectors once, draws the query samples
from the first embedding that comes, measures each method (``measure``) and gathers a
`Comparison` (``report``). A method that cannot run here is skipped with its reason.

Imports helpers.evaluate (method, compare.inputs, compare.measure, compare.report);
helpers.models only to list the runtimes and networks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from helpers.catalogue.protocol import Catalogue
from helpers.core.cpu import cpu_info
from helpers.core.errors import MethodUnavailable, ServiceUnavailable
from helpers.evaluate.compare.inputs import (
    CATEGORY_COLUMNS,
    Vectors,
    category_frame,
    embed,
    product_sample,
    queries,
)
from helpers.evaluate.compare.measure import measure
from helpers.evaluate.compare.report import Comparison, per_category_table
from helpers.evaluate.method import Method, parse_method

DEFAULT_METHODS = (
    "style-180/exact",
    "onnx-224/exact",
    "onnx-180/exact",
    "onnx-224/flat",
    "onnx-224/ivf",
    "onnx-224/hnsw",
    "onnx-224/ivfpq",
    "onnx-224/annoy",
    "onnx-224/elasticsearch",
)
# Runtimes that compute the very same MobileNetV2 vectors as ONNX (TF: within 1e-5): not
# worth a row of their own. Any other runtime or network of helpers.models joins the defaults.
SAME_AS_ONNX = {"onnx", "tf"}


def default_methods(ws: Any = None, catalogue: Catalogue | None = None) -> list[str]:
    """DEFAULT_METHODS, plus exact search on every extra runtime in ``helpers.models.RUNTIMES``
    (MobileNetV2, e.g. "openvino-224/exact") and every other network in ``NETS`` (on onnx,
    e.g. "efficientnet_lite2-224/exact"), at 224 and 180 px.

    ws, catalogue: a run's workspace and catalogue: the extras are then only those the run
    has vectors of (at either level), so that 06 compares what the run made and embeds
    only what the defaults need; name others in ``methods`` to add them."""
    from helpers import models

    names = [r for r in models.RUNTIMES if r not in SAME_AS_ONNX]
    names += [n for n in models.NETS if n != "mobilenet_v2"]
    extra = [(b, size) for b in names for size in (224, 180)]
    if ws is not None:
        fp = catalogue.fingerprint if catalogue is not None else None
        have = {_embedding_of(s.made_by) for s in ws.stores(catalogue=fp)}
        extra = [(b, size) for b, size in extra if (b, size) in have]
    return [*DEFAULT_METHODS, *(f"{b}-{size}/exact" for b, size in extra)]


def _embedding_of(made_by: Mapping[str, Any]) -> tuple[str, int]:
    """(runtime or network, image size) of a store, as a method's embedding names it."""
    model, runtime = made_by.get("model", ""), made_by.get("runtime", "")
    return (runtime if model == "mobilenet_v2" else model), int(made_by.get("image_size", 0))


OUR_PACKAGES = {"helpers", "apps"}


def _unavailable(exc: BaseException) -> bool:
    """A method that cannot run here: no server answers, or an optional package or backend
    is missing. Only these are skipped: a KeyError in a measurement is a bug, not an absent
    engine, so no LookupError (nor an import error of our own code) qualifies."""
    if isinstance(exc, ServiceUnavailable | MethodUnavailable | ConnectionError):
        return True
    if isinstance(exc, ImportError):  # a third-party package, not a broken import of ours
        return bool(exc.name) and exc.name.split(".")[0] not in OUR_PACKAGES
    # The Elasticsearch client's own connection errors (not builtin subclasses).
    return bool({c.__name__ for c in type(exc).__mro__} & {"ConnectionError", "ConnectionTimeout"})



def compare(
    ws: Any,
    catalogue: Catalogue,
    images: Any,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    ks: Sequence[int] = (5, 10),
    n_queries: int = 1000,
    n_latency: int = 200,
    es_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    measure_memory: bool = True,
    embed_kw: Mapping[str, Any] | None = None,
    max_products: int | None = None,
    vectors_of: Callable[[Method], Vectors] | None = None,
    say: Callable[[str], None] = print,
) -> Comparison:
    """Measure every method on the same products and pictures; see the package docstring.

    catalogue: a ``helpers.catalogue.protocol.Catalogue`` (the products' categories).
    ks: cut-offs of category precision (the largest is also recall@k's). n_queries: at
    most this many query products, and query pictures (a seeded sample when there are
    more). max_products: above this many products, compare on a seeded sample of them
    (a full catalogue's vectors cannot all be indexed in RAM by every method).
    n_latency: queries timed one at a time. vectors_of: method -> Vectors (default:
    `inputs.embed` through the workspace, from ``images``). say: where progress lines go.
    """
    if vectors_of is None:
        products = product_sample(catalogue, max_products, seed)
        if products is not None:
            say(f"{len(catalogue):,} products, more than max_products: compared on a seeded "
                f"sample of {len(products):,} of them (every index is built on the sample)")

        def vectors_of(m: Method) -> Vectors:
            return embed(ws, catalogue, images, m, products=products, **(embed_kw or {}))

    parsed = [parse_method(m) for m in methods]
    k = max(ks)
    rng = np.random.default_rng(seed)
    vecs: dict[str, Vectors | str] = {}
    rows, sweeps, results, per_cat = [], {}, {}, {}
    cats: pd.DataFrame | None = None
    queries_p = queries_i = None
    truth: dict[tuple[str, str], Any] = {}  # exact answers per (embedding, level)

    for m in parsed:
        row: dict[str, Any] = {"method": m.name, "embedding": m.embedding, "index": m.kind,
                               "status": "ok", "reason": ""}
        try:
            if m.embedding not in vecs:
                try:
                    vecs[m.embedding] = vectors_of(m)
                except Exception as e:
                    if not _unavailable(e):
                        raise
                    vecs[m.embedding] = f"embedding {m.embedding} unavailable: {e}"
            v = vecs[m.embedding]
            if isinstance(v, str):
                raise MethodUnavailable(v)
            if cats is None:
                cats = category_frame(catalogue, v.product_ids)
                queries_p, queries_i = queries(v, n_queries, rng)
            got = measure(m, v, cats, queries_p, queries_i, ks=ks, n_latency=n_latency,
                          index_dir=ws.index_dir(f"compare-{m.embedding}-{m.kind}"),
                          es_params=es_params, measure_memory=measure_memory, truth=truth)
            row.update(got.row)
            results[m.name] = got.results
            per_cat[m.name] = got.per_category
            if len(got.sweep):
                sweeps[m.name] = got.sweep
            say(f"{m.name:<26} p@{k} {row[f'p@{k}']:.3f}  hit@1 {row['hit@1']:.3f}  "
                f"recall@{k} {row[f'recall@{k}']:.3f}  {row['qps']:,.0f} q/s")
        except Exception as e:  # noqa: BLE001 - one method's failure must not stop the rest
            if not _unavailable(e):
                raise
            row.update(status="skipped", reason=(str(e).splitlines() or [type(e).__name__])[0])
            say(f"{m.name:<26} skipped: {row['reason']}")
        rows.append(row)

    table = pd.DataFrame(rows)
    settings = {"cpu": str(cpu_info()), "methods": list(methods), "ks": list(ks), "k": k,
                "n_queries": n_queries, "max_products": max_products,
                "seed": seed, "images": str(getattr(images, "path", images)),
                "n_products": int(len(cats)) if cats is not None else 0,
                "n_pictures": int(max((len(v.image_ids) for v in vecs.values()
                                       if isinstance(v, Vectors)), default=0)),
                "same_product_queries": int(len(queries_i)) if queries_i is not None else 0,
                "cpus": os.cpu_count()}
    per_category = per_category_table(per_cat, cats, k)
    if cats is None:
        cats = pd.DataFrame(columns=CATEGORY_COLUMNS)
    qp = queries_p if queries_p is not None else np.zeros(0, np.int64)
    return Comparison(table, per_category, sweeps, settings, results, cats, qp)
