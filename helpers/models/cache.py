"""Where built model artifacts (SavedModel, ONNX) are cached, and atomic writes into it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["default_cache_dir", "publish_dir", "publish_file", "read_json"]

ENV_VAR = "VPS_MODEL_DIR"


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
    """The JSON object in ``path``, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def publish_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory in a temporary sibling, then rename it to ``final``.

    Readers never see a half-written artifact: a crash leaves only a ``.tmp-*``
    directory behind. An existing ``final`` (stale) is moved aside first and deleted
    after the swap. If another process published concurrently, its copy is kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        build(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:  # a concurrent writer won the race: its result is just as good
            if not final.exists():
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def publish_file(final: Path, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically (temporary file + ``os.replace``)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}-", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return final
