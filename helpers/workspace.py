"""Where a run keeps its artifacts, and the steps every notebook starts with.

Each notebook reads on its own: it asks for the catalogue and the vectors it needs, and
they are built the first time and reused after, so ``03_faiss`` run alone works, and run
after ``02`` costs nothing. Every artifact folder is named by the settings that made it,
so two runs with another ``limit``, image size, level, model or runtime never overwrite each
other (and a 12-hour embedding is never rebuilt over)::

    work_dir/
      catalogue/<file>-<settings id>/            catalogue.parquet, rejects.csv, manifest.json
      vectors/<model>-<runtime>[-<precision>]-<size>px-<level>-<catalogue id>/   vectors
      index/<name>/current -> v-<time>/          saved indexes, one immutable version each
      duplicates/<vectors folder>-t<threshold>/  near-duplicate clusters of a vector store

The one artifact finder: `find` lists the finished artifacts of a run by kind from their
manifests, newest first; `catalogues`, `stores` (single or sharded vector stores, so a Dask
run's shards are found like a single store) and `indexes` build on it. The apps, 06 and
the notebooks all find artifacts here; nothing walks folders for other files.

Imports helpers.core, helpers.ingest.scan, helpers.catalogue, helpers.vectors and
helpers.index.manifest (to find indexes) and helpers.index.duplicates (near-duplicate
clusters); never a model or an engine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from helpers.catalogue.image_source import BsonImageSource, ImageSource
from helpers.catalogue.protocol import Catalogue, ParquetCatalogue
from helpers.core import artifacts
from helpers.index.duplicates import NEAR_DUP_THRESHOLD, NearDuplicates, near_duplicate_clusters
from helpers.index.manifest import read_meta as read_index_meta
from helpers.ingest import scan as cat
from helpers.vectors import StoreReads, VectorStoreError, open_store
from helpers.vectors.derive import product_store
from helpers.vectors.embed import embed_catalogue
from helpers.vectors.store import VectorStore, read_meta

log = logging.getLogger(__name__)
KINDS = ("catalogue", "vectors", "index", "duplicates")
# Up to this many products, a product-level store is the mean of an image-level one that
# is kept (Workspace.vectors): each picture embedded once when a run needs both levels.
PRODUCTS_VIA_PICTURES = 500_000
RUN_SETTINGS = "run.json"  # the settings of the run's catalogue, shared by its notebooks


class RunSettingsError(ValueError):
    """A notebook asked for a catalogue made with other settings than its run's."""


class Workspace:
    def __init__(self, work_dir: str | os.PathLike) -> None:
        self.root = Path(work_dir)
        self.root.mkdir(parents=True, exist_ok=True)

    def catalogue_dir(self, bson_path: str | os.PathLike,
                      categories: str | os.PathLike | None = None, *, claim: bool = False,
                      **params: Any) -> Path:
        """The folder of the catalogue of ``bson_path`` made with these parameters.

        claim: this is the run's catalogue (what the notebooks ask for). The first claim
        records its settings in ``run.json``; a later one with other settings (a notebook
        given another ``limit`` or ``skip`` than 01 was) is refused, naming the difference,
        rather than quietly building a second catalogue that the run's other notebooks
        never see.
        """
        settings = cat.catalogue_settings(bson_path, categories, **params)
        if claim:
            self._claim_run(settings)
        return self.root / "catalogue" / f"{Path(bson_path).stem}-{artifacts.content_id(settings)}"

    def _claim_run(self, settings: dict[str, Any]) -> None:
        path = self.root / RUN_SETTINGS
        want = {"source": settings["source"]["path"], **settings["params"]}
        if not path.exists():
            artifacts.write_json(path, {"catalogue": want})
            return
        have = artifacts.read_json(path).get("catalogue", {})
        diff = artifacts.settings_diff(have, want, sorted(set(have) | set(want)))
        if diff:
            raise RunSettingsError(
                f"{self.root} is a run whose catalogue was made with other settings ("
                + artifacts.describe_diff(diff, "run", "asked") + "): give this notebook the "
                "run's parameters (run_all.py passes them to every notebook), or another "
                f"work_dir; or delete {path} to let this run's catalogue change")

    def vectors_dir(self, extractor_meta: dict[str, Any], image_size: int, level: str,
                    catalogue: Catalogue) -> Path:
        m = extractor_meta
        precision = m.get("precision")
        # "backend": what extractors recorded before model and runtime were two settings.
        runtime = m.get("runtime") or m.get("backend", "")
        if precision and precision != "fp32":
            runtime = f"{runtime}-{precision}"
        name = "-".join(str(x) for x in (m.get("model", "model"), runtime) if x)
        return (self.root / "vectors"
                / f"{name}-{image_size}px-{level}-{catalogue.fingerprint[:10]}")

    def index_dir(self, name: str) -> Path:
        return self.root / "index" / name

    def catalogue(self, bson_path: str | os.PathLike, categories: str | os.PathLike | None,
                  limit: int | None = None, **kw: Any) -> ParquetCatalogue:
        """The run's catalogue: built on first use, then reused."""
        progress = kw.pop("progress", False)
        workers = kw.pop("workers", 1)
        folder = self.catalogue_dir(bson_path, categories, claim=True, limit=limit, **kw)
        summary = cat.build_catalogue(bson_path, folder, categories, limit=limit,
                                      progress=progress, workers=workers, **kw)
        cat.require_products(summary)  # an empty dump: one plain error, in every notebook
        log.info("catalogue: %s products, %s images, %s categories (%s rejected)",
                 f"{summary.products_kept:,}", f"{summary.images_kept:,}",
                 summary.categories, summary.products_rejected)
        return ParquetCatalogue.open(folder)

    @staticmethod
    def images(bson_path: str | os.PathLike) -> ImageSource:
        """The pictures of a BSON dump, read by offset."""
        return BsonImageSource(bson_path)

    def vectors(self, catalogue: Catalogue, images: ImageSource | str | os.PathLike,
                extractor, image_size: int = 224, level: str = "product",
                via_pictures: bool | None = None, **kw: Any) -> VectorStore:
        """The vector store for this extractor and settings: embedded once, then reused.

        Its folder is named by the settings and the catalogue, so nothing else is ever
        found there; an unfinished store there is resumed.

        via_pictures: a product-level store is derived from the image-level one
        (``helpers.vectors.derive``), which is embedded (or reused) first, so that a run
        needing both levels (06 finds pictures of the same product) embeds each picture
        once. None (default): so when the catalogue has at most PRODUCTS_VIA_PICTURES
        products; above that, the product store is embedded directly and no image-level
        copy is written (63 GB at the full dump's 12.4 M pictures).
        """
        meta = extractor.meta() if hasattr(extractor, "meta") else {"model": repr(extractor)}
        folder = self.vectors_dir(meta, image_size, level, catalogue)
        if via_pictures is None:
            via_pictures = len(catalogue) <= PRODUCTS_VIA_PICTURES
        if level == "product" and via_pictures and read_meta(folder) is None:
            pictures = self.vectors(catalogue, images, extractor, image_size, "image", **kw)
            return product_store(pictures, folder)
        return embed_catalogue(catalogue, images, extractor, folder, image_size=image_size,
                               level=level, **kw)

    def near_duplicates(self, store: StoreReads, threshold: float | None = NEAR_DUP_THRESHOLD,
                        build: bool = True) -> NearDuplicates | None:
        """The near-duplicate clusters of ``store`` at ``threshold`` (None: the newest at any
        threshold): found, else built (in blocks, `helpers.index.duplicates`) and saved;
        with build=False (the apps: nothing is built while serving), None when none are."""
        for folder, manifest in self.find("duplicates"):
            if manifest.get("inputs", {}).get("vectors") == store.id and threshold in (
                    None, manifest.get("settings", {}).get("threshold")):
                return NearDuplicates.load(folder)
        if not build:
            return None
        threshold = NEAR_DUP_THRESHOLD if threshold is None else threshold
        found = near_duplicate_clusters(store.item_ids, store.vectors, threshold,
                                        level=store.level)
        name = f"{Path(store.folder).name}-t{threshold:g}"
        found.save(self.root / "duplicates" / name, inputs={"vectors": store.id})
        return found

    def find(self, kind: str) -> list[tuple[Path, dict[str, Any]]]:
        """(folder, manifest) of every finished artifact of ``kind``, newest first."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        found = []
        for folder in sorted((self.root / kind).glob("*")):
            if not folder.is_dir() or ".stale-" in folder.name or folder.name.startswith("."):
                continue
            manifest = artifacts.read_manifest(artifacts.resolve_version(folder),
                                               missing_ok=True)
            if manifest is not None:
                found.append((folder, manifest))
        return sorted(found, key=lambda fm: fm[1].get("created", ""), reverse=True)

    def catalogues(self) -> list[tuple[Path, str | None]]:
        """(folder, content fingerprint) of the run's finished catalogues, newest first."""
        return [(artifacts.resolve_version(folder), manifest.get("fingerprint"))
                for folder, manifest in self.find("catalogue")]

    def stores(self, models: tuple[str, ...] = (), catalogue: str | None = None
               ) -> list[StoreReads]:
        """The run's finished vector stores, single or sharded, opened (memory-mapped):
        product level first, then newest first.

        models: prefixes of the model names wanted (any when empty). catalogue: a catalogue
        fingerprint; a store made from another catalogue is left out (its ids would not be
        this catalogue's products). A store that does not open is logged and left out."""
        out = []
        for folder, manifest in self.find("vectors"):
            model = str(manifest.get("settings", {}).get("model", ""))
            if models and not model.startswith(tuple(models)):
                continue
            made_from = manifest.get("inputs", {}).get("catalogue")
            if catalogue and made_from and made_from != catalogue:
                log.info("%s: vectors of another catalogue (%s, not %s), skipped",
                         folder, made_from, catalogue)
                continue
            try:
                out.append(open_store(folder))
            except VectorStoreError as exc:
                log.warning("%s: %s", folder, exc)
        return sorted(out, key=lambda s: s.made_by.get("level", "product") != "product")

    def indexes(self, method: str | tuple[str, ...], store: StoreReads) -> list[Path]:
        """Saved index folders of ``method`` (or of any of several) built from ``store``,
        newest first: the vectors' content id in the index's manifest, or (an index given
        plain metadata as its source) the same model, size, level and catalogue in its
        meta.json."""
        keys = ("model", "image_size", "level", "catalogue_sha256")
        methods = (method,) if isinstance(method, str) else tuple(method)
        out = []
        for folder, manifest in self.find("index"):
            if manifest.get("settings", {}).get("method") not in methods:
                continue
            made_from = manifest.get("inputs", {}).get("vectors")
            if made_from is not None:
                if made_from == store.id:
                    out.append(folder)
                continue
            try:
                src = read_index_meta(folder).get("source") or {}
            except Exception as exc:  # noqa: BLE001 - a damaged folder: not one to serve
                log.warning("%s: %s", folder, exc)
                continue
            made_by = store.made_by
            if all(src.get(k) == made_by.get(k) for k in keys if k in src and k in made_by):
                out.append(folder)
        return out
