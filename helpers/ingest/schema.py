"""What a catalogue file is made of: its format version, its content fingerprint (which
products, from where) and the usable pictures of each row (``n_images`` counts every
picture of the document, ``bad_images`` lists the indexes left out).

The scan (helpers.ingest.scan) writes them into the catalogue's manifest; the Catalogue
readers (helpers.catalogue) and the vector stores compare them. Imports numpy and pandas only.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

# 2: n_images counts every picture of the document (1 counted the good ones only, while
# bad_images held document indexes: a good picture after a bad one was lost).
FORMAT_VERSION = 2


def catalogue_fingerprint(catalogue: pd.DataFrame) -> str:
    """Short hash of the catalogue's product ids and offsets: which products, from where."""
    h = hashlib.sha256(catalogue["product_id"].to_numpy(np.int64).tobytes())
    h.update(catalogue["offset"].to_numpy(np.int64).tobytes())
    return h.hexdigest()[:16]


def usable_counts(catalogue: pd.DataFrame) -> np.ndarray:
    """Usable pictures of each catalogue row: its pictures less the bad ones."""
    bad = catalogue["bad_images"].map(lambda b: 0 if b is None else len(b))
    return catalogue["n_images"].to_numpy(np.int64) - bad.to_numpy(np.int64)
