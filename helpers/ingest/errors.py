"""The exceptions of the catalogue pass, in one place so every room of it raises the same ones.

A catalogue that cannot be built or used as asked (wrong file, missing category columns,
an interrupted run of other parameters, a stale format) is a `CatalogueError` (a ValueError);
a file with no usable product is a `NoProductsError`, one of them. Re-exported by
`helpers.ingest.scan`. Imports nothing.
"""

from __future__ import annotations


class CatalogueError(ValueError):
    """A catalogue that cannot be built or used as asked (wrong file, stale artifact)."""


class NoProductsError(CatalogueError):
    """The file (or the slice of it asked for) holds no usable product: nothing to search."""
