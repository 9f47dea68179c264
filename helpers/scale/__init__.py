"""Past one process: the Dask catalogue and embedding, memory of mapped files.

Imports nothing itself.
"""
