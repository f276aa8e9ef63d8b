"""Per-layer ONNX emitters against the Keras layers they replace (tiny sizes, CPU onnxruntime)."""

import keras
import numpy as np
import pytest

from export.native.blocks import ResidualStream, emit_decoder_block, emit_encoder_block
from export.native.graph import GraphBuilder
from export.native.layers import (
    ATTENTION_KINDS,
    emit_attention,
    emit_attention_masks,
    emit_feed_forward,
    emit_key_valid,
    emit_layer_norm,
    emit_positions,
    emit_tied_logits,
    emit_token_and_position_embedding,
)
from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    FeedForward,
    MultiHeadAttention,
    TokenAndPositionEmbedding,
    padding_mask,
)
from tests._native_helpers import run_onnx

ATOL = 1e-4
D_MODEL = 16


def _run(build, feeds, output_dtype="float32"):
    """Build a graph with `build(g, *input_names) -> output` and run it on `feeds`."""
    g = GraphBuilder("layer_test")
    names = [g.input(name, value.dtype.name, [None] * value.ndim) for name, value in feeds.items()]
    g.output(build(g, *names), "y", output_dtype, [None] * 3)
    return run_onnx(g.model(), feeds)[0]


def _with_bias(g, y, bias):
    """Emitters return a sub-layer's output and its pending bias (folded into the residual)."""
    return y if bias is None else g.op("Add", y, bias)


def _hidden(batch=2, length=5):
    return np.random.default_rng(0).normal(size=(batch, length, D_MODEL)).astype("float32")


def _token_ids(batch=2, length=6, vocab=30, pad_tail=True):
    ids = np.random.default_rng(1).integers(1, vocab, size=(batch, length)).astype("int32")
    if pad_tail:
        ids[1, -2:] = 0
    return ids


def test_layer_norm_matches_keras():
    layer = keras.layers.LayerNormalization(epsilon=1e-6)
    x = _hidden()
    layer.build(x.shape)
    layer.gamma.assign(np.random.default_rng(2).normal(size=D_MODEL))
    layer.beta.assign(np.random.default_rng(3).normal(size=D_MODEL))
    got = _run(lambda g, x_: emit_layer_norm(g, layer, x_), {"x": x})
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(layer(x)), atol=ATOL)


@pytest.mark.parametrize("activation,fused", [("relu", True), ("gelu", True), ("gelu", False), ("silu", True)])
def test_feed_forward_matches_keras(activation, fused):
    layer = FeedForward(d_ff=32, activation=activation)
    x = _hidden()
    expected = keras.ops.convert_to_numpy(layer(x))
    got = _run(lambda g, x_: _with_bias(g, *emit_feed_forward(g, layer, x_, fused=fused)), {"x": x})
    np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
@pytest.mark.parametrize("length", [1, 7, 40])
def test_embedding_matches_keras_for_any_length(positional, length):
    layer = TokenAndPositionEmbedding(vocab_size=30, d_model=D_MODEL, max_length=64, positional=positional)
    ids = _token_ids(length=length, pad_tail=False)
    expected = keras.ops.convert_to_numpy(layer(ids))

    def build(g, ids_):
        return emit_token_and_position_embedding(g, layer, ids_, emit_positions(g, ids_))

    np.testing.assert_allclose(_run(build, {"ids": ids}), expected, atol=ATOL)


def test_embedding_with_start_index_and_tied_logits_match_keras():
    layer = TokenAndPositionEmbedding(vocab_size=30, d_model=D_MODEL)
    ids = _token_ids(length=3, pad_tail=False)
    expected = keras.ops.convert_to_numpy(layer(layer(ids, start_index=9), reverse=True))

    def build(g, ids_, start_):
        x = emit_token_and_position_embedding(g, layer, ids_, emit_positions(g, ids_, start_))
        return emit_tied_logits(g, layer, x)

    got = _run(build, {"ids": ids, "start": np.array(9, "int64")})
    np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_with_padding_matches_keras(kind, causal):
    layer = MultiHeadAttention(num_heads=2)
    ids = _token_ids(length=5)
    ids[0, 0] = 0  # a padded first key: with causality that query row is fully masked
    x = _hidden(length=5)
    mask = padding_mask(ids)[:, None, :]
    expected = keras.ops.convert_to_numpy(layer(x, attention_mask=mask, use_causal_mask=causal))

    def build(g, x_, ids_):
        masks = emit_attention_masks(g, kind, ids_, emit_key_valid(g, ids_, 0), causal)
        return _with_bias(g, *emit_attention(g, layer, x_, kind=kind, **masks))

    np.testing.assert_allclose(_run(build, {"x": x, "ids": ids}), expected, atol=ATOL)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_cross_attention_matches_keras(kind):
    layer = MultiHeadAttention(num_heads=4)
    x, memory = _hidden(length=3), _hidden(length=6) * 0.5
    ids = _token_ids(length=6)
    expected = keras.ops.convert_to_numpy(layer(x, memory, attention_mask=padding_mask(ids)[:, None, :]))

    def build(g, x_, m_, ids_):
        masks = emit_attention_masks(g, kind, ids_, emit_key_valid(g, ids_, 0))
        return _with_bias(g, *emit_attention(g, layer, x_, kind=kind, memory=m_, **masks))

    np.testing.assert_allclose(_run(build, {"x": x, "m": memory, "ids": ids}), expected, atol=ATOL)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_matches_keras(kind, norm_first):
    block = EncoderBlock(num_heads=2, d_ff=32, norm_first=norm_first, activation="gelu")
    x, ids = _hidden(length=6), _token_ids(length=6)
    expected = keras.ops.convert_to_numpy(block(x, padding_mask=padding_mask(ids)))

    def build(g, x_, ids_):
        masks = emit_attention_masks(g, kind, ids_, emit_key_valid(g, ids_, 0))
        stream = ResidualStream(g, x_, fused=kind == "fused")
        emit_encoder_block(g, block, stream, kind, masks)
        return stream.value()

    np.testing.assert_allclose(_run(build, {"x": x, "ids": ids}), expected, atol=ATOL)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_matches_keras(kind, norm_first):
    block = DecoderBlock(num_heads=2, d_ff=32, norm_first=norm_first)
    x, memory = _hidden(length=4), _hidden(length=6) * 0.3
    ids, memory_ids = _token_ids(length=4), _token_ids(length=6)
    expected = keras.ops.convert_to_numpy(block(x, memory, padding_mask=padding_mask(ids), encoder_padding_mask=padding_mask(memory_ids)))

    def build(g, x_, m_, ids_, mids_):
        self_masks = emit_attention_masks(g, kind, ids_, emit_key_valid(g, ids_, 0), causal=True)
        cross_masks = emit_attention_masks(g, kind, ids_, emit_key_valid(g, mids_, 0))
        stream = ResidualStream(g, x_, fused=kind == "fused")
        emit_decoder_block(g, block, stream, kind, self_masks, m_, cross_masks)
        return stream.value()

    got = _run(build, {"x": x, "m": memory, "ids": ids, "mids": memory_ids})
    np.testing.assert_allclose(got, expected, atol=ATOL)
