"""Artifacts on disk: atomic writes, JSON meta, settings diffs and manifests.

Every artifact (catalogue, vector store, index) is a folder with a ``manifest.json``:

    {"kind": "vectors", "id": "3f2a9c0e1b7d",            # hash of settings + inputs
     "settings": {"model": ..., "backend": ..., "image_size": 224, "level": "product", ...},
     "inputs": {"catalogue": "<catalogue id>"},          # ids of the artifacts it was made from
     "chain": {"catalogue": {...settings...}},           # their settings, to name differences
     "created": "2026-11-25T12:00:00Z", "tool": "visual-product-search 0.1.0"}

An artifact is identified by its content (settings + inputs), so two runs with other
settings never share a folder, and a consumer checks the chain: an index built from
vectors of another image size, level, catalogue or backend is refused, naming the
difference.

Writes are atomic (temp file, fsync, rename, fsync of the folder) and leave files
world-readable (0644), so a server running as another user can read them.

Imports the standard library only (the bottom layer).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

MANIFEST = "manifest.json"
FILE_MODE = 0o644
DIR_MODE = 0o755

F = TypeVar("F", bound=Callable[..., Any])


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(exc: OSError) -> bool:
    """A write that failed for lack of space (or a file-size limit). pyarrow's OSErrors
    carry the reason in their message, not in errno, so both are checked."""
    return exc.errno in DISK_FULL or any(os.strerror(e) in str(exc) for e in DISK_FULL)


def disk_full_is_one_error(error: type[Exception], what: str, out_arg: int,
                           resumes: str) -> Callable[[F], F]:
    """Decorator: a disk filling up inside a build becomes one ``error`` that names the
    folder (the ``out_dir`` keyword, or positional argument ``out_arg``) and says the run
    resumes, instead of an ``OSError`` from deep in a library. Every checkpoint is written
    atomically, so the last one stays usable."""

    def decorate(build: F) -> F:
        @functools.wraps(build)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return build(*args, **kwargs)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                out = kwargs.get("out_dir", args[out_arg] if len(args) > out_arg else "out_dir")
                raise error(f"cannot write {what} in {out}: {exc.strerror or exc}. Free some "
                            f"space and call {build.__name__} again: {resumes}") from exc

        return wrapper  # type: ignore[return-value]

    return decorate


class ArtifactError(ValueError):
    """An artifact that is missing, unreadable, or made by other settings than asked."""


# -- atomic writes ------------------------------------------------------------------------


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(target: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` then rename over ``target``: never a half-written file under its name.

    Readers that opened the old file (mmaps, other processes) keep its inode. The temp name
    is unique per call (concurrent writers do not clash); the file is fsynced before the
    rename and gets mode 0644 whatever the writer's umask or temp-file API did.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(target, lambda p: p.write_bytes(data))


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"))


def read_json(path: str | os.PathLike, missing_ok: bool = False) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if missing and ``missing_ok``.

    A file that exists but is not a JSON object is an ArtifactError naming it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ArtifactError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is unreadable: {e}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} holds {type(data).__name__}, not a JSON object")
    return data


def publish_dir(final: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Build a folder in a temporary sibling, then rename it to ``final``.

    A crash leaves only a ``.tmp-*`` folder. Every file and folder built is fsynced before
    the rename, so a folder under its final name is whole after a power loss too. An
    existing ``final`` is moved aside and deleted after the swap; if another process
    published concurrently, its copy is kept.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(mode=DIR_MODE)
    try:
        build(tmp)
        _seal_tree(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:  # a concurrent writer won the race: its result is just as good
            if not final.exists():
                raise
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _seal_tree(root: Path) -> None:
    """Modes 0755/0644, and every file then folder fsynced (engines write their own files:
    a FAISS or Annoy index is not fsynced by its library)."""
    os.chmod(root, DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, DIR_MODE)
        for f in filenames:
            path = Path(dirpath) / f
            os.chmod(path, FILE_MODE)
            if not path.is_symlink():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(dirpath)


# -- versioned folders: immutable versions behind a "current" pointer ----------------------

CURRENT = "current"


def publish_version(folder: str | os.PathLike, build: Callable[[Path], None],
                    keep: int = 2) -> Path:
    """Write a new immutable version under ``folder`` and point ``folder/current`` at it.

    The pointer is a symlink swapped with one rename, so a reader that resolves it once
    sees one whole version (never new engine data with old ids). The ``keep`` newest
    versions stay (a reader still loading the previous one is not pulled from under it).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    version = publish_dir(folder / f"v-{stamp}-{uuid.uuid4().hex[:6]}", build)
    link = folder / f".{CURRENT}.{uuid.uuid4().hex}.tmp"
    os.symlink(version.name, link)
    os.replace(link, folder / CURRENT)
    fsync_dir(folder)
    versions = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("v-")
                      and not p.is_symlink())
    for old in versions[:-keep]:
        if old.name != version.name:
            shutil.rmtree(old, ignore_errors=True)
    return version


def resolve_version(folder: str | os.PathLike) -> Path:
    """The folder a versioned artifact's ``current`` points at (or ``folder`` itself)."""
    folder = Path(folder)
    link = folder / CURRENT
    return (folder / os.readlink(link)) if link.is_symlink() else folder


# -- settings, ids and manifests ----------------------------------------------------------


def canonical(obj: Any) -> str:
    """One JSON text per value: the basis of content ids."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_id(settings: Mapping[str, Any], inputs: Mapping[str, Any] | None = None,
               length: int = 12) -> str:
    """A short stable hash of an artifact's settings and input ids."""
    blob = canonical({"settings": settings, "inputs": inputs or {}}).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def settings_diff(have: Mapping[str, Any], want: Mapping[str, Any],
                  keys: list[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """{key: (have, want)} for each key of ``want`` (or ``keys``) whose values differ."""
    keys = list(want) if keys is None else keys
    return {k: (have.get(k, "<missing>"), want.get(k, "<missing>")) for k in keys
            if have.get(k, "<missing>") != want.get(k, "<missing>")}


def describe_diff(diff: Mapping[str, tuple[Any, Any]], have: str = "has",
                  want: str = "expected") -> str:
    """``"image_size: has 180, expected 224; level: ..."`` for a settings_diff."""
    return "; ".join(f"{k}: {have} {a!r}, {want} {b!r}" for k, (a, b) in diff.items())


def make_manifest(kind: str, settings: Mapping[str, Any],
                  inputs: Mapping[str, str] | None = None,
                  chain: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of an artifact: what made it, and what it was made from."""
    from helpers import __version__

    settings = json.loads(canonical(settings))  # JSON-safe, keys sorted
    return {
        "kind": kind,
        "id": content_id(settings, inputs),
        "settings": settings,
        "inputs": dict(inputs or {}),
        "chain": json.loads(canonical(chain or {})),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": f"visual-product-search {__version__}",
    }


def write_manifest(folder: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    return write_json(Path(folder) / MANIFEST, dict(manifest))


def read_manifest(folder: str | os.PathLike, missing_ok: bool = False) -> dict[str, Any] | None:
    return read_json(Path(folder) / MANIFEST, missing_ok=missing_ok)


def check_manifest(manifest: Mapping[str, Any], expect: Mapping[str, Any], where: str) -> None:
    """Refuse (ArtifactError) a manifest whose settings, inputs or chain differ from ``expect``.

    ``expect`` holds any of: setting names (checked against ``settings``), ``inputs``
    (a dict of input ids) and ``chain`` ({input kind: {setting: value}}).
    """
    problems = []
    flat = {k: v for k, v in expect.items() if k not in ("inputs", "chain")}
    d = settings_diff(manifest.get("settings", {}), flat)
    if d:
        problems.append(describe_diff(d))
    if "inputs" in expect:
        d = settings_diff(manifest.get("inputs", {}), expect["inputs"])
        if d:
            problems.append("inputs " + describe_diff(d))
    for kind, want in (expect.get("chain") or {}).items():
        d = settings_diff(manifest.get("chain", {}).get(kind, {}), want)
        if d:
            problems.append(f"{kind} " + describe_diff(d))
    if problems:
        raise ArtifactError(f"{where} was made by other settings: " + "; ".join(problems))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
