"""The full-run rehearsal, small: a simulated dump through the README's full-data commands
(01 on Dask, 03 on Dask with the real model and the compressed index), then the app.

It proves that the stages connect: the Dask shards are the vectors 03 indexes (no second
embedding), the index 03 built is the one the app serves, and the app answers under load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers.core.paths import CDISCOUNT_DIR

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_a_small_rehearsal_runs_every_stage(tmp_path, cdiscount_categories):
    import rehearsal

    rows = rehearsal.main(["--pictures", "300", "--out", str(tmp_path), "--compressed-above",
                           "100", "--serve-seconds", "3", "--json", str(tmp_path / "r.json")])
    stages = json.loads((tmp_path / "r.json").read_text())["stages"]
    assert set(stages) == {"dump", "01", "03", "serve"}
    assert stages["serve"]["errors"] == 0 and stages["serve"]["requests"] > 0
    assert any("errors under load" in r["name"] and r["met"] for r in rows)

    art = tmp_path / "runs" / "dump" / "artifacts"
    stores = [p for p in (art / "vectors").iterdir() if p.is_dir() and ".stale-" not in p.name]
    assert len(stores) == 1, stores  # one embedding, by Dask: 03 did not embed again
    assert (stores[0] / "shards.json").exists() or list(stores[0].glob("shards/part-*"))
    # 03 chose the compressed index (above compressed_above) and said so
    nb = json.loads((tmp_path / "runs" / "dump" / "03_faiss.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    assert "the compressed index (faiss_compressed" in text
    from helpers.serve.loader import load_artifacts

    a = load_artifacts(art)
    try:
        served = a.methods["faiss"].index
        assert type(served).__name__ == "CompressedIndex" or \
            getattr(served, "method", "") == "faiss_compressed"
    finally:
        a.close()
    assert CDISCOUNT_DIR.exists()
