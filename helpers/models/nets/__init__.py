"""The networks: one module a network (weights -> graph)."""
