"""Backend ``"tf"``: MobileNetV2 features from a TF-Hub style SavedModel.

``tensorflow_hub.KerasLayer`` on the cached export of the local torchvision weights
(:func:`~helpers.models.nets.mobilenet_v2.ensure_saved_model`), or on a TF-Hub URL /
SavedModel directory given as ``model_handle``. TensorFlow is imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from helpers.models.base import FeatureExtractor, InputSpec
from helpers.models.nets import mobilenet_v2

__all__ = ["TFHubFeatureExtractor", "keras_logits"]


class TFHubFeatureExtractor(FeatureExtractor):
    """Features from a TF-Hub style SavedModel through ``tensorflow_hub.KerasLayer``.

    By default the SavedModel is the cached export of the local torchvision weights;
    ``model_handle`` may instead be a TF-Hub URL or another SavedModel directory
    (those expect their own input size, typically 224x224, values in [0, 1]).
    """

    backend = "tf"
    precision = "fp32"
    input_spec = InputSpec("float32")

    def __init__(
        self,
        model_handle: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        tf = mobilenet_v2.import_tensorflow()
        import tensorflow_hub as hub

        if model_handle is None:
            self.handle = str(mobilenet_v2.ensure_saved_model(cache_dir))
            self.name = mobilenet_v2.MODEL_NAME
            self.dim = mobilenet_v2.FEATURE_DIM
            self._meta = mobilenet_v2.weights_meta()
        else:
            self.handle = model_handle
            self.name = model_handle
            self.dim = -1  # set by the probe below
            self._meta = {"model": model_handle, "weights": model_handle,
                          "weights_sha256": None}
        self.layer = hub.KerasLayer(self.handle, trainable=False)
        self._tf = tf
        self.batch_size = batch_size
        if model_handle is not None:  # learn the output size of an unknown module
            self.dim = int(self.layer(tf.zeros([1, 224, 224, 3])).shape[-1])
            self._meta["dim"] = self.dim

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.layer(self._tf.constant(batch)), dtype=np.float32)


def keras_logits() -> Any:
    """``fn(float32 batch) -> logits``: the Keras MobileNetV2 with its head, in memory."""
    tf = mobilenet_v2.import_tensorflow()
    model = mobilenet_v2.build_keras_mobilenet_v2(include_top=True)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda x: np.asarray(fn(tf.constant(x)), dtype=np.float32)
