"""EfficientNet-Lite2, the second backbone: our ONNX port against the real torch model.

tests/data/efficientnet_lite2_torch_reference.npz was computed once with torch and
``efficientnet-lite-pytorch`` on the same checkpoint file
(scripts/make_efficientnet_reference.py): uint8 photos at 260 px and an odd-sized
crop, with torch's features and logits.

Tolerances: features within 1e-5 absolute (values up to ~4.1; torch's own float32
result lies 3.7e-6 from float64), logits within 5e-5 absolute (values up to ~22).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import helpers.models as hm
from helpers.catalogue.protocol import ParquetCatalogue
from helpers.models.nets import efficientnet_lite as eff

REFERENCE = Path(__file__).parent / "data" / "efficientnet_lite2_torch_reference.npz"
FEATURES_ATOL = 1e-5
LOGITS_ATOL = 5e-5
CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def ext(model_cache: Path) -> hm.FeatureExtractor:
    return hm.load_extractor("efficientnet_lite2", "onnx", cache_dir=model_cache,
                             intra_op_threads=2)


def _inputs(ref: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The 260 px photos as one batch, the odd-sized crop alone: float32 [0, 1]."""
    return [ref["images"] * np.float32(1 / 255), ref["odd_image"][None] * np.float32(1 / 255)]


def _both(fn, ref: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([fn(x) for x in _inputs(ref)])


def test_reference_is_of_our_checkpoint(ref: dict[str, np.ndarray]) -> None:
    assert str(ref["weights_sha256"]) == eff.EFFICIENTNET_LITE2_PACKAGE.sha256
    assert ref["features"].shape == (4, 1280) and ref["logits"].shape == (4, 1000)
    assert ref["features_fp64_max_abs_diff"] < FEATURES_ATOL / 2


def test_architecture_from_the_checkpoint() -> None:
    blocks = eff.efficientnet_lite2_spec(eff.load_state_dict())
    assert len(blocks) == 1 + 21 + 1  # stem, MBConv blocks, head
    assert blocks[0].layers[0].out_channels == 32  # stem and head are not scaled in Lite
    assert blocks[-1].layers[0].out_channels == eff.FEATURE_DIM
    assert sum(b.residual for b in blocks) == 14
    assert {len(b.layers) for b in blocks[2:-1]} == {3}  # expand, depthwise, project; no SE


def test_matches_torch(ext: hm.FeatureExtractor, ref: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(_both(ext, ref), ref["features"], rtol=0, atol=FEATURES_ATOL)
    np.testing.assert_allclose(_both(ext.logits, ref), ref["logits"], rtol=0,
                               atol=LOGITS_ATOL)


def test_imagenet_top5_at_every_size(
    ext: hm.FeatureExtractor, ref: dict[str, np.ndarray], photos: dict[str, np.ndarray]
) -> None:
    clf = hm.load_classifier("efficientnet_lite2", "onnx", cache_dir=ext.path.parent,
                             intra_op_threads=2)
    top260 = clf.top_k(ref["images"][:2] * np.float32(1 / 255), k=5)
    top224 = clf.top_k(np.stack([photos["chelsea"], photos["coffee"]]), k=5)
    small = [hm.prepare_images([p], 180)[0] for p in (ref["images"][0], ref["images"][1])]
    top180 = clf.top_k(np.stack(small), k=5)
    for cat, cup in (top260, top224, top180):
        assert {i for i, _, _ in cat} & CATS, cat
        assert {i for i, _, _ in cup} & COFFEE, cup
    assert top260[0][0][0] == ref["logits"][0].argmax()  # torch's top-1


def test_contract_meta_and_determinism(
    ext: hm.FeatureExtractor, model_cache: Path, photos: dict[str, np.ndarray]
) -> None:
    assert ext.dim == 1280 and (ext.model, ext.runtime) == ("efficientnet_lite2", "onnx")
    batch = np.stack([photos["chelsea"], photos["coffee"], photos["crop_a"]])
    a, b = ext(batch), ext(batch[::-1].copy())
    assert a.shape == (3, 1280) and a.dtype == np.float32
    np.testing.assert_allclose(b[::-1], a, rtol=0, atol=1e-6)  # batch order does not matter
    np.testing.assert_array_equal(ext(batch), a)  # same input, same bits
    u8 = np.rint(batch * 255).astype(np.uint8)
    np.testing.assert_array_equal(ext(u8), ext(u8 * np.float32(1 / 255)))
    meta = ext.meta()
    assert meta["model"] == eff.MODEL_NAME and meta["weights"] == "efficientnet-lite2-9656183e.pth"
    assert meta["weights_sha256"] == eff.EFFICIENTNET_LITE2_PACKAGE.sha256[:16]
    # The cached graph is reused (not rebuilt) and readable by every user.
    mtime = ext.path.stat().st_mtime_ns
    again = hm.load_extractor("efficientnet_lite2", "onnx", cache_dir=model_cache,
                              intra_op_threads=1)
    assert again.path == ext.path and ext.path.stat().st_mtime_ns == mtime
    assert ext.path.stat().st_mode & 0o777 == 0o644


def test_reference_sees_a_padding_error(ref: dict[str, np.ndarray]) -> None:
    """torch-style symmetric padding instead of TF "SAME": top-5 may survive, features not."""
    import onnxruntime as ort
    from onnx import helper

    model = eff.build_onnx_model()
    for node in model.graph.node:
        if node.op_type == "Conv":
            k = next(a.ints[0] for a in node.attribute if a.name == "kernel_shape")
            kept = [a for a in node.attribute if a.name != "auto_pad"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("pads", [k // 2] * 4)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (wrong,) = session.run(["features"], {"images": _inputs(ref)[0]})
    assert np.abs(wrong - ref["features"][:3]).max() > 100 * FEATURES_ATOL


def test_store_of_another_backbone_is_refused(
    ext: hm.FeatureExtractor, model_cache: Path, sample_bson: Path,
    sample_categories: Path, tmp_path: Path
) -> None:
    from helpers.ingest import scan as cat
    from helpers.vectors.embed import embed_catalogue
    from helpers.vectors.store import VectorStore, VectorStoreError

    mobilenet = hm.load_extractor("mobilenet_v2", "onnx", cache_dir=model_cache,
                                  intra_op_threads=2)
    cat.build_catalogue(sample_bson, tmp_path / "catalogue", sample_categories, progress=False)
    head = ParquetCatalogue(cat.load_catalogue(tmp_path / "catalogue").head(4))
    store = embed_catalogue(head, sample_bson, mobilenet, tmp_path / "vectors", image_size=64,
                            progress=False)
    assert store.made_by["model"] != ext.meta()["model"]
    with pytest.raises(VectorStoreError, match="model"):
        VectorStore(tmp_path / "vectors", expect=ext.meta())
    with pytest.raises(VectorStoreError, match="model"):
        embed_catalogue(head, sample_bson, ext, tmp_path / "vectors", image_size=64,
                        progress=False)
    other = embed_catalogue(head, sample_bson, ext, tmp_path / "eff", image_size=64,
                            progress=False)
    assert other.vectors.shape == (4, 1280)
    with pytest.raises(VectorStoreError, match="model"):
        VectorStore(tmp_path / "eff", expect=mobilenet.meta())


def test_requirements_pin_the_checked_version() -> None:
    """requirements/weights.txt (what `make` installs, hash-checked) pins what the code checks."""
    package = eff.EFFICIENTNET_LITE2_PACKAGE
    text = (Path(__file__).parents[1] / "requirements" / "weights.txt").read_text()
    assert f"{package.distribution}=={package.version} \\" in text
    assert eff.checkpoint_path().name == "efficientnet-lite2-9656183e.pth"  # sha256 checked
