"""Deployment tooling for keras_transformer models (SavedModel and ONNX)."""
