"""Deployment tooling for keras_transformer models: validated SavedModel and ONNX export.

Importing `export` (or `export.runtime`) does not import TensorFlow or Keras; the exporters
import them when called.

Example:
>>> import export
>>> report = export.to_onnx(model, "out/model.onnx")  # doctest: +SKIP
>>> print(report)  # doctest: +SKIP
"""

import importlib

_LAZY = {
    "to_onnx": "export.onnx_export",
    "validate_onnx": "export.onnx_export",
    "load_metadata": "export.onnx_export",
    "to_savedmodel": "export.savedmodel",
    "to_genai": "export.deploy",
    "to_optimum": "export.deploy",
    "ExportReport": "export.report",
    "ExportValidationError": "export.validate",
    "OnnxModel": "export.runtime",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
