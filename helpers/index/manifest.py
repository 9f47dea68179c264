"""meta.json and manifest.json of a saved index: what it is, and what vectors built it.

Shared by `helpers.index.local` (the in-process engines) and the Elasticsearch engine,
whose saved folder is a meta.json only. `check_source` / `check_vectors` refuse an index of
other vectors, naming the settings that differ. Imports `helpers.core.artifacts` and the
index protocol only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from helpers.core import artifacts
from helpers.index.errors import IndexMismatchError
from helpers.index.protocol import METRIC

META_FILE = "meta.json"
FORMAT_VERSION = 1


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The meta.json of a saved index directory (its current version)."""
    f = artifacts.resolve_version(path) / META_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a saved index: no {META_FILE}")
    meta = artifacts.read_json(f)
    if meta.get("format") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{f}: index format {meta.get('format')}, expected {FORMAT_VERSION}"
        )
    if meta.get("metric") != METRIC:
        raise IndexMismatchError(f"{f}: metric {meta.get('metric')!r}, expected {METRIC!r}")
    return meta


def check_source(
    meta_source: Mapping[str, Any], expect: Mapping[str, Any] | None, where: str
) -> None:
    """Refuse an index built from other vectors: every key of `expect` must match."""
    diff = artifacts.settings_diff(meta_source, expect or {})
    if diff:
        raise IndexMismatchError(f"{where} was built from other vectors: "
                                 + artifacts.describe_diff(diff, "index has", "expected"))


def check_vectors(meta: Mapping[str, Any], vectors: Any, where: str) -> None:
    """Refuse an index built from another vector store than ``vectors`` (a VectorStore or
    its manifest), naming the settings that differ (image size, level, backend, catalogue)."""
    want = getattr(vectors, "manifest", vectors)
    manifest = meta.get("manifest") or {}
    built_from = manifest.get("inputs", {}).get("vectors")
    if built_from == want.get("id"):
        return
    have = manifest.get("chain", {}).get("vectors", {})
    diff = artifacts.settings_diff(have, want.get("settings", {}))
    cat_have = manifest.get("chain", {}).get("catalogue", {})
    cat_want = want.get("chain", {}).get("catalogue", {})
    diff |= {f"catalogue {k}": v for k, v in artifacts.settings_diff(cat_have, cat_want).items()}
    why = artifacts.describe_diff(diff, "index has", "store has") if diff else \
        f"vectors {built_from!r}, not {want.get('id')!r}"
    raise IndexMismatchError(f"{where} was built from other vectors: {why}")


def json_safe(d: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A JSON round trip of `d` (what meta.json will hold); TypeError names `what`."""
    try:
        return json.loads(json.dumps(dict(d)))
    except TypeError as e:
        raise TypeError(f"{what} must be JSON-serialisable: {e}") from None


def index_meta(index: Any, files: Mapping[str, str | None], engine_version: str | None,
               engine: Mapping[str, Any]) -> dict[str, Any]:
    """meta.json of a saved index: what it is (format, method, metric, dim, n), its knobs,
    build parameters and source, the engine's version and own state (`engine`), its files
    and its manifest."""
    return {"format": FORMAT_VERSION, "method": index.method, "metric": METRIC,
            "dim": index.dim, "n": len(index), "params": dict(index.params),
            "build_params": index.build_params, "source": index.source,
            "engine_version": engine_version, "engine": json_safe(engine, "engine meta"),
            "files": dict(files), "manifest": index.manifest}


def index_manifest(index: Any, store: Mapping[str, Any] | None) -> dict[str, Any]:
    """The manifest of an index (anything with method, build_params, dim and a length),
    chained to the manifest of the vector store it was built from when known."""
    settings = {"method": index.method, "build_params": index.build_params, "dim": index.dim,
                "n": len(index)}
    if store is None:
        return artifacts.make_manifest("index", settings)
    return artifacts.make_manifest(
        "index", settings, inputs={"vectors": store["id"]},
        chain={"vectors": store.get("settings", {}),
               "catalogue": store.get("chain", {}).get("catalogue", {})})
