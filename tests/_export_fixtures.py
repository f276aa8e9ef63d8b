"""Tiny models for the export tests: functional models from our layers, a user-defined layer,
a subclassed model that was never called, and the three model families."""

import os

import keras
import numpy as np
from keras import ops

from keras_transformer import layers

VOCAB = 50
MAX_LENGTH = 12


@keras.saving.register_keras_serializable(package="export_tests")
class GatedResidual(keras.layers.Layer):
    """A user-defined layer: `x + sigmoid(x W) * x`, so that export must trace user code."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        self.gate = self.add_weight(name="gate", shape=(input_shape[-1], input_shape[-1]))
        self.built = True

    def call(self, x):
        return x + ops.sigmoid(ops.matmul(x, self.gate)) * x


def randomize(model, scale=0.3, seed=0):
    """Random weights everywhere (LayerNorm gains included) so that no initialiser hides a bug."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(scale=scale, size=weight.shape).astype(weight.dtype))
    return model


def encoder_with_user_layer(d_model=16):
    """Functional: ids -> TokenAndPositionEmbedding(learned, 12) -> EncoderBlock -> GatedResidual -> logits."""
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = layers.TokenAndPositionEmbedding(VOCAB, d_model, max_length=MAX_LENGTH, positional="learned",
                                         mask_zero=True)(ids)
    x = layers.EncoderBlock(2, 2 * d_model, dropout=0.0)(x)
    x = GatedResidual(name="gated_residual")(x)
    logits = keras.layers.Dense(7, name="logits")(x)
    return randomize(keras.Model({"token_ids": ids}, logits, name="tiny_encoder"))


def seq2seq_from_layers(d_model=16):
    """Functional encoder-decoder with two inputs and two outputs (logits, encoder_states)."""
    enc = keras.Input((None,), dtype="int32", name="encoder_token_ids")
    dec = keras.Input((None,), dtype="int32", name="decoder_token_ids")
    embed = layers.TokenAndPositionEmbedding(VOCAB, d_model, mask_zero=True)
    memory = layers.EncoderBlock(2, 2 * d_model, dropout=0.0)(embed(enc))
    memory = keras.layers.Activation("linear", name="encoder_states")(memory)
    x = layers.DecoderBlock(2, 2 * d_model, dropout=0.0)(embed(dec), memory)
    logits = keras.layers.Dense(VOCAB, name="logits")(x)
    return randomize(keras.Model({"encoder_token_ids": enc, "decoder_token_ids": dec},
                                 {"logits": logits, "encoder_states": memory}, name="tiny_seq2seq"))


class NeverCalledClassifier(keras.Model):
    """A subclassed model with its own call; export must build it from `input_signature`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = layers.TokenAndPositionEmbedding(VOCAB, 16)
        self.block = layers.EncoderBlock(2, 32, dropout=0.0)
        self.user = GatedResidual()
        self.head = keras.layers.Dense(3)

    def call(self, token_ids, training=None):
        x = self.user(self.block(self.embedding(token_ids), training=training))
        return self.head(ops.mean(x, axis=1))


def family_models():
    """`{name: tiny model}` of each keras_transformer.models family (d_model 16, 1 layer)."""
    from keras_transformer import models

    common = dict(vocab_size=VOCAB, d_model=16, num_heads=2, d_ff=32, dropout=0.0)
    return {
        "encoder_only": models.EncoderOnlyTransformer(num_layers=1, max_length=MAX_LENGTH,
                                                      positional="learned", **common),
        "decoder_only": models.DecoderOnlyTransformer(num_layers=1, **common),
        "encoder_decoder": models.EncoderDecoderTransformer(num_encoder_layers=1, num_decoder_layers=1, **common),
    }


def leftovers(directory):
    """Hidden staging entries an export might leave behind (there must be none)."""
    return [name for name in os.listdir(directory) if name.startswith(".")]
