"""Runtime "openvino": bf16 (where the CPU has it) networks from the same ONNX graph, uint8 input.

Agreement with fp32 (onnxruntime) is checked on real pictures: the built-in sample's
photos and, when present, the real Cdiscount sample's, at 224 and 180 px. The bound:
cosine >= 0.99 per picture and a largest feature error under 4% of the fp32 vector's
norm (bf16 keeps 8 bits of mantissa). Measured on 96 pictures of each: cosine >= 0.993
(mean 0.998) and error <= 2.5% of the norm on the built-in sample, cosine >= 0.995
(mean 0.999) and <= 1.5% on the real one. Whether the neighbours stay the same is
measured on whole catalogues by bench/bench_embed.py.
"""

from __future__ import annotations

from pathlib import Path

import bson
import numpy as np
import pytest

import helpers.models as hm
from helpers.catalogue.protocol import ParquetCatalogue
from helpers.ingest.jpeg import decode_image
from helpers.vectors.store import VectorStore, VectorStoreError

pytest.importorskip("openvino")

MIN_COSINE = 0.99
MAX_REL_ERROR = 0.04
REFERENCE = Path(__file__).parent / "data" / "mobilenet_v2_torch_reference.npz"


def _pictures(path: Path, n: int, size: int = 224) -> np.ndarray:
    """The first ``n`` pictures of a Cdiscount-format BSON file, decoded to uint8."""
    out = []
    with open(path, "rb") as f:
        for doc in bson.decode_file_iter(f):
            for img in doc["imgs"]:
                out.append(decode_image(img["picture"], size))
                if len(out) == n:
                    return np.stack(out)
    return np.stack(out)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def fp32(model_cache: Path) -> hm.FeatureExtractor:
    return hm.load_extractor("mobilenet_v2", "onnx", cache_dir=model_cache, intra_op_threads=2)


@pytest.fixture(scope="module")
def ov(model_cache: Path) -> hm.FeatureExtractor:
    return hm.load_extractor("mobilenet_v2", "openvino", cache_dir=model_cache, intra_op_threads=2)


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per picture: cosine, and max abs error relative to the fp32 vector's norm."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / (na * nb)
    return cos, np.abs(a - b).max(1) / nb


def test_openvino_declares_its_input_and_precision(ov: hm.FeatureExtractor,
                                                   fp32: hm.FeatureExtractor) -> None:
    assert ov.input_spec == hm.InputSpec("uint8", None)
    assert ov.dim == 1280 and ov.runtime == "openvino" and ov.model == "mobilenet_v2"
    meta = ov.meta()
    assert meta["runtime"] == "openvino" and meta["model"] == "mobilenet_v2"
    # bf16 is asked by default; what runs (and is recorded) is what this CPU can do.
    assert meta["precision"] == ov.precision == _expected("bf16")
    # Same model and weights as fp32, so only runtime and precision tell them apart.
    assert {k: v for k, v in meta.items() if k not in ("runtime", "precision")} == {
        k: v for k, v in fp32.meta().items() if k not in ("runtime", "precision")}


def _expected(requested: str) -> str:
    """The precision OpenVINO's CPU capabilities allow for ``requested``."""
    import openvino

    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "fp32" if requested == "bf16" and "BF16" not in caps else requested


@pytest.mark.parametrize("requested", ["bf16", "fp32", "int8"])
def test_reported_precision_is_what_the_cpu_allows(requested: str, model_cache: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The meta says what runs: bf16 only where OPTIMIZATION_CAPABILITIES has BF16."""
    options = {"calibration_pictures": 16} if requested == "int8" else {}
    with caplog.at_level("WARNING", logger="helpers.models.runtimes.openvino"):
        ext = hm.load_extractor("mobilenet_v2", "openvino", requested, cache_dir=model_cache,
                                intra_op_threads=2, **options)
    assert ext.precision == ext.meta()["precision"] == _expected(requested)
    fell_back = requested != "fp32" and "BF16" not in ext.capabilities
    assert ("no bf16 support" in caplog.text) == fell_back
    # The store's meta maps back to an extractor that runs the same precision here.
    assert hm.extractor_args(ext.meta())["precision"] == ext.precision


def test_runtime_precision_follows_the_capabilities() -> None:
    from helpers.models.runtimes.openvino import runtime_precision

    amx = ["FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"]
    avx2 = ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]
    assert runtime_precision("bf16", amx) == ("bf16", "bf16")
    assert runtime_precision("bf16", avx2) == ("fp32", "f32")
    assert runtime_precision("int8", amx) == ("int8", "bf16")
    assert runtime_precision("int8", avx2) == ("int8", "f32")
    assert runtime_precision("fp32", amx) == ("fp32", "f32")
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime_precision("f32", amx)


@pytest.mark.parametrize("which", ["sample", "real"])
def test_openvino_agrees_with_fp32_on_real_pictures(
    which: str, ov: hm.FeatureExtractor, fp32: hm.FeatureExtractor, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue("sample_bson" if which == "sample" else "cdiscount_bson")
    for size in (224, 180):
        u8 = _pictures(path, 96, size)
        cos, rel = _agreement(ov(u8), fp32(u8))
        assert cos.min() >= MIN_COSINE, (size, cos.min())
        assert rel.max() <= MAX_REL_ERROR, (size, rel.max())


def test_openvino_float_and_uint8_inputs_agree(ov: hm.FeatureExtractor,
                                               sample_bson: Path) -> None:
    u8 = _pictures(sample_bson, 8)
    from_u8, from_float = ov(u8), ov(u8 * np.float32(1 / 255))  # two compiled models
    cos, _ = _agreement(from_float, from_u8)
    assert cos.min() > 0.9999
    np.testing.assert_allclose(ov(u8[:3]), from_u8[:3], rtol=0, atol=1e-6)  # batch-independent


def test_openvino_static_and_dynamic_batches_agree(model_cache: Path, sample_bson: Path) -> None:
    """A call of 7 with static_batch 3: two static batches of 3, one dynamic of 1."""
    ext = hm.load_extractor("mobilenet_v2", "openvino", cache_dir=model_cache,
                            intra_op_threads=2, static_batch=3, batch_size=7)
    u8 = _pictures(sample_bson, 7, 96)
    vecs = ext(u8)
    assert {k[1] for k in ext._compiled} == {3, -1}
    one_by_one = np.concatenate([ext(u8[i : i + 1]) for i in range(7)])
    cos, _ = _agreement(vecs, one_by_one)
    assert cos.min() > 0.9999


def test_openvino_imagenet_top5(model_cache: Path) -> None:
    """Top-5 on torchvision's reference photos: the ImageNet head through bf16 (or fp32
    where the CPU has no bf16)."""
    with np.load(REFERENCE) as ref:
        images, ref_logits = ref["images"], ref["logits"]
    clf = hm.load_classifier("mobilenet_v2", "openvino", cache_dir=model_cache, intra_op_threads=2)
    top = clf.top_k(images, k=5)
    assert {i for i, _, _ in top[0]} & set(range(281, 286)), top[0]  # a domestic cat
    assert 967 in {i for i, _, _ in top[1]}, top[1]  # espresso
    assert [t[0][0] for t in top] == ref_logits.argmax(1)[:3].tolist()  # torch's top-1


def test_openvino_runs_efficientnet_too(model_cache: Path, sample_bson: Path) -> None:
    """Any network with an ONNX graph runs on OpenVINO: EfficientNet-Lite2's, fp32 here."""
    ref = hm.load_extractor("efficientnet_lite2", "onnx", cache_dir=model_cache,
                            intra_op_threads=2)
    ext = hm.load_extractor("efficientnet_lite2", "openvino", "fp32", cache_dir=model_cache,
                            intra_op_threads=2)
    meta = ext.meta()
    assert (meta["model"], meta["runtime"], meta["precision"]) == (
        "efficientnet_lite2", "openvino", "fp32")
    assert meta["weights_sha256"] == ref.meta()["weights_sha256"]
    u8 = _pictures(sample_bson, 8, 260)
    cos, rel = _agreement(ext(u8), ref(u8))
    assert cos.min() > 0.9999 and rel.max() < 1e-3, (cos.min(), rel.max())


def test_openvino_fp32_matches_torchvision(model_cache: Path) -> None:
    """precision="fp32" is the plain graph: within torchvision's reference tolerance x10."""
    ext = hm.load_extractor("mobilenet_v2", "openvino", "fp32", cache_dir=model_cache,
                            intra_op_threads=2)
    assert ext.meta()["precision"] == "fp32"
    with np.load(REFERENCE) as ref:
        np.testing.assert_allclose(ext(ref["images"]), ref["features"][:3], rtol=0, atol=1e-4)


def test_store_made_by_another_runtime_is_refused(
    ov: hm.FeatureExtractor, fp32: hm.FeatureExtractor, sample_bson: Path,
    sample_categories: Path, tmp_path: Path
) -> None:
    from helpers.ingest import scan as cat
    from helpers.vectors.embed import embed_catalogue

    cat.build_catalogue(sample_bson, tmp_path / "catalogue", sample_categories, progress=False)
    head = ParquetCatalogue(cat.load_catalogue(tmp_path / "catalogue").head(6))
    store = embed_catalogue(head, sample_bson, fp32, tmp_path / "vectors", image_size=96,
                            progress=False)
    assert store.made_by["runtime"] == "onnx" and store.made_by["precision"] == "fp32"
    with pytest.raises(VectorStoreError, match="runtime"):
        embed_catalogue(head, sample_bson, ov, tmp_path / "vectors", image_size=96,
                        progress=False)
    with pytest.raises(VectorStoreError, match="runtime"):
        VectorStore(tmp_path / "vectors", expect=ov.meta())


@pytest.mark.parametrize("runtime", ["openvino", "onnx"])
def test_int8_imagenet_top5_and_meta(runtime: str, model_cache: Path) -> None:
    """The int8 QDQ graph (calibrated on 64 sample pictures here) still sees cat and cup."""
    options = {"precision": "int8", "calibration_pictures": 64}
    ext = hm.load_extractor("mobilenet_v2", runtime, cache_dir=model_cache, intra_op_threads=2,
                            **options)
    meta = ext.meta()
    assert meta["precision"] == "int8" and meta["calibration"].startswith("sample:64:")
    assert ext.path.name.startswith("mobilenet_v2_100_imagenet.int8-")
    assert ext.path.stat().st_mode & 0o777 == 0o644
    with np.load(REFERENCE) as ref:
        top = hm.load_classifier("mobilenet_v2", runtime, cache_dir=model_cache, intra_op_threads=2,
                                 **options).top_k(ref["images"], k=5)
    assert {i for i, _, _ in top[0]} & set(range(281, 286)), top[0]
    assert 967 in {i for i, _, _ in top[1]}, top[1]
