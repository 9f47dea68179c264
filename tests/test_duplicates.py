"""Duplicates. Exact duplicate pictures found by the catalogue pass (helpers.ingest.
duplicates): the groups and counts on hand-computed cases, and what a build writes on real
documents. Near duplicates from vectors (helpers.index.duplicates): the pairs against every
pair computed in numpy, the clusters of pictures and of products, saved and read back."""

from __future__ import annotations

import io
import json

import bson
import faiss
import numpy as np
import pandas as pd
import pytest

from helpers.core.ids import encode
from helpers.index.duplicates import (
    NearDuplicates,
    components,
    near_duplicate_clusters,
    near_duplicate_pairs,
)
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


# ------------------------------------------------------------------ near duplicates


def _vectors(seed: int = 0) -> np.ndarray:
    """60 random 16-d vectors with planted near copies: 3 ~ 10 ~ 20 (a chain), 40 ~ 41 (a
    scaled copy: cosine 1)."""
    v = np.random.default_rng(seed).normal(size=(60, 16)).astype(np.float32)
    v[10] = v[3] + 0.05
    v[20] = v[10] + 0.05
    v[41] = 3 * v[40]
    return v


@pytest.mark.parametrize("block_rows", [7, 60, 1000])
def test_pairs_are_every_pair_above_the_threshold(block_rows):
    v = _vectors()
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = u @ u.T
    for threshold in (0.99, 0.5):
        want = set(zip(*np.nonzero(np.triu(sims >= threshold, 1)), strict=True))
        a, b, s = near_duplicate_pairs(v, threshold, block_rows=block_rows)
        assert set(zip(a.tolist(), b.tolist(), strict=True)) == {
            (int(i), int(j)) for i, j in want}
        assert (a < b).all() and np.allclose(s, sims[a, b], atol=1e-5)
    assert {(3, 10), (10, 20), (40, 41)} <= set(zip(*near_duplicate_pairs(
        v, 0.99, block_rows=block_rows)[:2], strict=True))


def test_pairs_through_a_given_index():
    v = _vectors()
    index = faiss.IndexFlatIP(16)
    index.add(v / np.linalg.norm(v, axis=1, keepdims=True))
    a, b, _ = near_duplicate_pairs(v, 0.99, index=index, block_rows=9)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == sorted(zip(
        *near_duplicate_pairs(v, 0.99)[:2], strict=True))
    with pytest.raises(ValueError, match="holds 60 rows, the vectors 59"):
        near_duplicate_pairs(v[:59], 0.99, index=index)
    with pytest.raises(ValueError, match="threshold is a cosine"):
        near_duplicate_pairs(v, 1.5)


def test_components_hand_computed():
    # 0-4-5 a chain, 2-6 a pair, 1 and 3 alone: labels by first item, singletons -1
    labels = components(7, np.array([4, 0, 6]), np.array([5, 4, 2]))
    assert labels.tolist() == [0, -1, 1, -1, 0, 0, 1]
    assert components(3, np.array([], np.int64), np.array([], np.int64)).tolist() == [-1] * 3


def test_clusters_of_pictures_and_products(tmp_path):
    """Image level: product 7's picture 0 ~ product 8's picture 1 ~ product 9's picture 0
    (a chain), and product 5's two pictures alike (one product: no product cluster)."""
    v = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
    pids = np.array([5, 5, 7, 7, 8, 8, 9, 6])
    idx = np.array([0, 1, 0, 1, 0, 1, 0, 0])
    v[1] = v[0] + 0.01
    v[5] = v[2] + 0.01
    v[6] = v[5] + 0.01
    ids = encode(pids, idx)
    nd = near_duplicate_clusters(ids, v, 0.99, level="image")
    assert nd.counts == {"pairs": 4, "items": 5, "clusters": 2, "products": 3,
                         "product_clusters": 1}
    frame = nd.frame().set_index("item_id")
    assert frame.loc[ids[[0, 1]], "cluster"].nunique() == 1
    assert (frame.loc[ids[[0, 1]], "product_cluster"] == -1).all()
    assert nd.product_cluster_of([7, 8, 9, 5, 6, 123]).tolist() == [0, 0, 0, -1, -1, -1]
    back = NearDuplicates.load(nd.save(tmp_path / "nd", inputs={"vectors": "abc"}))
    assert back.counts == nd.counts and back.threshold == 0.99 and back.level == "image"
    pd.testing.assert_frame_equal(back.frame(), nd.frame())
    with pytest.raises(ValueError, match="7 item ids for 8 vectors"):
        near_duplicate_clusters(ids[:7], v, 0.99, level="image")


# ------------------------------------------------------------------ the labelled set


def test_labelled_set_of_the_built_in_sample():
    from PIL import Image

    from helpers.core.paths import SAMPLE_BSON
    from helpers.evaluate import dupset
    from helpers.ingest.jpeg import decode_image

    ds = dupset.labelled_set(SAMPLE_BSON, originals_per_category=1, negatives_per_category=2)
    assert len(ds) == 10 * (1 + len(dupset.EDITS) + 2)
    assert ds.kind.count("original") == 10 and ds.kind.count("negative") == 20
    truth = np.array(ds.truth)
    assert (truth[np.array(ds.kind) == "negative"] == -1).all()
    assert np.bincount(truth[truth >= 0]).tolist() == [7] * 10  # an original + 6 copies
    first = ds.pictures[0]
    for pic, kind in zip(ds.pictures[1:7], ds.kind[1:7], strict=True):
        w, h = Image.open(io.BytesIO(pic)).size
        if kind == "crop":
            assert 0.85 * 180 - 1 <= w <= 0.95 * 180 + 1 and 0.85 * 180 - 1 <= h <= 180 * 0.95 + 1
        elif kind == "rescale":
            assert w != 180 and w == h
        else:
            assert (w, h) == (180, 180)
        if kind == "mirror":
            diff = decode_image(pic).astype(int) - decode_image(first)[:, ::-1].astype(int)
            assert np.abs(diff).mean() < 3  # a JPEG of the mirrored original
    # the scoring of a perfect detector: identical hashes within each true group
    h = np.zeros((len(ds), 64), bool)
    h[truth >= 0] = np.eye(64, dtype=bool)[truth[truth >= 0]]
    h[truth < 0] = np.eye(64, dtype=bool)[20 + np.arange((truth < 0).sum())] | \
        np.eye(64, dtype=bool)[40 + np.arange((truth < 0).sum()) % 24]
    assert dupset.score_phash(h, truth, max_distance=0)["f1"] == 1.0
    with pytest.raises(ValueError, match="unknown edit 'blur'"):
        dupset.edit(Image.new("RGB", (8, 8)), "blur", np.random.default_rng(0))
