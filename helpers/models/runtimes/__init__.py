"""The runtimes a network runs on: ONNX Runtime, OpenVINO, TensorFlow (one module each).

Registered by name in ``helpers.models.RUNTIMES``. Each imports its engine lazily; only
``tf.py`` and ``tf_style.py`` import TensorFlow.
"""
