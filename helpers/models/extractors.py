"""The common feature-extractor interface and its ONNX / TensorFlow implementations."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import mobilenet_v2, onnx_backend

__all__ = [
    "FeatureExtractor",
    "ImageNetClassifier",
    "OnnxFeatureExtractor",
    "TFHubFeatureExtractor",
    "check_batch",
    "imagenet_classes",
    "prepare_images",
]


def check_batch(batch: Any) -> np.ndarray:
    """Validate an image batch and return it as C-contiguous float32 [N, H, W, 3].

    Catches the usual mistakes early: uint8 or 0..255 floats (the models expect
    [0, 1]) and single images without a batch axis.
    """
    arr = np.asarray(batch)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected a batch of RGB images [N, H, W, 3], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"expected float images in [0, 1], got dtype {arr.dtype}; divide uint8 by 255"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    # Loose bounds: resampling may overshoot [0, 1] a little, 0..255 input may not.
    if arr.size and (arr.max() > 2.0 or arr.min() < -1.0):
        raise ValueError("expected pixel values in [0, 1]; got values outside it (0..255?)")
    return arr


def prepare_images(images: Sequence[Any], size: int | tuple[int, int] = 224) -> np.ndarray:
    """PIL images / uint8 arrays -> float32 [N, h, w, 3] in [0, 1], resized with PIL.

    ``size`` is an int (square) or ``(width, height)`` as PIL's ``resize`` takes it.
    Bilinear with PIL's antialiasing, like torchvision's default ``Resize``.
    """
    from PIL import Image

    wh = (size, size) if isinstance(size, int) else tuple(size)
    out = []
    for img in images:
        pil = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
        pil = pil.convert("RGB").resize(wh, Image.BILINEAR)
        out.append(np.asarray(pil, dtype=np.float32) / 255.0)
    return np.stack(out)


@lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    text = resources.files("helpers.models").joinpath("imagenet_classes.txt").read_text()
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (281 'tabby', 967 'espresso')."""
    return list(_imagenet_classes())


class FeatureExtractor(abc.ABC):
    """Images in, one embedding per image out.

    ``extractor(batch)`` takes float32 RGB [N, H, W, 3] in [0, 1] and returns float32
    [N, dim]. Large batches are processed ``batch_size`` images at a time.
    """

    name: str
    dim: int
    backend: str
    batch_size: int = 32

    @abc.abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of one validated, float32, contiguous chunk."""

    @abc.abstractmethod
    def meta(self) -> dict[str, Any]:
        """What produced the vectors: model, weights (+ sha256 prefix), backend, dim.

        Store it beside vectors; refuse to mix vectors whose meta differ.
        """

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        arr = check_batch(batch)
        if len(arr) == 0:
            return np.zeros((0, self.dim), np.float32)
        chunks = [
            self._forward(arr[i : i + self.batch_size]) for i in range(0, len(arr), self.batch_size)
        ]
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}(name={self.name!r}, dim={self.dim}, backend={self.backend!r})"


class OnnxFeatureExtractor(FeatureExtractor):
    """MobileNetV2 features through onnxruntime (no TensorFlow needed)."""

    backend = "onnx"

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        self.path = onnx_backend.ensure_onnx_model(cache_dir)
        self.session = onnx_backend.make_session(self.path, intra_op_threads)
        self.name = mobilenet_v2.MODEL_NAME
        self.dim = mobilenet_v2.FEATURE_DIM
        self.batch_size = batch_size
        self._meta = {**mobilenet_v2.weights_meta(), "backend": self.backend}

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return onnx_backend.run(self.session, "features", batch)

    def meta(self) -> dict[str, Any]:
        return dict(self._meta)


class TFHubFeatureExtractor(FeatureExtractor):
    """Features from a TF-Hub style SavedModel through ``tensorflow_hub.KerasLayer``.

    By default the SavedModel is the cached export of the local torchvision weights;
    ``model_handle`` may instead be a TF-Hub URL or another SavedModel directory
    (those expect their own input size, typically 224x224, values in [0, 1]).
    """

    backend = "tf"

    def __init__(
        self,
        model_handle: str | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 32,
    ) -> None:
        tf = mobilenet_v2.import_tensorflow()
        import tensorflow_hub as hub

        if model_handle is None:
            self.handle = str(mobilenet_v2.ensure_saved_model(cache_dir))
            self.name = mobilenet_v2.MODEL_NAME
            self.dim = mobilenet_v2.FEATURE_DIM
            self._meta = {**mobilenet_v2.weights_meta(), "backend": self.backend}
        else:
            self.handle = model_handle
            self.name = model_handle
            self.dim = -1  # set by the probe below
            self._meta = {
                "model": model_handle,
                "weights": model_handle,
                "weights_sha256": None,
                "backend": self.backend,
            }
        self.layer = hub.KerasLayer(self.handle, trainable=False)
        self._tf = tf
        self.batch_size = batch_size
        if model_handle is not None:  # learn the output size of an unknown module
            self.dim = int(self.layer(tf.zeros([1, 224, 224, 3])).shape[-1])
            self._meta["dim"] = self.dim

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.layer(self._tf.constant(batch)), dtype=np.float32)

    def meta(self) -> dict[str, Any]:
        return dict(self._meta)


class ImageNetClassifier:
    """The MobileNetV2 with its ImageNet head, to check the weights on real photos.

    backend ``"onnx"`` uses the ONNX graph's ``logits`` output; ``"tf"`` builds the
    Keras model with its Dense(1000) head in memory.
    """

    def __init__(
        self,
        backend: str = "onnx",
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        self.backend = backend
        self.classes = imagenet_classes()
        if backend == "onnx":
            path = onnx_backend.ensure_onnx_model(cache_dir)
            session = onnx_backend.make_session(path, intra_op_threads)
            self._logits = lambda x: onnx_backend.run(session, "logits", x)
        elif backend == "tf":
            tf = mobilenet_v2.import_tensorflow()
            model = mobilenet_v2.build_keras_mobilenet_v2(include_top=True)
            spec = tf.TensorSpec([None, None, None, 3], tf.float32)
            fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
            self._logits = lambda x: np.asarray(fn(tf.constant(x)), dtype=np.float32)
        else:
            raise ValueError(f"unknown backend {backend!r}; choose 'onnx' or 'tf'")

    def predict_imagenet(self, images: np.ndarray, softmax: bool = True) -> np.ndarray:
        """[N, 1000] class probabilities (or raw logits with ``softmax=False``)."""
        logits = self._logits(check_batch(images))
        if not softmax:
            return logits
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def top_k(self, images: np.ndarray, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """Per image, the ``k`` best ``(class index, class name, probability)``."""
        probs = self.predict_imagenet(images)
        best = np.argsort(-probs, axis=1)[:, :k]
        return [
            [(int(i), self.classes[i], float(p[i])) for i in row]
            for row, p in zip(best, probs, strict=True)
        ]
