"""The one Hit (helpers.index.hits): SearchResult rows as hits, shared by gallery and serve."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.core.ids import ItemIdError
from helpers.index import SearchResult
from helpers.index.hits import Hit, as_hit, to_hits


def test_one_hit_class():
    import helpers.gallery as gallery
    import helpers.serve.related as related

    assert gallery.Hit is Hit and gallery.to_hits is to_hits and gallery.as_hit is as_hit
    assert related.Hit is Hit


def test_product_level_rows_drop_padding():
    res = SearchResult(np.array([[7, 3, -1], [5, -1, -1]], np.int64),
                       np.array([[0.9, 0.5, -np.inf], [0.4, -np.inf, -np.inf]], np.float32))
    assert to_hits(res) == [Hit(7, pytest.approx(0.9), None), Hit(3, 0.5, None)]
    assert to_hits(res, row=1) == [Hit(5, pytest.approx(0.4))]
    assert all(type(h.product_id) is int and type(h.score) is float for h in to_hits(res))


def test_image_level_ids_are_decoded():
    res = SearchResult(np.array([[1234502, 99900, -1]], np.int64),
                       np.array([[0.75, 0.5, -np.inf]], np.float32))
    assert to_hits(res, level="image") == [Hit(12345, 0.75, 2), Hit(999, 0.5, 0)]
    assert as_hit(1234502, "image", 0.75) == Hit(12345, 0.75, 2)
    assert as_hit(12345) == Hit(12345)
    with pytest.raises(ItemIdError):
        to_hits(res, level="pictures")


def test_to_dict_rounds_the_score():
    assert Hit(1, 0.123456789, 2).to_dict() == {"product_id": 1, "score": 0.123457,
                                                "image_index": 2}
    assert Hit(1).to_dict() == {"product_id": 1, "score": None, "image_index": None}
    with pytest.raises(AttributeError):
        Hit(1, 0.5).score = 0.6  # frozen
