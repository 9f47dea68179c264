"""Serving artifacts and related-product queries (helpers.serve.loader, helpers.serve.related).

Input checks and recently viewed: tests/test_serve_inputs.py."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers.catalogue.protocol import UnknownProductError
from helpers.serve.inputs import RelatedError
from helpers.serve.loader import ArtifactMissing, load_artifacts
from helpers.serve.related import NoVectorError, Related, UnknownMethodError
from helpers.workspace import Workspace


@pytest.fixture(scope="module")
def art(app_artifacts):
    a = load_artifacts(app_artifacts)
    yield a
    a.close()


@pytest.fixture(scope="module")
def rel(art):
    return Related(art)


def jpeg(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


# -- loading ----------------------------------------------------------------------------------


def test_load_finds_every_built_method(art):
    avail = art.available()
    assert {"faiss", "annoy"} <= set(avail)
    assert art.default_method == "faiss"
    assert len(art.catalogue) == 150
    # Elasticsearch is listed as unavailable with a reason, not an error at start-up.
    assert all(why for why in art.unavailable.values())


def test_missing_artifacts_name_the_command(tmp_path, app_artifacts):
    with pytest.raises(ArtifactMissing, match="make demo"):
        load_artifacts(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactMissing, match="run_all.py --only 01"):
        load_artifacts(tmp_path / "empty")
    # Catalogue only: no search method at all.
    only_cat = tmp_path / "only_cat"
    shutil.copytree(app_artifacts / "catalogue", only_cat / "catalogue")
    with pytest.raises(ArtifactMissing, match="run_all.py --only 03"):
        load_artifacts(only_cat)


def test_missing_index_makes_only_that_method_unavailable(tmp_path, app_artifacts):
    root = tmp_path / "art"
    shutil.copytree(app_artifacts, root, symlinks=True, ignore=shutil.ignore_patterns("annoy-*"))
    a = load_artifacts(root)
    assert "annoy" not in a.available() and "faiss" in a.available()
    assert "run_all.py --only 04" in a.unavailable["annoy"]
    with pytest.raises(UnknownMethodError, match="only 04"):
        Related(a).related(int(a.catalogue.ids()[0]), 5, "annoy")
    a.close()


def test_missing_bson_is_one_clear_message(app_artifacts, tmp_path):
    with pytest.raises(ArtifactMissing, match="VPS_BSON"):
        load_artifacts(app_artifacts, bson_path=tmp_path / "moved.bson")


def test_vectors_of_another_catalogue_are_skipped(tmp_path, app_artifacts, sample_bson,
                                                  sample_categories):

    root = tmp_path / "art"
    shutil.copytree(app_artifacts, root, symlinks=True, ignore=shutil.ignore_patterns("catalogue"))
    # another catalogue than the vectors were made from, where the run keeps catalogues
    (root / "run.json").unlink()  # (made by hand: a notebook would be refused)
    Workspace(root).catalogue(sample_bson, sample_categories, limit=40)
    with pytest.raises(ArtifactMissing, match="no search method"):
        load_artifacts(root)


def test_serves_the_catalogue_the_vectors_were_made_from(tmp_path, app_artifacts,
                                                         sample_bson, sample_categories):
    from helpers.workspace import Workspace

    root = tmp_path / "art"
    shutil.copytree(app_artifacts, root, symlinks=True)
    (root / "run.json").unlink()  # another catalogue, made by hand: a notebook is refused
    Workspace(root).catalogue(sample_bson, sample_categories, limit=40)  # newer, no vectors
    assert len(Workspace(root).catalogues()) == 2
    a = load_artifacts(root)
    assert len(a.catalogue) == 150 and "faiss" in a.available()
    a.close()


@pytest.fixture()
def faiss_threads():
    """FAISS's OpenMP threads set to 3 (not 1, what an app sets), restored after."""
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    yield faiss
    faiss.omp_set_num_threads(before)


def test_loading_leaves_faiss_threads_alone(app_artifacts, faiss_threads):
    """A notebook that opens the artifacts keeps its threads; only an app sets one."""
    from helpers.serve.loader import configure_app_process

    a = load_artifacts(app_artifacts)
    assert "faiss" in a.available()
    assert len(Related(a).related(int(a.catalogue.ids()[0]), 5, "faiss")) == 5  # a search too
    assert faiss_threads.omp_get_max_threads() == 3
    a.close()
    configure_app_process()
    assert faiss_threads.omp_get_max_threads() == 1


# -- related ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["faiss", "annoy", "style"])
def test_related_leaves_the_product_out_and_ranks(rel, art, method):
    if method not in art.available():
        pytest.skip(f"{method} not built here")
    pid = int(art.catalogue.ids()[3])
    hits = rel.related(pid, 8, method)
    assert len(hits) == 8 and pid not in [h.product_id for h in hits]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.001 <= s <= 1.001 for s in scores)
    assert len({h.product_id for h in hits}) == 8


def test_faiss_flat_and_annoy_agree(rel, art):
    pid = int(art.catalogue.ids()[7])
    a = [h.product_id for h in rel.related(pid, 5, "faiss")]
    b = [h.product_id for h in rel.related(pid, 5, "annoy")]
    assert len(set(a) & set(b)) >= 4


def test_category_filter(rel, art):
    p = art.catalogue.product(int(art.catalogue.ids()[0]))
    hits = rel.related(p.product_id, 10, "faiss", category=p.category_id)
    assert hits
    cats = art.catalogue.category_ids([h.product_id for h in hits])
    assert (cats == p.category_id).all()
    # A category with no products: nothing, not an error.
    assert rel.related(p.product_id, 10, "faiss", category=1) == []


def test_k_larger_than_category_gives_what_there_is(rel, art):
    p = art.catalogue.product(int(art.catalogue.ids()[0]))
    n_cat = int((art.catalogue.category_ids(art.catalogue.ids()) == p.category_id).sum())
    hits = rel.related(p.product_id, 100, "faiss", category=p.category_id)
    assert len(hits) == n_cat - 1


def test_unknown_product_and_method(rel):
    with pytest.raises(UnknownProductError):
        rel.related(999_999_999, 5, "faiss")
    with pytest.raises(UnknownMethodError, match="unknown method"):
        rel.related(11, 5, "nope")


def _undecodable(jpeg_bytes: bytes) -> bytes:
    """The JPEG with Huffman tables whose code counts sum far over 256: its start and end
    markers and its header (size) are intact, so the catalogue's "magic" check passes it,
    but the decoder refuses it."""
    i = jpeg_bytes.index(b"\xff\xc4")  # DHT: marker, length (2), class/id, 16 counts
    return jpeg_bytes[: i + 5] + b"\xff" * 16 + jpeg_bytes[i + 21:]


def test_product_without_vector(tmp_path):
    """A real product whose pictures all fail to decode: in the catalogue (they pass the
    marker check), embedded for real with every picture failed, so the store has no vector."""
    import bson

    from helpers.core.paths import SAMPLE_BSON, SAMPLE_CATEGORIES
    from helpers.serve.loader import build_serving_artifacts

    docs = []
    with open(SAMPLE_BSON, "rb") as f:
        for _ in range(40):
            head = f.read(4)
            docs.append(bson.decode(head + f.read(int.from_bytes(head, "little") - 4)))
    broken = docs[5]
    for img in broken["imgs"]:
        img["picture"] = _undecodable(img["picture"])
    path = tmp_path / "broken.bson"
    path.write_bytes(b"".join(bson.encode(d) for d in docs))
    root = build_serving_artifacts(tmp_path / "art", path, SAMPLE_CATEGORIES, image_size=180)
    a = load_artifacts(root)
    try:
        pid = int(broken["_id"])
        p = a.catalogue.product(pid)
        assert p.usable_images == list(range(len(broken["imgs"])))  # "magic" let them in
        store = a.methods["faiss"].store
        assert store.meta["failed_images"] == len(broken["imgs"])
        assert pid not in set(np.asarray(store.product_ids).tolist())
        assert len(store) == len(docs) - 1
        rel = Related(a)
        with pytest.raises(NoVectorError, match=f"product {pid} has no vector"):
            rel.product_vector(pid, rel.method("faiss"))
        with pytest.raises(NoVectorError):
            rel.related(pid, 5, "annoy")
        other = int(docs[6]["_id"])  # its neighbours still answer, without it
        assert pid not in [h.product_id for h in rel.related(other, 39, "faiss")]
    finally:
        a.close()


def test_recently_viewed_mean_and_merge(rel, art):
    seen = [int(x) for x in art.catalogue.ids()[:3]]
    for how in ("mean", "merge"):
        hits = rel.related_to_recent(seen, 6, "faiss", how=how)
        assert len(hits) == 6
        assert not {h.product_id for h in hits} & set(seen)
    # One viewed product: the mean is that product's vector.
    one = rel.related_to_recent(seen[:1], 5, "faiss")
    assert [h.product_id for h in one] == [h.product_id for h in rel.related(seen[0], 5)]
    # Unknown (deleted) ids are passed over; nothing known -> nothing.
    assert rel.related_to_recent([999_999_999], 5, "faiss") == []
    with pytest.raises(RelatedError):
        rel.related_to_recent(seen, 5, "faiss", how="median")


def test_recommend_strict_and_lenient(rel, art):
    seen = [int(x) for x in art.catalogue.ids()[:3]]
    for strategy in ("mean", "best", "round_robin"):
        hits = rel.recommend(seen[:2], seen[2:], 6, "faiss", strategy, mmr=0.2)
        assert len(hits) == 6 and not {h.product_id for h in hits} & set(seen)
    # ids from a session: gone or conflicting ones are passed over
    lenient = rel.recommend([*seen[:2], 999_999_999], [seen[1], 999_999_998], 5, "faiss")
    assert [h.product_id for h in lenient] == [
        h.product_id for h in rel.recommend(seen[:2], (), 5, "faiss")]
    assert rel.recommend([999_999_999], (), 5, "faiss") == []
    # ids a client sent: named errors
    with pytest.raises(UnknownProductError, match="positive product 999999999"):
        rel.recommend([999_999_999], (), 5, "faiss", strict=True)
    with pytest.raises(RelatedError, match="both positive and negative"):
        rel.recommend(seen[:2], seen[1:2], 5, "faiss", strict=True)
    with pytest.raises(RelatedError, match="strategy must be one of"):
        rel.recommend(seen, (), 5, "faiss", "median")
    with pytest.raises(RelatedError, match="at most 20"):
        rel.recommend(list(range(15)), list(range(100, 110)), 5, "faiss")


def test_search_by_upload_finds_the_product(rel, art):
    p = art.catalogue.product(int(art.catalogue.ids()[10]))
    data = art.images.pictures(p)[p.usable_images[0]]
    hits = rel.search_upload(data, 5, "faiss")
    assert hits[0].product_id == p.product_id and hits[0].score > 0.9
    # A PNG of it and a large photo (decoded in draft mode) find it too.
    img = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    img.resize((1800, 1800)).save(buf, "PNG")
    assert rel.search_upload(buf.getvalue(), 5, "annoy")[0].product_id == p.product_id


def test_upload_with_style_is_refused(rel, art):
    if "style" not in art.available():
        pytest.skip("no style vectors")
    with pytest.raises(UnknownMethodError, match="TensorFlow"):
        rel.search_upload(jpeg(), 5, "style")


def test_sample_bson_found_after_the_app_moved(tmp_path, app_artifacts):
    """A PaaS builds in a temp folder and then moves the app: the recorded BSON path is
    gone, the built-in sample is found again in this checkout."""
    import json

    root = tmp_path / "art"
    shutil.copytree(app_artifacts, root, symlinks=True)
    meta_path = Workspace(root).catalogues()[0][0] / "catalogue.json"
    meta = json.loads(meta_path.read_text())
    meta["source"]["path"] = "/tmp/build_1234/data/sample/fashion_sample.bson"
    meta_path.write_text(json.dumps(meta))
    a = load_artifacts(root)
    assert a.bson_path.is_file() and a.bson_path.name == "fashion_sample.bson"
    a.close()


def test_engine_without_its_package_is_unavailable(app_artifacts, monkeypatch):
    """A slim deploy without an engine's client library serves the other methods."""
    from helpers.index import METHODS

    monkeypatch.setitem(METHODS._targets, "elasticsearch", "no_such_module_xyz:Index")
    a = load_artifacts(app_artifacts)
    assert "faiss" in a.available()
    assert "no_such_module_xyz" in a.unavailable["elasticsearch"]
    a.close()


def test_image_level_index(tmp_path, app_artifacts, sample_bson):
    """An index of one vector per picture: hits are products (best picture), with the
    picture that matched; a product's own pictures are all left out."""
    from helpers.catalogue.protocol import ParquetCatalogue
    from helpers.index import build_index
    from helpers.models import load_extractor
    from helpers.workspace import Workspace

    root = tmp_path / "art"
    shutil.copytree(app_artifacts / "catalogue", root / "catalogue")
    ws = Workspace(root)
    catalogue = ParquetCatalogue.open(Workspace(root).catalogues()[0][0])
    store = ws.vectors(catalogue, ws.images(sample_bson), load_extractor("mobilenet_v2", "onnx"),
                       image_size=180, level="image", progress=False)
    assert len(store) > len(catalogue)  # several pictures a product
    build_index("faiss", store.vectors, store.item_ids,
                catalogue.category_ids(store.product_ids), factory="Flat",
                source=store.made_by).save(ws.index_dir("faiss-image"))
    a = load_artifacts(root)
    assert a.available() == ["faiss"] and a.methods["faiss"].level == "image"
    rel = Related(a)
    multi = next(p for p in a.catalogue.page(0, 150) if len(p.usable_images) > 1)
    hits = rel.related(multi.product_id, 8)
    ids = [h.product_id for h in hits]
    assert len(ids) == 8 == len(set(ids)) and multi.product_id not in ids
    assert all(h.image_index is not None for h in hits)
    # A picture of the product finds the product, and says which picture matched.
    i = multi.usable_images[1]
    up = rel.search_upload(a.images.pictures(multi)[i], 3)
    assert (up[0].product_id, up[0].image_index) == (multi.product_id, i)
    a.close()


def test_related_shows_one_product_per_near_duplicate_cluster(app_artifacts, tmp_path):
    """Clusters built at a low threshold (many lookalikes in the sample): collapsed lists
    hold one product a cluster, never one of the query's own; collapse=False shows all."""
    work = tmp_path / "artifacts"
    shutil.copytree(app_artifacts, work, symlinks=True)
    art = load_artifacts(work)
    try:
        rel = Related(art)
        m = rel.method("faiss")
        assert rel.clusters(m) is None  # none built: nothing to collapse
        Workspace(work).near_duplicates(m.store, threshold=0.9)
        rel = Related(art)
        nd = rel.clusters(m)
        assert nd is not None and nd.counts["product_clusters"] > 0
        checked = 0
        for pid in np.unique(nd.product_ids)[:20].tolist():
            full = rel.related(pid, k=10, method="faiss", collapse=False)
            short = rel.related(pid, k=10, method="faiss")
            ids = [h.product_id for h in short]
            cl = nd.product_cluster_of(ids)
            assert len(set(cl[cl >= 0].tolist())) == int((cl >= 0).sum())  # one a cluster
            assert nd.product_cluster_of([pid])[0] not in set(cl.tolist())
            # the collapsed list is the full one without the copies, in the same order
            kept = [h.product_id for h in full if h.product_id in set(ids)]
            assert kept == ids[:len(kept)]
            checked += len(full) > len(kept)
        assert checked > 0  # some list really lost a near duplicate
    finally:
        art.close()
