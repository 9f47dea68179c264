"""The runtimes a network runs on: ONNX Runtime, OpenVINO, TensorFlow."""
