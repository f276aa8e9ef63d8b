"""keras-transformer-zoo: transformer layers and models for Keras 3."""

__version__ = "0.1.0"

from keras_transformer import callbacks, generation, layers, models, presets, saving, training  # noqa: E402
from keras_transformer.models import (  # noqa: E402
    DecoderOnlyTransformer,
    EncoderDecoderTransformer,
    EncoderOnlyTransformer,
)

__all__ = [
    "DecoderOnlyTransformer",
    "EncoderDecoderTransformer",
    "EncoderOnlyTransformer",
    "__version__",
    "callbacks",
    "generation",
    "layers",
    "models",
    "presets",
    "saving",
    "training",
]
