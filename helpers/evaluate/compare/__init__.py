"""Which method finds related products best, and at what cost: the logic of ``06_compare``.

A *method* is an embedding and an index, written ``"<embedding>/<index>"``
(``helpers.evaluate.method``):

- embeddings: ``style-180`` (VGG16 Gram style vectors at 180 px), ``<runtime>-<size>``
  for MobileNetV2 on any runtime in ``helpers.models.RUNTIMES`` (``onnx-224``,
  ``onnx-180``, ``openvino-224`` when that runtime exists), ``<model>-<size>`` for
  another network of ``helpers.models.NETS`` on onnx (``efficientnet_lite2-224``);
- indexes: ``exact`` (numpy), ``flat`` / ``ivf`` / ``hnsw`` / ``ivfpq`` (FAISS),
  ``annoy``, ``elasticsearch`` (when registered in ``helpers.index.METHODS`` and a node
  answers). IVF lists and PQ codes are sized from the number of vectors.

Every method is measured on the same products and pictures:

- quality: category precision@k (leaf and level 1, beside the chance rate), same-product
  retrieval at image level (hit@1, hit@5, MRR over the top 10; single-picture products are
  not queries), recall@k against exact search on the same vectors;
- cost: build time, size on disk, resident memory of a process that loads the index,
  latency p50/p99 one query at a time, QPS of a batch, and each approximate index's
  speed knob swept (``helpers.evaluate.sweep``).

A method that cannot run here (an unknown model or runtime, a missing optional package, no
Elasticsearch node) is *skipped* with its reason; the others are still compared. Any other
error in a method is a bug: it propagates, and the notebook fails.

    run = compare(ws, catalogue, ws.images(bson_path), methods=DEFAULT_METHODS)
    run.table            # one row per method: compare.csv
    run.save(out_dir)    # compare.csv, compare.json
    print(advice(run.table, run.settings))

Modules, one concern each: ``run`` (the orchestration: `compare`), ``inputs`` (vectors,
categories, query samples), ``measure`` (one method's indexes, measured), ``report`` (the
`Comparison`, its files, the advice text), ``plots`` (figures and galleries, matplotlib:
not imported here). Memory and disk of an index: ``helpers.evaluate.footprint``. (The
submodule ``measure`` keeps its name: its function `measure.measure` is not re-exported.)
This package imports helpers.core, catalogue, vectors, index and evaluate; never serve.
"""

from helpers.evaluate.compare.inputs import Vectors, category_frame, embed, load_embedder
from helpers.evaluate.compare.measure import MRR_DEPTH, Measured, build, index_spec
from helpers.evaluate.compare.report import (
    RECALL_TARGET,
    Comparison,
    advice,
    best_method,
    worst_categories,
)
from helpers.evaluate.compare.run import DEFAULT_METHODS, SAME_AS_ONNX, compare, default_methods
from helpers.evaluate.method import INDEXES, Method, MethodError, parse_method

__all__ = [
    "DEFAULT_METHODS", "INDEXES", "MRR_DEPTH", "RECALL_TARGET", "SAME_AS_ONNX", "Comparison",
    "Method", "MethodError", "Vectors", "advice", "best_method", "build", "category_frame",
    "compare", "default_methods", "embed", "index_spec", "load_embedder", "Measured",
    "parse_method", "worst_categories",
]
