"""Where things are: the built-in sample, the shared Kaggle sample, run folders.

Nothing here needs a repository checkout: the built-in sample is package data (read
through importlib.resources), runs go to ``$VPS_RUNS_DIR``, else to ``runs/`` of the
checkout the process started in (wherever in it: `make lab` starts kernels in
``notebooks/``), else below the current folder, and the real Kaggle sample is found through
``$CDISCOUNT_DIR`` or beside the current folder (``../shared/data/cdiscount``, the layout
of a checkout).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

# Package data: present in an editable checkout and in an installed wheel alike.
SAMPLE_DIR = Path(str(resources.files("helpers") / "sample_data"))
SAMPLE_BSON = SAMPLE_DIR / "fashion_sample.bson"
SAMPLE_CATEGORIES = SAMPLE_DIR / "fashion_sample_categories.csv"


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The checkout around ``start`` (default: the current folder): the nearest folder at
    or above it that holds run_all.py and pyproject.toml; None outside a checkout."""
    here = Path(start or Path.cwd()).resolve()
    for base in (here, *here.parents):
        if (base / "run_all.py").is_file() and (base / "pyproject.toml").is_file():
            return base
    return None


def _runs_dir() -> Path:
    if os.environ.get("VPS_RUNS_DIR"):
        return Path(os.environ["VPS_RUNS_DIR"]).expanduser().resolve()
    return (project_root() or Path.cwd()) / "runs"


RUNS_DIR = _runs_dir()


def resolve_work_dir(work_dir: str | os.PathLike | None) -> Path:
    """A run's artifacts folder: None is the sample run's (``RUNS_DIR/sample/artifacts``);
    a relative path is taken from the checkout's root, not from the folder the kernel
    started in (else from the current folder)."""
    if work_dir is None:
        return RUNS_DIR / "sample" / "artifacts"
    path = Path(work_dir).expanduser()
    return path if path.is_absolute() else (project_root() or Path.cwd()) / path


def _cdiscount_dir() -> Path:
    """The real Kaggle sample, kept beside the project (never copied into it)."""
    if os.environ.get("CDISCOUNT_DIR"):
        return Path(os.environ["CDISCOUNT_DIR"]).expanduser()
    here = Path.cwd().resolve()
    for base in (here, *here.parents):
        candidate = base.parent / "shared" / "data" / "cdiscount"
        if candidate.is_dir():
            return candidate
    return here.parent / "shared" / "data" / "cdiscount"  # named in "not found" messages


CDISCOUNT_DIR = _cdiscount_dir()


def resolve_data(
    bson_path: str | os.PathLike | None, categories_path: str | os.PathLike | None
) -> tuple[Path, Path | None]:
    """The BSON file and category CSV to use: the user's, or the built-in sample."""
    if bson_path is None:
        return SAMPLE_BSON, SAMPLE_CATEGORIES if categories_path is None else Path(categories_path)
    bson_path = Path(bson_path).expanduser()
    if not bson_path.is_file():
        raise FileNotFoundError(f"BSON file not found: {bson_path}")
    if categories_path is None:
        guess = bson_path.with_name("category_names.csv")
        return bson_path, guess if guess.is_file() else None
    return bson_path, Path(categories_path).expanduser()
