"""Where a run keeps its artifacts, and the steps every notebook starts with.

Each notebook reads on its own: it asks for the catalogue and the vectors it
needs, and they are built the first time and reused after (same file, same
settings), so ``03_faiss`` run alone works, and run after ``02`` costs nothing.

    work_dir/
      catalogue/                         catalogue.parquet, rejects.csv, catalogue.json
      vectors/<model>-<backend>-<size>px-<level>/   vector store
      index/<name>/                      saved indexes
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import catalogue as cat
from .embed import embed_catalogue
from .vectors import VectorStore


class Workspace:
    def __init__(self, work_dir: str | os.PathLike) -> None:
        self.root = Path(work_dir)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def catalogue_dir(self) -> Path:
        return self.root / "catalogue"

    def vectors_dir(self, model: str, backend: str, image_size: int, level: str) -> Path:
        return self.root / "vectors" / f"{model}-{backend}-{image_size}px-{level}"

    def index_dir(self, name: str) -> Path:
        return self.root / "index" / name

    def catalogue(self, bson_path: str | os.PathLike, categories: str | os.PathLike | None,
                  limit: int | None = None, **kw) -> pd.DataFrame:
        """The run's catalogue: built on first use, then reused."""
        summary = cat.build_catalogue(bson_path, self.catalogue_dir, categories, limit=limit,
                                      progress=kw.pop("progress", False), **kw)
        print(f"catalogue: {summary.products_kept:,} products, {summary.images_kept:,} images, "
              f"{summary.categories} categories ({summary.products_rejected} rejected)")
        return cat.load_catalogue(self.catalogue_dir)

    def vectors(self, df: pd.DataFrame, bson_path: str | os.PathLike, extractor,
                image_size: int = 224, level: str = "product", **kw) -> VectorStore:
        """The vector store for this extractor and settings: embedded once, then reused."""
        folder = self.vectors_dir(extractor.name, extractor.backend, image_size, level)
        # Derived data: a store made from another catalogue or settings is rebuilt.
        store = embed_catalogue(df, bson_path, extractor, folder, image_size=image_size,
                                level=level, rebuild_stale=True, **kw)
        print(store)
        return store
