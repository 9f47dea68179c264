"""Replay the inputs that once broke the ingest path (tests/data/fuzz_regressions/)
through the fuzz target of bench/fuzz_ingest.py, and the fuzz seeds too: the target's
invariants hold on each, without atheris installed."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS = sorted((ROOT / "tests" / "data" / "fuzz_regressions").glob("*.bin*"))


def _load_target():
    spec = importlib.util.spec_from_file_location("fuzz_ingest", ROOT / "bench" / "fuzz_ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_target()


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_regression_input(path):
    fuzz.one_input(_read(path))


def test_regressions_are_there():
    assert len(REGRESSIONS) >= 3
    targets = {fuzz.TARGETS[_read(p)[0] % len(fuzz.TARGETS)] for p in REGRESSIONS}
    assert targets == set(fuzz.TARGETS)


def test_seeds_pass_the_target(tmp_path):
    """The seeds of a fuzz run, and a few cut or doubled, hold the invariants."""
    n = fuzz.seeds(tmp_path)
    assert n > 20
    for path in sorted(tmp_path.iterdir()):
        data = path.read_bytes()
        for variant in (data, data[: len(data) // 2], data + data[1:]):
            fuzz.one_input(variant)
