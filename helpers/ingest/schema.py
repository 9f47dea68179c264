"""What a catalogue file is made of: its content fingerprint (which products, from where).

The scan (helpers.ingest.scan) writes it into the catalogue's manifest; the Catalogue
readers (helpers.catalogue) and the vector stores compare it. Imports numpy and pandas only.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def catalogue_fingerprint(catalogue: pd.DataFrame) -> str:
    """Short hash of the catalogue's product ids and offsets: which products, from where."""
    h = hashlib.sha256(catalogue["product_id"].to_numpy(np.int64).tobytes())
    h.update(catalogue["offset"].to_numpy(np.int64).tobytes())
    return h.hexdigest()[:16]
