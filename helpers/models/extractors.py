"""ImageNet helpers shared by every runtime: picture preparation, class names, classifier.

The extractor interface itself is in :mod:`helpers.models.base`; the networks are under
``helpers/models/nets/``, the runtimes under ``helpers/models/runtimes/``.
Imports: numpy, PIL (lazily), :mod:`helpers.models`; TensorFlow only through runtimes.tf.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from helpers.models.base import FeatureExtractor, InputSpec, check_batch

__all__ = [
    "FeatureExtractor",
    "ImageNetClassifier",
    "InputSpec",
    "check_batch",
    "imagenet_classes",
    "prepare_images",
]


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


class ImageNetClassifier:
    """A network with its ImageNet head, on a runtime, to check the weights on real photos.

    Runtime ``"tf"`` builds the Keras MobileNetV2 with its Dense(1000) head in memory;
    every other runtime uses its graph's ``logits`` output (``extractor.logits``), so the
    same check covers each network, runtime and precision.
    """

    def __init__(
        self,
        model: str = "mobilenet_v2",
        runtime: str = "onnx",
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
        **options: Any,
    ) -> None:
        self.model = model
        self.runtime = runtime
        self.classes = imagenet_classes()
        self._logits: Callable[[np.ndarray], np.ndarray]
        if runtime == "tf":
            from helpers.models.nets.mobilenet_v2 import MODEL_NAME
            from helpers.models.runtimes.tf import keras_logits

            if model != MODEL_NAME:
                raise ValueError(f"runtime 'tf' has the head of {MODEL_NAME!r} only, not "
                                 f"{model!r}")
            fn = keras_logits()
            self._logits = lambda x: fn(check_batch(x))
        else:
            from helpers.models import load_extractor

            ext = load_extractor(model, runtime, cache_dir=cache_dir,
                                 intra_op_threads=intra_op_threads, **options)
            self._logits = ext.logits

    def predict_imagenet(self, images: np.ndarray, softmax: bool = True) -> np.ndarray:
        """[N, 1000] class probabilities (or raw logits with ``softmax=False``)."""
        logits = self._logits(images)
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
