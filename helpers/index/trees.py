"""One random-projection tree, the way Annoy builds each tree of its forest, in numpy: to
look at what the trees are, not to search with (`annoy_index` does that, in C++).

    leaves = rp_tree(points, leaf_size=20)   # a list of row arrays, one per leaf

Annoy splits a node by the hyperplane equidistant from two random points of the node (for
the angular metric, of two random unit vectors), then splits each side again until a node
holds at most `leaf_size` points. Near points tend to share a leaf; a query walks down to
its leaf (and, with `search_k`, to neighbouring branches), and more trees give more chances
that a true neighbour shares a leaf with it. Imports numpy only.
"""

from __future__ import annotations

import numpy as np


def rp_tree(points: np.ndarray, leaf_size: int = 20, seed: int = 0) -> list[np.ndarray]:
    """The leaves of one random-projection tree over ``points`` [n, d]: row arrays."""
    if leaf_size < 1:
        raise ValueError(f"leaf_size must be >= 1, got {leaf_size}")
    x = np.asarray(points, np.float64)
    rng = np.random.default_rng(seed)
    leaves, todo = [], [np.arange(len(x))]
    while todo:
        rows = todo.pop()
        if len(rows) <= leaf_size:
            leaves.append(rows)
            continue
        a, b = x[rng.choice(rows, 2, replace=False)]
        normal = a - b
        side = (x[rows] - (a + b) / 2) @ normal > 0  # which side of the middle hyperplane
        if side.all() or not side.any():  # two equal points: split at random instead
            side = rng.random(len(rows)) < 0.5
        todo += [rows[side], rows[~side]]
    return leaves
