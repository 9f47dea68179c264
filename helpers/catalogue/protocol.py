"""The catalogue protocol: products by id, by category, in pages, with their category path.

Everything downstream of the scan (the embedder, the galleries, the apps, 06_compare) asks
a `Catalogue`, never a DataFrame or a file path, so the products can live in Parquet (here),
in MongoDB (`helpers.catalogue.mongo.MongoCatalogue`) or in Dask shards without touching them.

    from helpers.catalogue.protocol import open_catalogue
    cat = open_catalogue("runs/sample/artifacts/catalogue")
    p = cat.product(1000010653)            # Product(product_id=..., category_path=(...), ...)
    cat.by_category(p.category_id, limit=20)
    cat.page(offset=0, limit=100)

Lookups use sorted id arrays (`helpers.core.ids.IdMap`): no per-process dict of 7 M ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from helpers.core.ids import IdMap
from helpers.ingest.schema import catalogue_fingerprint

CategoryPath = tuple[str, str, str]


class UnknownProductError(KeyError):
    """A product id that is not in the catalogue."""

    def __str__(self) -> str:  # KeyError quotes its argument; say it plainly
        return str(self.args[0]) if self.args else "unknown product"


@dataclass(frozen=True)
class Product:
    """One catalogue product. ``offset``/``length`` locate its document in the image source.

    ``n_images`` counts every picture of the document, bad ones included, and
    ``bad_images`` lists the indexes of those left out: a picture keeps its index in the
    document everywhere (image ids, JPEG file names, picture URLs).
    """

    product_id: int
    category_id: int | None
    category_path: CategoryPath | None  # level 1, 2, 3 names (None: category not in the CSV)
    n_images: int  # pictures in the document, bad ones included
    bad_images: tuple[int, ...] = ()  # their indexes in the document
    offset: int = -1
    length: int = -1

    @property
    def usable_images(self) -> list[int]:
        """Indexes of the pictures that passed the catalogue's checks."""
        bad = set(self.bad_images)
        return [i for i in range(self.n_images) if i not in bad]

    @property
    def n_usable(self) -> int:
        """How many pictures passed the catalogue's checks."""
        return self.n_images - len(set(self.bad_images))

    @property
    def label(self) -> str:
        """The leaf category name, or '?'."""
        return self.category_path[2] if self.category_path else "?"

    def to_dict(self) -> dict[str, Any]:
        return {"product_id": self.product_id, "category_id": self.category_id,
                "category_path": list(self.category_path) if self.category_path else None,
                "n_images": self.n_images, "bad_images": list(self.bad_images),
                "offset": self.offset, "length": self.length}


@runtime_checkable
class Catalogue(Protocol):
    """What every product catalogue implements (Parquet, MongoDB, shards)."""

    @property
    def fingerprint(self) -> str:
        """Changes whenever the products (ids, offsets, pictures) change."""

    def __len__(self) -> int: ...

    def product(self, product_id: int) -> Product:
        """One product; UnknownProductError if it is not there."""

    def products(self, product_ids: Sequence[int]) -> list[Product]: ...

    def page(self, offset: int = 0, limit: int = 100) -> list[Product]:
        """Products in catalogue order, ``[offset, offset + limit)``."""

    def by_category(self, category_id: int, offset: int = 0,
                    limit: int | None = 100) -> list[Product]:
        """The products of one (leaf) category, in catalogue order."""

    def category_path(self, category_id: int) -> CategoryPath | None: ...

    def category_ids(self, product_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """int64 category id of each product (-1 where unknown), in that order."""

    def ids(self) -> np.ndarray:
        """Every product id, in catalogue order."""


def as_product_id(value: Any) -> int:
    """A product id from what a caller passed; UnknownProductError if it is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnknownProductError(f"not a product id: {value!r}") from None


def rows_of(id_map: IdMap, product_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Catalogue rows of product ids (the one lookup of the array-backed catalogues);
    UnknownProductError names the missing ones."""
    pids = np.asarray(product_ids, np.int64).ravel()
    rows = id_map.rows(pids, missing=-1)
    if (rows < 0).any():
        missing = pids[rows < 0][:5].tolist()
        raise UnknownProductError(f"product id(s) not in the catalogue: {missing}")
    return rows


def iter_products(catalogue: Catalogue, start: int = 0,
                  page_size: int = 1000) -> Iterator[Product]:
    """Every product from position ``start`` on, read a page at a time."""
    offset = start
    while True:
        page = catalogue.page(offset, page_size)
        yield from page
        if len(page) < page_size:
            return
        offset += page_size


class ParquetCatalogue:
    """The catalogue written by `helpers.ingest.scan.build_catalogue`, held as numpy columns."""

    def __init__(self, df: pd.DataFrame, fingerprint: str | None = None,
                 source: str | None = None) -> None:
        self.df = df.reset_index(drop=True)
        self.source = source
        self._pids = self.df["product_id"].to_numpy(np.int64)
        self._pid_map = IdMap(self._pids)
        cats = self.df["category_id"]
        self._cats = cats.fillna(-1).to_numpy(np.int64) if cats.isna().any() \
            else cats.to_numpy(np.int64)
        self._cat_map = IdMap(self._cats)  # repeated ids: rows of a category, in order
        self._fingerprint = fingerprint
        self._paths: dict[int, CategoryPath | None] = {}
        # Plain numpy columns: building a Product must not cost a pandas row lookup.
        self._n_images = self.df["n_images"].to_numpy(np.int64)
        self._offset = self.df["offset"].to_numpy(np.int64)
        self._length = self.df["length"].to_numpy(np.int64)
        self._bad = self.df["bad_images"].to_numpy(object)
        levels = ("category_level1", "category_level2", "category_level3")
        self._names = ([self.df[c].astype(object).to_numpy() for c in levels]
                       if set(levels) <= set(self.df.columns) else None)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> ParquetCatalogue:
        from helpers.ingest import scan as cat

        df = cat.load_catalogue(folder)
        return cls(df, source=str(folder))

    # -- protocol --

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = catalogue_fingerprint(self.df)
        return self._fingerprint

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return f"ParquetCatalogue({len(self):,} products, {self.source or 'in memory'})"

    def rows(self, product_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Catalogue rows of product ids; UnknownProductError names the missing ones."""
        return rows_of(self._pid_map, product_ids)

    def product(self, product_id: int) -> Product:
        return self._at(int(self.rows([as_product_id(product_id)])[0]))

    def products(self, product_ids: Sequence[int]) -> list[Product]:
        return [self._at(int(r)) for r in self.rows(product_ids)]

    def page(self, offset: int = 0, limit: int = 100) -> list[Product]:
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be >= 0, got {offset}, {limit}")
        return [self._at(r) for r in range(offset, min(len(self), offset + limit))]

    def by_category(self, category_id: int, offset: int = 0,
                    limit: int | None = 100) -> list[Product]:
        rows = self._cat_map.all_rows(int(category_id))  # catalogue order within a category
        end = None if limit is None else offset + limit
        return [self._at(int(r)) for r in rows[offset:end]]

    def category_path(self, category_id: int) -> CategoryPath | None:
        cid = int(category_id)
        if cid not in self._paths:
            first = int(self._cat_map.rows([cid], missing=-1)[0])
            self._paths[cid] = self._path_at(first) if first >= 0 else None
        return self._paths[cid]

    def category_ids(self, product_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        shape = np.shape(product_ids)
        return self._cats[self.rows(product_ids)].reshape(shape)

    def ids(self) -> np.ndarray:
        v = self._pids.view()
        v.flags.writeable = False
        return v

    # -- extras of this implementation --

    def category_sizes(self) -> pd.Series:
        """Products per category id, largest first."""
        return pd.Series(self._cats).value_counts()

    def _path_at(self, row: int) -> CategoryPath | None:
        if self._names is None:
            return None
        names = [col[row] for col in self._names]
        if any(n is None or pd.isna(n) for n in names):
            return None
        return tuple(str(n) for n in names)  # type: ignore[return-value]

    def _at(self, row: int) -> Product:
        cid = int(self._cats[row])
        bad = self._bad[row]
        return Product(
            product_id=int(self._pids[row]),
            category_id=None if cid < 0 else cid,
            category_path=self._path_at(row),
            n_images=int(self._n_images[row]),
            bad_images=tuple(int(i) for i in (() if bad is None else bad)),
            offset=int(self._offset[row]),
            length=int(self._length[row]),
        )


def open_catalogue(where: str | os.PathLike | Catalogue) -> Catalogue:
    """A catalogue from a folder written by build_catalogue (or one already open)."""
    if isinstance(where, str | os.PathLike):
        return ParquetCatalogue.open(Path(where))
    return where
