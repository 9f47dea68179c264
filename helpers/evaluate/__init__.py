"""Measuring search: how good and how fast a method finds related products.

- ``method``: what a search method is (an embedding and an index), shared with serve;
- ``metrics``: recall@k, precision@k by category, same-product hit@k, latency, QPS;
- ``sweep``: the knob sweep of an index and the recall-vs-QPS plot (notebooks 03-06);
- ``footprint``: an index's size on disk and the memory of a process that loads it;
- ``compare``: the comparison of every method (``06_compare``).

Layer: imports helpers.core, catalogue, vectors, index and models (to embed); never serve
or the apps. Importing this package imports nothing else.
"""
