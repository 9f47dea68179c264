"""Where built model artifacts (SavedModel, ONNX) are cached, and atomic writes into it.

Cached files are shared by every user of a machine (an app's service account reads
the notebook user's ``.onnx``), so they are published world-readable (files 0644,
folders 0755) and fsynced before the rename (``helpers.core.artifacts`` does both).

Imports: the standard library and ``helpers.core.artifacts``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.core import artifacts

__all__ = ["default_cache_dir", "publish_dir", "publish_file", "read_json"]

ENV_VAR = "VPS_MODEL_DIR"
FILE_MODE = artifacts.FILE_MODE
DIR_MODE = artifacts.DIR_MODE


def default_cache_dir() -> Path:
    """Root of the model cache: ``$VPS_MODEL_DIR`` or ``~/.cache/visual-product-search/models``.

    Artifacts live in named entries below it, e.g. ``mobilenet_v2_100_feature_vector/``
    (the SavedModel) and ``mobilenet_v2_100_feature_vector.onnx`` beside it.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "visual-product-search" / "models"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing or unreadable (rebuild then)."""
    try:
        return artifacts.read_json(path, missing_ok=True)
    except artifacts.ArtifactError:
        return None


def publish_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory in a temporary sibling, then rename it to ``final`` (atomic)."""
    return artifacts.publish_dir(final, build)


def publish_file(final: Path, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically, fsynced, mode 0644."""
    return artifacts.write_bytes(final, data)
