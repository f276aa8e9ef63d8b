"""Config round trips, output shapes, and `.keras` save/load of models built from the layers."""

import keras
import numpy as np
import pytest
from keras import ops

import _layers_fixtures as ref
from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    FeedForward,
    MultiHeadAttention,
    PositionalEncoding,
    TokenAndPositionEmbedding,
)

CONFIGURED_LAYERS = [
    lambda: PositionalEncoding(),
    lambda: PositionalEncoding(mode="learned", max_length=9, max_wavelength=500, name="pe"),
    lambda: TokenAndPositionEmbedding(
        40, 16, max_length=12, positional="learned", scale=False, mask_zero=True, dropout=0.1
    ),
    lambda: MultiHeadAttention(4, key_dim=3, dropout=0.2, use_bias=False),
    lambda: FeedForward(32, activation="gelu", dropout=0.1),
    lambda: FeedForward(32, activation=keras.activations.silu),
    lambda: EncoderBlock(2, 32, dropout=0.2, activation="gelu", norm_first=True,
                         layer_norm_epsilon=1e-5, attention_dropout=0.1),
    lambda: DecoderBlock(2, 32, dropout=0.0, norm_first=True, cross_attention=False),
    lambda: DecoderBlock(4, 8, dtype="mixed_bfloat16"),
]


@pytest.mark.parametrize("make", CONFIGURED_LAYERS)
def test_get_config_round_trips_exactly(make):
    layer = make()
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


X = np.zeros((2, 5, 16), "float32")
CALLS = [
    (PositionalEncoding, {}, (X,), {}),
    (FeedForward, {"d_ff": 8}, (X,), {}),
    (EncoderBlock, {"num_heads": 2, "d_ff": 8}, (X,), {}),
    (DecoderBlock, {"num_heads": 2, "d_ff": 8}, (X, np.zeros((2, 3, 12), "float32")), {}),
    (DecoderBlock, {"num_heads": 2, "d_ff": 8, "cross_attention": False}, (X,),
     {"cache": np.zeros((2, 2, 2, 7, 8), "float32"), "cache_index": 0}),
    (MultiHeadAttention, {"num_heads": 2}, (X,), {}),
    (MultiHeadAttention, {"num_heads": 2}, (X, np.zeros((2, 3, 12), "float32")), {}),
    (MultiHeadAttention, {"num_heads": 2}, (X,),
     {"cache": np.zeros((2, 2, 2, 7, 8), "float32"), "cache_index": 0}),
    (TokenAndPositionEmbedding, {"vocab_size": 20, "d_model": 16}, (np.zeros((2, 5), "int32"),), {}),
]


def _shapes(structure):
    if isinstance(structure, (tuple, list)) and structure and not isinstance(structure[0], (int, type(None))):
        return tuple(_shapes(s) for s in structure)
    return tuple(getattr(structure, "shape", structure))


@pytest.mark.parametrize("cls,config,args,kwargs", CALLS)
def test_compute_output_shape_and_symbolic_spec_match_the_output(cls, config, args, kwargs):
    layer = cls(**config)
    actual = _shapes(layer(*args, **kwargs))
    shape_kwargs = {f"{k}_shape": v.shape for k, v in kwargs.items() if hasattr(v, "shape")}
    assert _shapes(layer.compute_output_shape(*[a.shape for a in args], **shape_kwargs)) == actual
    symbolic = [keras.KerasTensor(a.shape, dtype=a.dtype) for a in args]
    symbolic_kwargs = {k: keras.KerasTensor(v.shape, v.dtype) if hasattr(v, "shape") else v
                       for k, v in kwargs.items()}
    assert _shapes(cls(**config)(*symbolic, **symbolic_kwargs)) == actual


def test_attention_scores_spec_in_a_functional_model():
    query, value = keras.Input((4, 16)), keras.Input((6, 12))
    output, scores = MultiHeadAttention(2)(query, value, return_attention_scores=True)
    assert output.shape == (None, 4, 16) and scores.shape == (None, 2, 4, 6)


@keras.saving.register_keras_serializable(package="keras_transformer_tests")
class GatedEncoderBlock(EncoderBlock):
    """A user subclass: a learned gate between the block's input and output."""

    def build(self, input_shape):
        super().build(input_shape)
        self.gate = self.add_weight(name="gate", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x, padding_mask=None, attention_mask=None, training=None):
        y = super().call(x, padding_mask=padding_mask, attention_mask=attention_mask, training=training)
        gate = ops.sigmoid(ops.cast(self.gate, x.dtype))
        return gate * y + (1 - gate) * x


def _every_layer_model():
    enc_ids = keras.Input((None,), dtype="int32", name="enc_ids")
    dec_ids = keras.Input((None,), dtype="int32", name="dec_ids")
    embed = TokenAndPositionEmbedding(30, 16, max_length=10, positional="learned", mask_zero=True)
    encoded = EncoderBlock(2, 32)(embed(enc_ids))
    encoded = GatedEncoderBlock(2, 32, norm_first=True, name="gated")(encoded)
    encoded = keras.layers.Dense(24)(encoded)  # cross-attention source of another width
    x = PositionalEncoding()(TokenAndPositionEmbedding(30, 16, positional="sinusoidal")(dec_ids))
    x = DecoderBlock(2, 32)(x, encoded)
    x = DecoderBlock(2, 32, cross_attention=False, norm_first=True)(x)
    x = MultiHeadAttention(2, key_dim=4)(x, use_causal_mask=True)
    x = FeedForward(32)(x)
    logits = embed(x, reverse=True)
    return keras.Model([enc_ids, dec_ids], logits)


def test_keras_file_round_trip_of_a_model_using_every_layer(tmp_path):
    model = _every_layer_model()
    ref.randomize(model)
    data = [np.array([[1, 2, 3, 0], [4, 5, 6, 7]], "int32"), np.array([[8, 9, 1], [2, 3, 4]], "int32")]
    expected = ops.convert_to_numpy(model(data))  # eager: `predict` is covered elsewhere
    path = tmp_path / "every_layer.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.get_layer("gated"), GatedEncoderBlock)
    np.testing.assert_array_equal(ops.convert_to_numpy(restored(data)), expected)
    for saved, loaded in zip(model.weights, restored.weights):
        assert saved.path == loaded.path
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
