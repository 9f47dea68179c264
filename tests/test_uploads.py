"""Search by photo with photos as phones make them (issue #22): on their side with an EXIF
orientation, MPO (a JPEG with its preview), transparent PNGs, crops, rescales and
recompressions of catalogue pictures, each of which must find its product; the decode's
memory bound; and the upload embedded by the model that built the index (EfficientNet-Lite2
included)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.ingest.jpeg import decode_image
from helpers.serve.inputs import check_upload, decode_upload
from helpers.serve.loader import build_serving_artifacts, load_artifacts
from helpers.serve.related import Related, UnknownMethodError

REPO = Path(__file__).resolve().parents[1]
ORIENTATION = 0x0112  # the EXIF tag
TOP = 5

# How a camera stores the upright picture for each EXIF orientation (its inverse is what a
# viewer applies): written out here, not taken from Pillow's exif_transpose table.
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # stored turned a quarter anticlockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


# -- photos made from a catalogue picture -----------------------------------------------------


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def _as_phone(img: Image.Image, orientation: int = 6) -> bytes:
    """What a phone writes: the pixels as the sensor held them, the EXIF orientation that
    turns them upright, and a small preview as a second MPF frame (Pillow says MPO)."""
    stored = img.transpose(STORED[orientation]) if orientation in STORED else img
    return _save(stored, "MPO", save_all=True, append_images=[stored.resize((160, 120))],
                 quality=90, exif=_exif(orientation))


def exif_rotated(data: bytes) -> bytes:
    """A plain JPEG, 720 px, stored on its side (orientation 6)."""
    up = _open(data).resize((720, 720), Image.BICUBIC)
    return _save(up.transpose(STORED[6]), "JPEG", quality=90, exif=_exif(6))


def mpo(data: bytes) -> bytes:
    """A 960 px MPO, upright (orientation 1)."""
    return _as_phone(_open(data).resize((960, 960), Image.BICUBIC), orientation=1)


def png_alpha(data: bytes) -> bytes:
    """The photo on a larger, non-square, transparent canvas (RGBA PNG)."""
    canvas = Image.new("RGBA", (260, 210), (0, 0, 0, 0))
    canvas.paste(_open(data), (50, 15))
    return _save(canvas, "PNG")


def crop(data: bytes) -> bytes:
    """An off-centre crop (85 %), photographed (MPO, orientation 8)."""
    return _as_phone(_open(data).crop((20, 8, 173, 161)).resize((900, 900)), orientation=8)


def rescale(data: bytes) -> bytes:
    """Blown up to 3000 px (draft decodes it at 1/8), photographed (orientation 3)."""
    return _as_phone(_open(data).resize((3000, 3000), Image.BICUBIC), orientation=3)


def recompress(data: bytes) -> bytes:
    """Re-encoded twice at low quality, then photographed (orientation 6)."""
    worn = _open(_save(_open(_save(_open(data), "JPEG", quality=25)), "JPEG", quality=15))
    return _as_phone(worn.resize((640, 640)), orientation=6)


VARIANTS: dict[str, Callable[[bytes], bytes]] = {
    f.__name__: f for f in (exif_rotated, mpo, png_alpha, crop, rescale, recompress)
}


def picks(art, n: int = 6) -> list:
    """n products spread over the catalogue, each with the picture to photograph."""
    ids = [int(x) for x in art.catalogue.ids()]
    out = []
    for pid in ids[:: max(1, len(ids) // n)][:n]:
        p = art.catalogue.product(pid)
        out.append((pid, art.images.pictures(p)[p.usable_images[0]]))
    return out


# -- artifacts: the built-in sample (conftest) and the real Kaggle sample --------------------


@pytest.fixture(scope="module", params=["builtin", "cdiscount"])
def served(request, tmp_path_factory):
    if request.param == "builtin":
        root = request.getfixturevalue("app_artifacts")
    else:
        bson = request.getfixturevalue("cdiscount_bson")
        cats = request.getfixturevalue("cdiscount_categories")
        root = build_serving_artifacts(tmp_path_factory.mktemp("real_art"), bson, cats,
                                       image_size=180)
    art = load_artifacts(root)
    yield root, art, Related(art)
    art.close()


@pytest.mark.parametrize("variant", VARIANTS)
def test_photo_finds_its_product(served, variant):
    """Each photo, through Related.search_upload, finds its product in the top 5."""
    _, art, rel = served
    for pid, picture in picks(art):
        photo = VARIANTS[variant](picture)
        assert photo != picture
        hits = [h.product_id for h in rel.search_upload(photo, TOP, "faiss")]
        assert pid in hits, (variant, pid, hits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_photo_finds_its_product_over_http(app_artifacts, variant):
    """The same through the Flask app's POST /api/search (built-in sample)."""
    pytest.importorskip("flask")
    from apps.flask_app import create_app

    app = create_app(app_artifacts)
    art = app.extensions["vps"]["artifacts"]
    client = app.test_client()
    for pid, picture in picks(art, 3):
        r = client.post(f"/api/search?k={TOP}&method=annoy",
                        data={"image": (io.BytesIO(VARIANTS[variant](picture)), "photo")},
                        content_type="multipart/form-data")
        assert r.status_code == 200, r.get_data(as_text=True)
        assert pid in [h["product_id"] for h in r.get_json()["results"]], (variant, pid)
    art.close()


# -- the decode, one step at a time ---------------------------------------------------------


def _asymmetric(w: int = 96, h: int = 64) -> Image.Image:
    """A picture that every flip and turn changes (gradient and a corner block)."""
    y, x = np.mgrid[0:h, 0:w]
    px = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], axis=-1).astype(np.uint8)
    px[:16, :24] = (255, 0, 0)
    return Image.fromarray(px)


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_turns_the_photo_upright(orientation):
    up = _asymmetric()
    upright = decode_upload(_save(up, "PNG"), 48)
    stored = up.transpose(STORED[orientation])
    png = _save(stored, "PNG", exif=_exif(orientation))  # lossless: exactly upright
    np.testing.assert_array_equal(decode_upload(png, 48), upright)
    np.testing.assert_array_equal(decode_image(png), np.asarray(up))  # the catalogue path
    jpeg = decode_upload(_save(stored, "JPEG", quality=95, exif=_exif(orientation)), 48)
    assert np.abs(jpeg.astype(int) - upright).mean() < 4


def test_mpo_is_accepted():
    data = _as_phone(_asymmetric(), orientation=1)
    assert check_upload(data).format == "MPO"
    plain = decode_upload(_save(_asymmetric(), "JPEG", quality=90), 48)
    assert np.abs(decode_upload(data, 48).astype(int) - plain).mean() < 2


def test_transparency_is_shown_on_white():
    """Transparent pixels are white whatever colour they hide (here black); partly
    transparent ones blend with white; a big RGBA PNG, flattened and reduced strip by
    strip, is the picture flattened whole and resized, to a grey level or two."""
    photo = _asymmetric()
    rgba = Image.new("RGBA", (150, 90), (0, 0, 0, 0))
    rgba.paste(photo, (20, 10))
    white = Image.new("RGB", (150, 90), "white")
    white.paste(photo, (20, 10))
    np.testing.assert_array_equal(decode_upload(_save(rgba, "PNG"), 64),
                                  decode_upload(_save(white, "PNG"), 64))
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    assert abs(int(decode_image(_save(half, "PNG"))[0, 0, 0]) - 127) <= 1
    big_rgba, big_white = rgba.resize((2400, 1440)), white.resize((2400, 1440))
    got = decode_upload(_save(big_rgba, "PNG", compress_level=1), 224)
    want = np.asarray(big_white.resize((224, 224), Image.BILINEAR))
    assert np.abs(got.astype(int) - want).mean() < 2


MEASURE = """
import resource, sys
from helpers.serve.inputs import decode_upload
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decode_upload(data, 224)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _peak_mb(path: Path) -> float:
    """Peak resident memory (MB) that decoding the upload at ``path`` adds, measured in a
    process of its own (Pillow allocates outside Python's allocator: tracemalloc is blind)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=120)
    return float(out.stdout.split()[-1])


def test_upload_decode_memory_is_bounded(tmp_path):
    """The bound the docstring and README state, for one request:

    * a 24 Mpixel phone photo (MPO, EXIF-rotated) decodes at 1/8 scale: ~1.1 MB of
      pixels, under 16 MB with everything else;
    * a 12 Mpixel RGBA PNG cannot be drafted: its decode (48 MB) plus at most 15 % more,
      where converting it whole to RGB would add another 36 MB.
    """
    pytest.importorskip("resource")
    gradient = Image.linear_gradient("L").resize((6000, 4000))
    phone = tmp_path / "phone.jpg"
    phone.write_bytes(_as_phone(Image.merge("RGB", [gradient] * 3), orientation=6))
    png = tmp_path / "big.png"
    rgba = Image.merge("RGBA", [gradient.resize((4000, 3000))] * 4)
    png.write_bytes(_save(rgba, "PNG", compress_level=1))
    assert _peak_mb(phone) < 16
    decoded_mb = 4000 * 3000 * 4 / 2**20
    assert _peak_mb(png) < 1.15 * decoded_mb


# -- the index's own model --------------------------------------------------------------------


def test_extractor_args_reads_the_manifest():
    """One mapping from what a store records to load_extractor's arguments, as an app
    (which never imports TensorFlow) loads them: stores of today and of older versions."""
    from helpers.models import extractor_args

    old_mnv2, old_lite2 = "mobilenet_v2_100_imagenet_torchvision", "efficientnet_lite2_imagenet"

    def serving(meta):
        return extractor_args(meta, serving=True)

    onnx = {"model": "mobilenet_v2", "runtime": "onnx", "precision": "fp32"}
    assert serving({"model": old_mnv2, "backend": "onnx", "precision": "fp32"}) == onnx
    assert serving({"model": "mobilenet_v2", "runtime": "onnx", "precision": "fp32"}) == onnx
    assert serving({"model": old_mnv2, "backend": "tf", "precision": "fp32"}) == onnx  # same
    assert extractor_args({"model": old_mnv2, "backend": "tf"})["runtime"] == "tf"  # weights
    assert serving({"model": "mobilenet_v2", "runtime": "openvino", "precision": "bf16"}) == \
        {**onnx, "runtime": "openvino", "precision": "bf16"}
    assert serving({"model": "mobilenet_v2", "runtime": "onnx", "precision": "int8",
                    "calibration": "sample:300:ab12"}) == \
        {**onnx, "precision": "int8", "calibration_pictures": 300}
    lite2 = {"model": "efficientnet_lite2", "runtime": "onnx", "precision": "fp32"}
    assert serving({"model": old_lite2, "backend": "efficientnet_lite2",
                    "precision": "fp32"}) == lite2
    assert serving({"model": "efficientnet_lite2", "runtime": "onnx"}) == lite2
    hub = "https://tfhub.dev/x/feature_vector/4"
    for refused, why in (({"model": hub, "runtime": "tf", "model_handle": hub}, "TensorFlow"),
                         ({"model": "mobilenet_v2", "runtime": "onnx", "precision": "int8",
                           "calibration": "train.bson:300:ab12"}, "calibrated on"),
                         ({"model": "mobilenet_v2", "runtime": "cuda"}, "runtime"),
                         ({"model": "vgg16_gram_style_torchvision", "backend": "tf"},
                          "style")):
        with pytest.raises(ValueError, match=why):
            serving(refused)


@pytest.fixture(scope="module")
def lite2_artifacts(tmp_path_factory, sample_bson, sample_categories):
    """40 products of the built-in sample, embedded by EfficientNet-Lite2 at 224 px (not
    180: an upload must be decoded at the store's size), with a FAISS index."""
    from helpers.index import build_index
    from helpers.models import load_extractor
    from helpers.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("lite2"))
    catalogue = ws.catalogue(sample_bson, sample_categories, limit=40)
    images = ws.images(sample_bson)
    store = ws.vectors(catalogue, images, load_extractor("efficientnet_lite2", "onnx"),
                       image_size=224, level="product", progress=False)
    images.close()
    build_index("faiss", store.vectors, store.item_ids,
                catalogue.category_ids(store.product_ids), factory="Flat",
                source=store.made_by).save(ws.index_dir("faiss-lite2"))
    return ws.root


def test_efficientnet_store_is_served_and_embeds_uploads_with_efficientnet(lite2_artifacts):
    from helpers.models import load_extractor

    art = load_artifacts(lite2_artifacts, methods=("faiss", "annoy"))
    try:
        m = art.methods["faiss"]
        assert m.available and m.upload and m.image_size == 224
        assert m.store.made_by["model"].startswith("efficientnet_lite2")
        rel = Related(art)
        extractor = rel.extractor("faiss")
        assert (extractor.model, extractor.runtime) == ("efficientnet_lite2", "onnx")
        assert extractor.meta()["weights_sha256"] == m.store.made_by["weights_sha256"]
        pid, picture = picks(art, 1)[0]
        photo = exif_rotated(picture)
        want = load_extractor("efficientnet_lite2", "onnx")(decode_image(photo, 224)[None] / 255.0)
        np.testing.assert_allclose(rel.embed_upload(photo, "faiss"), want[0], atol=1e-4)
        for pid, picture in picks(art, 5):
            for variant in ("exif_rotated", "png_alpha", "crop"):
                hits = rel.search_upload(VARIANTS[variant](picture), TOP, "faiss")
                assert pid in [h.product_id for h in hits], (variant, pid)
    finally:
        art.close()


def test_newer_store_of_another_model_does_not_hide_the_indexed_one(lite2_artifacts,
                                                                     app_artifacts, tmp_path):
    """A run holding MobileNetV2 vectors with their indexes and a newer EfficientNet store
    without any serves the indexed one (and embeds uploads with MobileNetV2); once the
    EfficientNet store has an index, it is served."""
    from helpers.core import artifacts
    from helpers.vectors.store import store_manifest

    root = tmp_path / "art"
    shutil.copytree(app_artifacts, root, symlinks=True)
    fingerprint = next(json.loads(p.read_text())["made_by"]["catalogue_sha256"]
                       for p in root.rglob("meta.json") if "made_by" in p.read_text())
    # The product-level store (a run keeps the image-level one it was derived from too).
    lite2 = next(p.parent for p in lite2_artifacts.rglob("meta.json")
                 if str(json.loads(p.read_text()).get("made_by", {}).get("model", ""))
                 .startswith("efficientnet")
                 and json.loads(p.read_text())["made_by"].get("level") == "product")
    shutil.copytree(lite2, root / "vectors" / "lite2-copy")
    # Claimed for this catalogue (only which store is chosen is tested), written last:
    # the newest store of the run.
    meta = json.loads((root / "vectors" / "lite2-copy" / "meta.json").read_text())
    meta["made_by"]["catalogue_sha256"] = fingerprint
    (root / "vectors" / "lite2-copy" / "meta.json").write_text(json.dumps(meta))
    artifacts.write_manifest(root / "vectors" / "lite2-copy", store_manifest(meta["made_by"]))
    art = load_artifacts(root, methods=("faiss",))
    try:
        assert art.methods["faiss"].store.made_by["model"].startswith("mobilenet_v2")
        assert Related(art).extractor("faiss").model == "mobilenet_v2"
    finally:
        art.close()
    # Once an index is built from it, the newest store with an index is served.
    from helpers.index import build_index
    from helpers.vectors.store import VectorStore

    store = VectorStore(root / "vectors" / "lite2-copy")
    build_index("faiss", store.vectors, store.item_ids, np.zeros(len(store), np.int64),
                factory="Flat", source=store.made_by).save(root / "index" / "faiss-lite2")
    art = load_artifacts(root, methods=("faiss",))
    try:
        assert art.methods["faiss"].store.made_by["model"].startswith("efficientnet_lite2")
        assert Related(art).extractor("faiss").model == "efficientnet_lite2"
    finally:
        art.close()


def test_upload_refused_when_the_model_cannot_run_here(app_artifacts):
    """Vectors of a TF-Hub module (as the store would record them): the method still
    serves related products, but a photo is refused, saying why, not embedded by another
    model."""
    art = load_artifacts(app_artifacts, methods=("faiss",))
    try:
        made_by = art.methods["faiss"].store.made_by  # this load's own copy of meta.json
        hub = "https://tfhub.dev/google/imagenet/mobilenet_v2_140_224/feature_vector/4"
        made_by.update(model=hub, runtime="tf", model_handle=hub)
        rel = Related(art)
        pid, picture = picks(art, 1)[0]
        assert rel.related(pid, 3)
        with pytest.raises(UnknownMethodError, match="TensorFlow"):
            rel.search_upload(exif_rotated(picture), 3, "faiss")
    finally:
        art.close()
