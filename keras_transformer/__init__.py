"""keras-transformer-zoo: transformer layers and models for Keras 3."""

__version__ = "0.1.0"

from keras_transformer import layers  # noqa: E402

__all__ = ["layers", "__version__"]
