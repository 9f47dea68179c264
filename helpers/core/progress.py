"""The progress bar of every long step (scan, embedding, bulk load): tqdm, as text or widget.

In JupyterLab a widget bar (``tqdm.auto``). In a notebook run headless (``run_all.py``, which
sets VPS_TEXT_PROGRESS=1 for its kernels) a text bar: it goes to the kernel's stderr, so
run_all can say where a long cell is, and the saved notebook keeps the bar's last state
instead of a widget that a static page shows stuck at 0 %.
"""

from __future__ import annotations

import os

if os.environ.get("VPS_TEXT_PROGRESS") == "1":
    from tqdm.std import tqdm
else:
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
