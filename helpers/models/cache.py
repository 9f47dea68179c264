"""Where built model artifacts (SavedModel, ONNX) are cached, and atomic writes into it.

Cached files are shared by every user of a machine (an app's service account reads
the notebook user's ``.onnx``), so they are published world-readable (files 0644,
folders 0755), and fsynced before the rename so a crash never leaves a truncated
file under the final name. (To be replaced by ``helpers.artifacts.atomic_write``.)
"""

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
FILE_MODE = 0o644
DIR_MODE = 0o755


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
        _share_tree(tmp)
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
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)  # mkstemp makes 0600: others could not read it
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return final


def _share_tree(root: Path) -> None:
    """Folders 0755 and files 0644 below ``root`` (mkdtemp makes 0700)."""
    os.chmod(root, DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            os.chmod(os.path.join(folder, name), FILE_MODE)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
