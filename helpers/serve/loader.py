"""What the apps serve: the prebuilt artifacts of a run, opened read-only, never rebuilt.

    from helpers.serve.loader import load_artifacts
    art = load_artifacts()                    # runs/sample/artifacts, what `make demo` writes
    art = load_artifacts("runs/ivf/artifacts", mongo_uri="mongodb://localhost")
    art.catalogue.product(pid); art.images.pictures(product)
    art.methods["faiss"].index.search(q, 10)
    art.available()                           # ["style", "faiss", "annoy"] (+ "elasticsearch")

Start-up reads files only: the catalogue (memory-mapped, `helpers.catalogue.columnar`: its
``catalogue.arrow`` is written beside the Parquet file on first use, or when stale), the
memory-mapped vector stores and the saved indexes (the "style" method's exact index is
rebuilt from its vectors: a matrix copy, no model). Nothing is embedded. A missing artifact
is one `ArtifactMissing` naming the command that builds it; a search method whose artifact
is missing is listed, with that command, in ``art.unavailable`` and the others still serve.

Artifacts are found by their manifests, through the one finder (`helpers.workspace.
Workspace`: catalogues, vector stores single or sharded, indexes), not by folder names, so a
run with other settings or built on Dask loads the same way; an index or vector store made
from another catalogue is skipped, with the reason logged. Imports every layer below it.
Settings (arguments win over the environment): ``VPS_ARTIFACTS`` (the run's artifacts
folder), ``VPS_BSON`` (the picture store, when the BSON file moved since the catalogue was
built), ``VPS_MONGO_URI`` (products from MongoDB instead of the Parquet catalogue).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from helpers.catalogue.image_source import BsonImageSource, ImageSource
from helpers.catalogue.protocol import Catalogue, open_catalogue
from helpers.core.paths import RUNS_DIR, SAMPLE_DIR
from helpers.evaluate.method import Method
from helpers.workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_WORK_DIR = RUNS_DIR / "sample" / "artifacts"
ENV_WORK_DIR = "VPS_ARTIFACTS"
ENV_BSON = "VPS_BSON"
ENV_MONGO = "VPS_MONGO_URI"

# Prefixes of the model names of the feature vectors the indexes serve (older stores:
# "mobilenet_v2_100_imagenet_torchvision"): uploads are embedded by the same model
# (helpers.models.extractor_for).
FEATURE_MODELS = ("mobilenet_v2", "efficientnet_lite2")
STYLE_MODEL = "vgg16_gram_style"  # prefix of the VGG16 Gram style model name

# What builds each artifact, for the messages.
BUILD = {
    "catalogue": "make demo  (or: python run_all.py --only 01)",
    "vectors": "python run_all.py --only 03",
    "faiss": "python run_all.py --only 03",
    "annoy": "python run_all.py --only 04",
    "style": "python run_all.py --only 02",
    "elasticsearch": "python run_all.py --only 05  (with an Elasticsearch node running)",
}
METHOD_LABELS = {
    "style": "Cosine (VGG16 style)",
    "faiss": "FAISS",
    "annoy": "Annoy",
    "elasticsearch": "Elasticsearch",
}
METHOD_ORDER = tuple(METHOD_LABELS)


class ArtifactMissing(RuntimeError):
    """An artifact the apps need is not there; the message names the command to build it."""


@dataclass
class Artifacts:
    """Everything a visual-search app serves, opened once per process."""

    work_dir: Path
    catalogue: Catalogue
    images: ImageSource
    methods: dict[str, Method] = field(default_factory=dict)
    bson_path: Path | None = None

    def available(self) -> list[str]:
        return [m for m in METHOD_ORDER if m in self.methods and self.methods[m].available]

    @property
    def unavailable(self) -> dict[str, str]:
        """Method -> why not (with the command that builds it)."""
        return {m: self.methods[m].reason or "not built" for m in METHOD_ORDER
                if m in self.methods and not self.methods[m].available}

    @property
    def default_method(self) -> str:
        avail = self.available()
        return "faiss" if "faiss" in avail else avail[0]

    def close(self) -> None:
        self.images.close()


def _method(name: str, **kw: Any) -> Method:
    """An app's search method, labelled for people (one Method class: helpers.evaluate)."""
    return Method(name, label=METHOD_LABELS.get(name, name), **kw)


# -- finding artifacts ------------------------------------------------------------------------


def catalogue_dir(ws: Workspace, fingerprints: set[str] | frozenset[str] = frozenset()) -> Path:
    """The catalogue to serve: the newest one that vectors were made from (their catalogue
    fingerprint in ``fingerprints``), else the newest one."""
    cands = ws.catalogues()
    if not cands:
        return ws.root / "catalogue"
    for folder, fp in cands:
        if fp and fp in fingerprints:
            return folder
    return cands[0][0]


def _bson_of(cat_dir: Path) -> Path | None:
    meta_path = cat_dir / "catalogue.json"
    if not meta_path.is_file():
        return None
    src = json.loads(meta_path.read_text()).get("source")
    path = Path(src.get("path") if isinstance(src, dict) else src or "")
    if str(path) in ("", ".") or path.is_file():
        return path if str(path) not in ("", ".") else None
    # Built elsewhere (a PaaS builds in a temp folder, then moves the app): the built-in
    # sample is found again in this checkout.
    moved = SAMPLE_DIR / path.name
    if moved.is_file():
        log.info("%s recorded %s, which is gone; using %s", meta_path, path, moved)
        return moved
    return path


def _open_mongo(mongo_uri: str) -> Catalogue:
    from helpers.catalogue import mongo  # lazy: pymongo's server code only when asked for

    cls = mongo.MongoCatalogue
    opener = getattr(cls, "open", None) or getattr(cls, "from_uri", None)
    return opener(mongo_uri) if opener else cls(mongo_uri)


def _open_columnar(cat_dir: Path) -> Catalogue:
    """The catalogue memory-mapped (`ColumnarCatalogue`: shared by the workers, no object
    per product), its file written beside the Parquet one on first use. A folder that
    cannot be written (a read-only deploy) serves the Parquet catalogue in memory instead."""
    from helpers.catalogue.columnar import ColumnarCatalogue
    from helpers.ingest.scan import CatalogueError

    try:
        return ColumnarCatalogue.open(cat_dir)
    except CatalogueError as exc:  # one of an older format: its message names the rebuild
        raise ArtifactMissing(str(exc)) from None
    except OSError as exc:
        log.warning("cannot write the serving catalogue in %s (%s): serving the Parquet "
                    "catalogue, held in memory by each process", cat_dir, exc)
        return open_catalogue(cat_dir)


# -- loading ----------------------------------------------------------------------------------


def load_artifacts(work_dir: str | os.PathLike | None = None, *,
                   mongo_uri: str | None = None, bson_path: str | os.PathLike | None = None,
                   methods: tuple[str, ...] = METHOD_ORDER) -> Artifacts:
    """Open a run's artifacts for serving (see the module docstring).

    Raises ArtifactMissing when the catalogue, the picture store or every search method
    is missing; a single missing method only makes that method unavailable.
    """
    root = Path(work_dir or os.environ.get(ENV_WORK_DIR) or DEFAULT_WORK_DIR).expanduser()
    mongo_uri = mongo_uri or os.environ.get(ENV_MONGO) or None
    if not root.is_dir():
        raise ArtifactMissing(f"no artifacts at {root}: build them with `{BUILD['catalogue']}`"
                              f", or point {ENV_WORK_DIR} at a run's artifacts folder")
    ws = Workspace(root)
    # The catalogue that the run's vectors were made from (their manifests' input).
    made_from = {m.get("inputs", {}).get("catalogue") for _, m in ws.find("vectors")}
    cat_dir = catalogue_dir(ws, {fp for fp in made_from if fp})
    has_parquet = (cat_dir / "catalogue.json").is_file()
    if mongo_uri:
        catalogue = _open_mongo(mongo_uri)
    elif has_parquet:
        catalogue = _open_columnar(cat_dir)
    else:
        raise ArtifactMissing(f"no catalogue in {cat_dir}: build it with `{BUILD['catalogue']}`")
    bson = Path(bson_path or os.environ.get(ENV_BSON) or _bson_of(cat_dir) or "")
    if not str(bson) or not bson.is_file():
        where = f" ({bson})" if str(bson) not in ("", ".") else ""
        raise ArtifactMissing(f"the product pictures' BSON file is missing{where}: set "
                              f"{ENV_BSON} to its path, or rebuild with `{BUILD['catalogue']}`")
    art = Artifacts(root, catalogue, BsonImageSource(bson), bson_path=bson)
    fingerprint = catalogue.fingerprint
    features = _open_features(ws, fingerprint, methods)
    for name in methods:
        if name == "style":
            art.methods[name] = _style_method(ws, catalogue, fingerprint)
        else:
            art.methods[name] = _index_method(ws, name, features)
    for name, why in art.unavailable.items():
        log.info("method %s unavailable: %s", name, why)
    if not art.available():
        art.close()
        lines = "; ".join(f"{m}: {why}" for m, why in art.unavailable.items())
        raise ArtifactMissing(f"no search method can serve from {root}: build them with "
                              f"`make demo` ({lines})")
    return art


def _open_features(ws: Workspace, fingerprint: str, methods: tuple[str, ...]) -> Any:
    """The feature vectors to serve, single or sharded: of the stores of any of
    FEATURE_MODELS (product level first, newest first), the first that an index of
    ``methods`` was built from, else the first (a newer store of another model does not
    hide the one the indexes were built on)."""
    stores = ws.stores(FEATURE_MODELS, catalogue=fingerprint)
    for store in stores:
        if any(ws.indexes(ENGINES.get(m, m), store) for m in methods if m != "style"):
            return store
    return stores[0] if stores else None


def _can_embed(store: Any) -> bool:
    """Can an upload be embedded here by the model that made ``store`` (no TensorFlow)?"""
    from helpers.models import extractor_args

    try:
        extractor_args(store.made_by, serving=True)
    except ValueError as exc:
        log.info("no photo search on %s: %s", store.folder, exc)
        return False
    return True


def _style_method(ws: Workspace, catalogue: Catalogue, fingerprint: str) -> Method:
    store = next(iter(ws.stores((STYLE_MODEL,), catalogue=fingerprint)), None)
    if store is None or len(store) == 0:
        return _method("style", reason=f"no VGG16 style vectors: build them with "
                                       f"`{BUILD['style']}`")
    from helpers.index import build_index

    # Exact cosine over the style vectors: a normalised copy, the notebooks' "02" search.
    cats = catalogue.category_ids(store.product_ids)
    index = build_index("exact", np.asarray(store.vectors), store.item_ids, cats,
                        source=store.made_by)
    return _method("style", index=index, store=store, upload=False)


# The app's "faiss" method serves any FAISS index of the run, newest first: the in-RAM kind
# notebook 03 builds on a sample, or the compressed one it builds for the full dump.
ENGINES = {"faiss": ("faiss", "faiss_compressed")}


def _index_method(ws: Workspace, name: str, features: Any) -> Method:
    from helpers.index import METHODS, load_index

    try:
        METHODS[name]  # imports the engine's module (a Mapping's `in` would too)
    except KeyError:
        return _method(name, reason=f"the {name} engine is not part of this version")
    except ImportError as exc:  # a slim deploy without that engine's client library
        return _method(name, reason=f"the {name} engine needs the Python package "
                                    f"{exc.name!r}: pip install it to serve {name}")
    if features is None:
        return _method(name, reason=f"no MobileNetV2 or EfficientNet-Lite2 vectors: build "
                                    f"them with `{BUILD['vectors']}`")
    folders = ws.indexes(ENGINES.get(name, name), features)
    if not folders:
        return _method(name, reason=f"no {name} index: build it with `{BUILD.get(name, '')}`")
    errors = []
    for folder in folders:
        try:
            index = load_index(folder, expect_source={"model": features.made_by.get("model")})
            return _method(name, index=index, store=features, upload=_can_embed(features))
        except Exception as exc:  # noqa: BLE001 - a node down, a damaged file: try the next
            errors.append(f"{folder.name}: {type(exc).__name__}: {exc}")
    return _method(name, reason=f"{name} index could not be opened ({'; '.join(errors)[:300]})")


def configure_app_process() -> None:
    """Process-wide settings of an app server, called once at its start-up (the apps do):
    FAISS searches on one OpenMP thread. An app runs one query per request, many requests
    at once: OpenMP threads per query only contend (a single-query search gets ~8x slower
    on 2 cores). Not done by `load_artifacts`: a notebook that opens the artifacts keeps
    all its threads for its batch searches."""
    try:
        import faiss
    except ImportError:  # a slim deploy without FAISS: nothing to set
        return
    faiss.omp_set_num_threads(1)


# -- building a small serving set (tests, a PaaS release step) ------------------------------


def build_serving_artifacts(work_dir: str | os.PathLike, bson_path: str | os.PathLike,
                            categories_path: str | os.PathLike | None = None, *,
                            limit: int | None = None, image_size: int = 180,
                            style: bool = False, n_trees: int = 20,
                            factory: str = "Flat") -> Path:
    """Build what the apps serve without the notebooks: catalogue, MobileNetV2 vectors
    (ONNX), a FAISS and an Annoy index, and optionally VGG16 style vectors (TensorFlow).

    The same artifacts as the notebooks 01-04 write, in the same layout; tests build a
    small set of them from the built-in sample. Reuses what is already there.
    """
    from helpers.index import build_index
    from helpers.models import load_extractor
    ws = Workspace(work_dir)
    catalogue = ws.catalogue(bson_path, categories_path, limit=limit)
    images = ws.images(bson_path)
    store = ws.vectors(catalogue, images, load_extractor("mobilenet_v2", "onnx"),
                       image_size=image_size,
                       level="product", progress=False)
    cats = catalogue.category_ids(store.product_ids)
    for name, method, params in (("faiss-" + factory.replace(",", "_"), "faiss",
                                  {"factory": factory}),
                                 (f"annoy-{n_trees}", "annoy", {"n_trees": n_trees})):
        if not ws.indexes(method, store):
            build_index(method, store.vectors, store.item_ids, cats, source=store.made_by,
                        **params).save(ws.index_dir(name))
    if style:
        from helpers.models import load_style_extractor

        ws.vectors(catalogue, images, load_style_extractor(), image_size=image_size,
                   level="product", progress=False)
    images.close()
    return ws.root
