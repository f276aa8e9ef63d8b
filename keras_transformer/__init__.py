"""keras-transformer-zoo: transformer layers and models for Keras 3.

Submodules and the model classes load on first use (PEP 562), so `import keras_transformer` and
the numpy-only `keras_transformer.search` (the decoding loops that ONNX Runtime generation
shares) do not import Keras or TensorFlow. `from keras_transformer import layers` and
`keras_transformer.models.DecoderOnlyTransformer` work as usual. The classes are registered for
`.keras` loading as soon as Keras is imported (before or after this package; see
`keras_transformer._registration`), so plain `keras.saving.load_model` finds them.
"""

import importlib

from keras_transformer import _registration

__version__ = "0.1.0"

_SUBMODULES = (
    "callbacks", "checkpoints", "generation", "layers", "models", "presets", "saving", "search", "tokenizers",
    "training", "visualize",
)
_MODEL_CLASSES = ("DecoderOnlyTransformer", "EncoderDecoderTransformer", "EncoderOnlyTransformer")

__all__ = [
    "DecoderOnlyTransformer",
    "EncoderDecoderTransformer",
    "EncoderOnlyTransformer",
    "__version__",
    "callbacks",
    "checkpoints",
    "generation",
    "layers",
    "models",
    "presets",
    "saving",
    "tokenizers",
    "training",
]


_registration.register_when_keras_is_imported()


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # also sets the package attribute
    if name in _MODEL_CLASSES:
        return getattr(importlib.import_module(f"{__name__}.models"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_MODEL_CLASSES))
