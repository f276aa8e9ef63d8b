"""Transformer models: functional `keras.Model` subclasses built from `keras_transformer.layers`."""

from keras_transformer import backend as _backend

_backend.check_installed()  # before Keras: a missing backend gets the install command

from keras_transformer.models.decoder_only import DecoderOnlyTransformer
from keras_transformer.models.encoder_decoder import EncoderDecoderTransformer
from keras_transformer.models.encoder_only import EncoderOnlyTransformer

__all__ = ["DecoderOnlyTransformer", "EncoderDecoderTransformer", "EncoderOnlyTransformer"]
