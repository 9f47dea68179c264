"""PCA for an index that keeps reduced vectors (Annoy at full scale): fitted on a sample,
applied block by block while building, saved beside the engine file so that queries are
reduced the same way.

    pca = Pca.fit(UnitChunks(store.vectors), dim=128, sample=50_000)
    z = pca.apply(unit_block)          # [rows, 128]: centred, projected
    x = pca.restore(z)                 # back in the input space: apply(restore(z)) == z
    pca.save(d / "pca.npz"); Pca.load(d / "pca.npz")

Centred PCA keeps L2 distances (centring moves every point alike), not angles: an engine
fed with `apply`'s output ranks by L2 distance, which on unit input vectors is the cosine
order (|a - b|^2 = 2 - 2 cos). Only the sample is held in RAM (sample x d x 4 bytes).
Imports numpy and the index layer's chunks and errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from helpers.index.chunks import UnitChunks
from helpers.index.errors import IndexInputError, IndexMismatchError

DEFAULT_SAMPLE = 50_000  # ~40 rows a dimension at 1280-d: 256 MB held while fitting


class Pca:
    """x -> (x - mean) @ components: mean [d_in], components [d_in, d_out], orthonormal."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, kept: float) -> None:
        self.mean = np.asarray(mean, np.float32)
        self.components = np.ascontiguousarray(components, np.float32)
        self.kept = float(kept)  # share of the sample's variance the components keep

    @classmethod
    def fit(cls, chunks: UnitChunks, dim: int, sample: int = DEFAULT_SAMPLE,
            seed: int = 1234) -> Pca:
        """The top `dim` principal axes of `sample` random rows (all rows if fewer)."""
        if not 1 <= dim <= chunks.dim:
            raise IndexInputError(f"pca_dim must be in 1..{chunks.dim}, got {dim}")
        x = chunks.sample(sample, seed)
        mean = x.mean(axis=0)
        x -= mean
        # float32 product, float64 eigen-solve: the d x d covariance is small.
        cov = (x.T @ x).astype(np.float64) / max(1, len(x) - 1)
        var, axes = np.linalg.eigh(cov)  # ascending
        top = np.argsort(var)[::-1][:dim]
        kept = var[top].sum() / max(var.sum(), 1e-30)
        return cls(mean, axes[:, top], kept)

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Reduced rows, float32 [n, out_dim]."""
        return np.ascontiguousarray((np.asarray(x, np.float32) - self.mean) @ self.components)

    def restore(self, z: np.ndarray) -> np.ndarray:
        """The input-space point a reduced row stands for (what the reduction kept)."""
        return self.mean + np.asarray(z, np.float32) @ self.components.T

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as f:  # np.savez would rename a path without ".npz"
            np.savez(f, mean=self.mean, components=self.components, kept=self.kept)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Pca:
        if not Path(path).is_file():
            raise IndexMismatchError(f"{path} missing: the index was built with a PCA")
        with np.load(path) as z:
            return cls(z["mean"], z["components"], float(z["kept"]))
