"""Exact duplicate pictures found by the catalogue pass (helpers.ingest.duplicates): the
groups and counts on hand-computed cases, and what a build writes on real documents."""

from __future__ import annotations

import json

import bson
import pandas as pd
import pytest

from helpers.ingest import bson_store
from helpers.ingest import scan as cat
from helpers.ingest.duplicates import DuplicateCounts, exact_duplicates

X = 10**9  # ids of the crafted products: no real or sample id is that large


def test_exact_duplicates_hand_computed():
    # hash 5: products 1 and 2 (category 10 both): a group, no conflict.
    # hash 6: products 1, 2 and 3 (categories 10, 10, 20): a conflict of 3 pictures.
    # hash 7: twice in product 4 only: no group, one repeat inside the product.
    # hash 8: products 4 (no category) and 5 (30): one known category, no conflict.
    # 0 marks a picture left out; product 6's null list: a row without hashes.
    df, counts = exact_duplicates(
        [1, 2, 3, 4, 5, 6], pd.array([10, 10, 20, None, 30, 10], dtype="Int64"),
        [[5, 6], [6, 0, 5], [6], [7, 7, 8], [8], None])
    assert counts == DuplicateCounts(groups=3, pictures=7, products=5, conflict_groups=1,
                                     conflict_pictures=3, conflict_products=3,
                                     repeated_in_product=1)
    rows = list(df[["group", "hash", "product_id", "image_index"]].itertuples(index=False))
    assert [tuple(map(int, r)) for r in rows] == [
        (0, 5, 1, 0), (0, 5, 2, 2), (1, 6, 1, 1), (1, 6, 2, 0), (1, 6, 3, 0),
        (2, 8, 4, 2), (2, 8, 5, 0)]
    assert df["conflict"].tolist() == [False, False, True, True, True, False, False]
    assert df["category_id"].isna().sum() == 1  # product 4's, kept as null


def test_no_duplicates_and_empty_catalogue():
    df, counts = exact_duplicates([1, 2], [1, 1], [[1, 2], [3]])
    assert counts == DuplicateCounts() and df.empty
    df, counts = exact_duplicates([], pd.array([], dtype="Int64"), [])
    assert counts == DuplicateCounts() and list(df.columns)[:2] == ["group", "hash"]


def test_hash_lists_must_match_the_products():
    with pytest.raises(ValueError, match="2 hash lists for 3 products"):
        exact_duplicates([1, 2, 3], [1, 1, 1], [[1], [2]])


def test_the_pass_finds_copies_across_products(real_bson, real_categories, tmp_path):
    """Real documents, a picture copied into a new product of the same category and into one
    of another category: one group of three, a conflict; written beside the catalogue."""
    docs = [r.doc for r in bson_store.iter_records(real_bson)][:6]
    pic = docs[0]["imgs"][0]["picture"]
    other = next(d["category_id"] for d in docs if d["category_id"] != docs[0]["category_id"])
    same = {"_id": X, "category_id": docs[0]["category_id"], "imgs": [{"picture": pic}]}
    moved = {"_id": X + 1, "category_id": other,
             "imgs": [{"picture": b"\xff\xd8 not a jpeg"}, {"picture": pic}]}
    path = tmp_path / "copies.bson"
    path.write_bytes(b"".join(bson.encode(d) for d in [*docs, same, moved]))
    summary = cat.build_catalogue(path, tmp_path / "cat", real_categories, progress=False)
    assert summary.duplicates == {"groups": 1, "pictures": 3, "products": 3,
                                  "conflict_groups": 1, "conflict_pictures": 3,
                                  "conflict_products": 3, "repeated_in_product": 0}
    assert cat.load_meta(tmp_path / "cat")["summary"]["duplicates"] == summary.duplicates
    assert "exact duplicates: 3 pictures in 1 groups" in str(summary)
    groups = cat.load_duplicates(tmp_path / "cat")
    assert groups["product_id"].tolist() == sorted([docs[0]["_id"], X, X + 1])
    # the picture after the bad one keeps its index in the document
    assert groups.set_index("product_id").loc[X + 1, "image_index"] == 1
    assert groups["conflict"].all()
    assert "picture_hashes" not in cat.load_catalogue(tmp_path / "cat").columns


def test_samples_have_no_exact_duplicates_across_products(real_bson, real_categories,
                                                          tmp_path):
    """Both samples, counted byte for byte here: no picture in two products."""
    seen: dict[bytes, set[int]] = {}
    for r in bson_store.iter_records(real_bson):
        for img in r.doc["imgs"]:
            seen.setdefault(img["picture"], set()).add(r.doc["_id"])
    shared = sum(len(p) > 1 for p in seen.values())
    summary = cat.build_catalogue(real_bson, tmp_path, real_categories, progress=False)
    assert summary.duplicates["groups"] == shared == 0
    pictures = sum(len(r.doc["imgs"]) for r in bson_store.iter_records(real_bson))
    assert summary.duplicates["repeated_in_product"] == pictures - len(seen)


def test_a_catalogue_without_duplicates_is_rebuilt(real_bson, real_categories, tmp_path):
    """A catalogue finished before duplicates were counted is scanned again, not reused."""
    cat.build_catalogue(real_bson, tmp_path, real_categories, progress=False)
    meta = cat.load_meta(tmp_path)
    del meta["summary"]["duplicates"]
    (tmp_path / cat.META).write_text(json.dumps(meta))
    (tmp_path / cat.DUPLICATES).unlink()
    with pytest.raises(cat.CatalogueError, match="Rebuild it"):
        cat.load_duplicates(tmp_path)
    summary = cat.build_catalogue(real_bson, tmp_path, real_categories, progress=False)
    assert summary.duplicates is not None and (tmp_path / cat.DUPLICATES).exists()
    assert cat.load_meta(tmp_path)["summary"]["duplicates"] == summary.duplicates
