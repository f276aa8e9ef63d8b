"""Transformer layers for Keras 3 ("Attention Is All You Need", Vaswani et al. 2017)."""

from keras_transformer import backend as _backend

_backend.check_installed()  # before Keras: a missing backend gets the install command

from keras_transformer.layers.activations import gelu_approximate
from keras_transformer.layers.cache import CacheSpec
from keras_transformer.layers.decoder_block import DecoderBlock
from keras_transformer.layers.encoder_block import EncoderBlock
from keras_transformer.layers.feed_forward import FeedForward
from keras_transformer.layers.masks import causal_mask, keras_mask_of, merge_masks, padding_mask
from keras_transformer.layers.multi_head_attention import MultiHeadAttention
from keras_transformer.layers.output_bias import OutputBias
from keras_transformer.layers.positional_encoding import PositionalEncoding, sinusoidal_encoding
from keras_transformer.layers.rotary_embedding import RotaryEmbedding
from keras_transformer.layers.token_and_position_embedding import TokenAndPositionEmbedding

__all__ = [
    "CacheSpec",
    "DecoderBlock",
    "EncoderBlock",
    "FeedForward",
    "MultiHeadAttention",
    "OutputBias",
    "PositionalEncoding",
    "RotaryEmbedding",
    "TokenAndPositionEmbedding",
    "causal_mask",
    "gelu_approximate",
    "keras_mask_of",
    "merge_masks",
    "padding_mask",
    "sinusoidal_encoding",
]
