"""The networks: one module a network (a ``Net``: weights -> layers -> ONNX graph).

Registered by name in ``helpers.models.NETS``. Modules here import numpy and
``helpers.models`` (weights, cache, onnx_graph, base), never a runtime.
"""
