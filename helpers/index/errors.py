"""The exceptions of the index layer, in one place so every engine raises the same ones.

Bad input is an `IndexInputError` (a ValueError subclass, so `except ValueError` catches all
of them); a saved index that is not the one expected is an `IndexMismatchError`; what an
engine cannot do is a `NotSupportedError` (a NotImplementedError). Imports nothing.
"""

from __future__ import annotations


class IndexInputError(ValueError):
    """Base class of the errors raised for bad arguments to an index."""


class DimensionError(IndexInputError):
    """Vectors do not have the index dimension."""


class InvalidVectorError(IndexInputError):
    """A vector holds NaN/inf or is all zeros (cosine is undefined)."""


class InvalidKError(IndexInputError):
    """k <= 0, or more neighbours asked than items (in the filtered categories)."""


class UnknownIdError(IndexInputError):
    """A product id is not in the index."""


class DuplicateIdError(IndexInputError):
    """A product id is given twice, or is already in the index."""


class EmptyIndexError(IndexInputError):
    """Building from zero vectors."""


class CategoryError(IndexInputError):
    """Category filter or categories that do not fit the index."""


class TrainingError(IndexInputError):
    """Too few vectors to train the index (e.g. fewer than nlist for IVF)."""


class IndexMismatchError(ValueError):
    """A saved index is not what the caller expects (other method, model, dimension...)."""


class NotSupportedError(NotImplementedError):
    """The engine cannot do this (e.g. remove from Annoy or from a FAISS HNSW graph)."""
