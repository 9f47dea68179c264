"""The network and runtime registries, and the input contract every runtime shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import helpers.models as hm
from helpers.models.base import FeatureExtractor, InputSpec
from helpers.models.nets.base import Net
from helpers.models.onnx_graph import Block, GraphSpec, conv_bn


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


class _Uint8Means(FeatureExtractor):
    """A toy runtime that wants uint8: per-channel means, to see what it receives."""

    runtime = "toy"
    precision = "int8"
    input_spec = InputSpec("uint8", size=32)

    def __init__(self, net, *, cache_dir=None, intra_op_threads=None,
                 batch_size=32, scale: float = 1.0) -> None:
        self.name = self.model = net.name
        self.dim, self.batch_size, self.scale = 3, batch_size, scale
        self._meta = {"model": net.name, "weights": None, "weights_sha256": None, "dim": 3}
        self.seen: list[np.dtype] = []

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(batch.dtype)
        pixels = batch if batch.dtype == np.uint8 else batch * 255
        return pixels.mean(axis=(1, 2)).astype(np.float32) * self.scale


class _TinyNet(Net):
    """A toy network: one 1x1 convolution (3 -> 4 channels) and a 1000-way head."""

    name = "tiny"
    dim = 4
    onnx_file = "tiny.onnx"
    export_format = 1
    input_note = "float32 RGB [N,H,W,3] in [0,1]"

    def checkpoint_path(self) -> Path:
        return Path(__file__)  # any file: its hash identifies the "weights"

    def state_dict(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {"c.weight": rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
                "bn.weight": np.ones(4, np.float32), "bn.bias": np.zeros(4, np.float32),
                "bn.running_mean": np.zeros(4, np.float32),
                "bn.running_var": np.ones(4, np.float32),
                "fc.weight": np.ones((1000, 4), np.float32),
                "fc.bias": np.zeros(1000, np.float32)}

    def graph(self, state: dict[str, np.ndarray]) -> GraphSpec:
        layer = conv_bn(state, "c", "bn", 1, relu6=False)
        return GraphSpec("tiny", [Block((layer,), False)], np.zeros(3), np.ones(3), 0.0,
                         "symmetric", ("fc.weight", "fc.bias"), 4)


def test_registries_list_and_lazily_import() -> None:
    assert set(hm.NETS) == {"mobilenet_v2", "efficientnet_lite2"}
    assert set(hm.RUNTIMES) == {"onnx", "openvino", "tf"}
    from helpers.models.runtimes.onnx import OnnxFeatureExtractor

    assert hm.RUNTIMES["onnx"] is OnnxFeatureExtractor is hm.OnnxFeatureExtractor
    with pytest.raises(KeyError, match="unknown runtime 'nope'; known: onnx"):
        hm.RUNTIMES["nope"]
    with pytest.raises(KeyError, match="unknown network 'nope'; known: mobilenet_v2"):
        hm.NETS["nope"]
    with pytest.raises(ValueError, match="unknown runtime 'nope'"):
        hm.load_extractor("mobilenet_v2", "nope")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        hm.load_extractor("nope")
    # The old one-setting call load_extractor("onnx") says what changed.
    with pytest.raises(ValueError, match=r"'onnx' is a runtime: load_extractor\(model=\.\.\."):
        hm.load_extractor("onnx")


def test_a_new_runtime_is_one_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(hm.RUNTIMES._targets, "toy", _Uint8Means)
    ext = hm.load_extractor(runtime="toy", batch_size=2, scale=2.0)  # options reach it
    assert ext.input_spec == InputSpec("uint8", 32) and ext.scale == 2.0
    u8 = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    vecs = ext(u8)
    assert ext.seen == [np.dtype(np.uint8)] * 2  # uint8 passed through, in chunks of 2
    np.testing.assert_allclose(vecs, u8.mean(axis=(1, 2)) * 2, rtol=1e-6)
    # Float [0, 1] still works, and is not rounded to uint8 on the way.
    np.testing.assert_allclose(ext(u8 / 255.0), vecs, rtol=1e-5)
    assert ext.seen[-1] == np.float32
    assert ext.meta() == {"model": "mobilenet_v2", "weights": None, "weights_sha256": None,
                          "dim": 3, "runtime": "toy", "precision": "int8"}
    with pytest.raises(NotImplementedError, match="ImageNet head"):
        ext.logits(u8)


def test_a_new_network_is_one_registry_line(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """A Net describes its layers; the one graph builder and every ONNX runtime do the rest."""
    monkeypatch.setitem(hm.NETS._targets, "tiny", _TinyNet)
    ext = hm.load_extractor("tiny", "onnx", cache_dir=tmp_path, intra_op_threads=1)
    assert (ext.path.name, ext.dim, ext.model) == ("tiny.onnx", 4, "tiny")
    x = np.random.default_rng(1).random((2, 5, 5, 3), np.float32)
    state = _TinyNet().state_dict()
    expected = np.einsum("nhwc,oc->no", x, state["c.weight"][:, :, 0, 0]) / 25
    np.testing.assert_allclose(ext(x), expected, rtol=1e-5, atol=1e-6)
    assert ext.logits(x).shape == (2, 1000)
    meta = ext.meta()
    assert (meta["model"], meta["runtime"], meta["dim"]) == ("tiny", "onnx", 4)
    assert hm.extractor_args(meta) == {"model": "tiny", "runtime": "onnx", "precision": "fp32"}


def test_extractor_args_read_new_and_old_metas() -> None:
    args = hm.extractor_args
    assert args({"model": "mobilenet_v2", "runtime": "openvino", "precision": "bf16",
                 "image_size": 180}) == {
        "model": "mobilenet_v2", "runtime": "openvino", "precision": "bf16"}
    # Stores made when the runtime was a "backend" and models had longer names.
    assert args({"model": "mobilenet_v2_100_imagenet_torchvision", "backend": "onnx",
                 "precision": "fp32"}) == {
        "model": "mobilenet_v2", "runtime": "onnx", "precision": "fp32"}
    assert args({"model": "mobilenet_v2_100_imagenet_torchvision", "backend": "tf"})[
        "runtime"] == "tf"
    assert args({"model": "efficientnet_lite2_imagenet", "backend": "efficientnet_lite2",
                 "runtime": "onnxruntime", "precision": "fp32"}) == {
        "model": "efficientnet_lite2", "runtime": "onnx", "precision": "fp32"}
    # int8: the calibration pictures come back; a BSON file must be named again.
    assert args({"model": "mobilenet_v2", "runtime": "onnx", "precision": "int8",
                 "calibration": "sample:64:abc"}) == {
        "model": "mobilenet_v2", "runtime": "onnx", "precision": "int8",
        "calibration_pictures": 64}
    meta = {"model": "mobilenet_v2", "runtime": "openvino", "precision": "int8",
            "calibration": "train.bson:300:abc"}
    with pytest.raises(ValueError, match="calibration="):
        args(meta)
    assert args(meta, calibration="/data/train.bson")["calibration"] == "/data/train.bson"
    # A TF-Hub module, now and before.
    url = "https://tfhub.dev/google/imagenet/mobilenet_v2_140_224/feature_vector/4"
    for meta in ({"model": url, "model_handle": url, "runtime": "tf", "weights": url},
                 {"model": url, "backend": "tf", "weights": url}):
        assert args(meta) == {"model": "mobilenet_v2", "runtime": "tf", "precision": "fp32",
                              "model_handle": url}
    with pytest.raises(ValueError, match="load_style_extractor"):
        args({"model": "vgg16_gram_style_torchvision", "backend": "tf"})


def test_tf_runs_mobilenet_v2_only() -> None:
    with pytest.raises(ValueError, match="runtime 'tf' runs model 'mobilenet_v2' only"):
        hm.load_extractor("efficientnet_lite2", "tf")
    with pytest.raises(ValueError, match="model_handle is only supported by runtime='tf'"):
        hm.load_extractor("mobilenet_v2", "onnx", model_handle="https://tfhub.dev/x")


def test_input_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="input dtype"):
        InputSpec("float16")


def test_onnx_takes_uint8_and_float_alike(
    model_cache: Path, photos: dict[str, np.ndarray]
) -> None:
    ext = hm.load_extractor("mobilenet_v2", "onnx", cache_dir=model_cache, intra_op_threads=2)
    assert ext.input_spec == InputSpec("float32", None)
    u8 = np.rint(np.stack([photos["chelsea"], photos["coffee"]]) * 255).astype(np.uint8)
    # uint8 is scaled as the embedding pipeline scales it: the very same vectors.
    np.testing.assert_array_equal(ext(u8), ext(u8 * np.float32(1 / 255)))
    meta = ext.meta()
    assert meta["runtime"] == "onnx" and meta["precision"] == "fp32"
    assert ext.logits(u8).shape == (2, 1000)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        ext(u8[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ext(u8.astype(np.float32))  # 0..255 floats: a mistake, not uint8


def test_vector_store_folders_name_model_runtime_and_precision(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from helpers.workspace import Workspace

    ws, catalogue = Workspace(tmp_path), SimpleNamespace(fingerprint="0123456789abcdef")

    def name(meta: dict) -> str:
        return ws.vectors_dir(meta, 180, "image", catalogue).name

    assert name({"model": "mobilenet_v2", "runtime": "onnx", "precision": "fp32"}) == \
        "mobilenet_v2-onnx-180px-image-0123456789"
    assert name({"model": "efficientnet_lite2", "runtime": "openvino", "precision": "bf16"}) \
        == "efficientnet_lite2-openvino-bf16-180px-image-0123456789"
    # Older stores (one "backend" setting) keep their folder names.
    assert name({"model": "mobilenet_v2_100_imagenet_torchvision", "backend": "openvino",
                 "precision": "int8"}) == \
        "mobilenet_v2_100_imagenet_torchvision-openvino-int8-180px-image-0123456789"


def test_tensorflow_is_imported_only_by_the_tf_runtime() -> None:
    """No module of helpers/ outside helpers/models/runtimes/tf*.py imports TensorFlow."""
    import ast

    root = Path(hm.__file__).parents[1]
    tf = {"tensorflow", "tf_keras", "tensorflow_hub", "keras"}
    offenders = []
    for path in root.rglob("*.py"):
        if path.parent.name == "runtimes" and path.name.startswith("tf"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names
                          if n.split(".")[0] in tf]
    assert not offenders
