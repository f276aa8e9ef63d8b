"""Each layer's arithmetic against a float64 NumPy version of the paper's formulas."""

import keras
import numpy as np
import pytest
from keras import ops

import _layers_fixtures as ref
from keras_transformer.layers import (
    EncoderBlock,
    FeedForward,
    MultiHeadAttention,
    PositionalEncoding,
    TokenAndPositionEmbedding,
    keras_mask_of,
    sinusoidal_encoding,
)

RNG = np.random.default_rng(7)


def normal(*shape):
    return RNG.normal(size=shape).astype("float32")


# -- positional encoding ----------------------------------------------------------------------


@pytest.mark.parametrize("width", [16, 7])
def test_sinusoidal_values_match_the_paper(width):
    x = normal(2, 9, width)
    out = PositionalEncoding()(x)
    np.testing.assert_allclose(out - x, np.broadcast_to(ref.sinusoid(9, width), x.shape), atol=1e-5)


def test_sinusoidal_works_past_any_length_and_start_index_shifts_positions():
    long = ops.convert_to_numpy(sinusoidal_encoding(1200, 8))
    np.testing.assert_allclose(long, ref.sinusoid(1200, 8), atol=2e-4)  # float32 angles ~1e3
    layer = PositionalEncoding()
    x = np.zeros((1, 4, 8), "float32")
    shifted = ops.convert_to_numpy(layer(x, start_index=1196))[0]
    np.testing.assert_allclose(shifted, long[1196:1200], atol=1e-6)


def test_custom_max_wavelength():
    out = ops.convert_to_numpy(PositionalEncoding(max_wavelength=100)(np.zeros((1, 5, 6), "float32")))
    np.testing.assert_allclose(out[0], ref.sinusoid(5, 6, base=100.0), atol=1e-6)


def test_learned_positions_are_a_table_slice_and_refuse_longer_inputs():
    layer = PositionalEncoding(mode="learned", max_length=6)
    x = normal(2, 4, 8)
    out = ops.convert_to_numpy(layer(x, start_index=2))
    table = layer.position_embeddings.numpy()
    np.testing.assert_allclose(out, x + table[2:6], atol=1e-6)
    with pytest.raises(ValueError, match=r"max_length=6.*length 5.*start_index=2"):
        layer(normal(1, 5, 8), start_index=2)
    with pytest.raises(ValueError, match=r"max_length=6.*length 7"):
        layer(normal(1, 7, 8))


def test_positional_encoding_passes_the_keras_mask_through():
    ids = np.array([[3, 4, 0, 0]])
    embedded = keras.layers.Embedding(10, 8, mask_zero=True)(ids)
    out = PositionalEncoding()(embedded)
    np.testing.assert_array_equal(ops.convert_to_numpy(out._keras_mask), ids != 0)


# -- token and position embedding -------------------------------------------------------------


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_token_and_position_embedding_is_scaled_embedding_plus_positions(positional):
    layer = TokenAndPositionEmbedding(30, 8, max_length=10, positional=positional, dropout=0.5)
    ids = np.array([[1, 5, 29, 0], [7, 7, 2, 3]])
    out = ops.convert_to_numpy(layer(ids, start_index=3))  # training=None: dropout inactive
    table = layer.embeddings.numpy()
    positions = layer.position_encoding.encoding(4, 3)
    np.testing.assert_allclose(out, table[ids] * np.sqrt(8) + ops.convert_to_numpy(positions), atol=1e-5)
    dropped = ops.convert_to_numpy(layer(ids, training=True))
    assert (dropped == 0).mean() > 0.2  # dropout applies to the sum when training


def test_token_and_position_embedding_mask_and_reverse():
    layer = TokenAndPositionEmbedding(20, 8, mask_zero=True, scale=False)
    ids = np.array([[4, 9, 0]])
    out = layer(ids)
    np.testing.assert_array_equal(ops.convert_to_numpy(out._keras_mask), ids != 0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(out)[0], layer.embeddings.numpy()[ids[0]] + ref.sinusoid(3, 8), atol=1e-5
    )
    hidden = normal(2, 3, 8)
    logits = ops.convert_to_numpy(layer(hidden, reverse=True))
    np.testing.assert_allclose(logits, hidden @ layer.embeddings.numpy().T, atol=1e-5)
    assert keras_mask_of(TokenAndPositionEmbedding(20, 8)(ids)) is None  # mask_zero=False


# -- multi-head attention ---------------------------------------------------------------------


def _mha(num_heads=2, **kwargs):
    return MultiHeadAttention(num_heads, **kwargs)


def _check_against_numpy(layer, query, value=None, key=None, mask=None, **call_kwargs):
    out, scores = layer(query, value, key, attention_mask=mask, return_attention_scores=True, **call_kwargs)
    ref.randomize(layer)
    out, scores = layer(query, value, key, attention_mask=mask, return_attention_scores=True, **call_kwargs)
    expected, expected_scores = ref.multi_head_attention(layer, query, value, key, mask)
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(scores), expected_scores, rtol=1e-4, atol=1e-6)


def test_self_attention_matches_numpy():
    _check_against_numpy(_mha(4), normal(2, 5, 16))
    layer = _mha(2)
    layer(normal(1, 2, 16))
    assert layer.head_dim == 8  # key_dim defaults to d_model // num_heads


@pytest.mark.parametrize("mask_shape", [(2, 5, 5), (1, 5, 5), (5, 5)])
def test_masked_self_attention_matches_numpy(mask_shape):
    mask = RNG.random(mask_shape) > 0.4
    mask[..., 0] = True  # every row keeps at least one key (a fully masked row has no paper value)
    _check_against_numpy(_mha(2), normal(2, 5, 16), mask=mask)


def test_causal_self_attention_matches_numpy():
    layer = _mha(2)
    x = normal(2, 6, 16)
    layer(x)
    ref.randomize(layer)
    out = layer(x, use_causal_mask=True)
    expected, _ = ref.multi_head_attention(layer, x, mask=np.tril(np.ones((6, 6), bool)))
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-5)


def test_cross_attention_with_different_lengths_key_not_value_and_own_key_dim():
    query, value, key = normal(2, 3, 16), normal(2, 7, 12), normal(2, 7, 10)
    mask = RNG.random((2, 3, 7)) > 0.5
    mask[..., -1] = True
    layer = _mha(4, key_dim=5)  # 4 * 5 != 16: key_dim need not divide d_model
    _check_against_numpy(layer, query, value, key, mask=mask)
    assert tuple(layer.key_dense.kernel.shape) == (10, 4, 5)
    assert tuple(layer.value_dense.kernel.shape) == (12, 4, 5)
    assert tuple(layer.output_dense.kernel.shape) == (4, 5, 16)


def test_attention_without_bias_matches_numpy():
    layer = _mha(2, use_bias=False)
    _check_against_numpy(layer, normal(1, 4, 8), normal(1, 5, 8))
    assert not any("bias" in w.path for w in layer.weights)


def test_fully_masked_rows_are_finite():
    layer = _mha(2)
    mask = np.ones((1, 4, 4), bool)
    mask[0, 1] = False
    out = ops.convert_to_numpy(layer(normal(1, 4, 8), attention_mask=mask))
    assert np.isfinite(out).all()
    out = ops.convert_to_numpy(layer(normal(1, 4, 8), attention_mask=np.zeros((1, 4, 4), bool)))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_fully_masked_rows_are_finite_in_half_precision(policy):
    keras.config.set_dtype_policy(policy)
    layer = _mha(2)
    mask = np.ones((2, 4, 4), bool)
    mask[:, 2] = False
    x = normal(2, 4, 8) * 30.0  # large logits: overflow-prone in float16 before the float32 softmax
    out, scores = layer(x, attention_mask=mask, return_attention_scores=True)
    dtype = keras.backend.standardize_dtype  # torch.float16 -> "float16"
    assert dtype(out.dtype) == policy.split("_")[1] and scores.dtype == out.dtype
    assert np.isfinite(ops.convert_to_numpy(ops.cast(out, "float32"))).all()
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(scores, "float32")).sum(-1), 1.0, atol=1e-2)


# -- feed-forward and blocks ------------------------------------------------------------------


def test_feed_forward_matches_numpy_and_keeps_width():
    layer = FeedForward(24)
    x = normal(2, 5, 12)
    layer(x)
    ref.randomize(layer)
    out = ops.convert_to_numpy(layer(x))
    assert out.shape == x.shape
    np.testing.assert_allclose(out, ref.feed_forward(layer, x), rtol=1e-4, atol=1e-5)
    assert ops.convert_to_numpy(layer(x[0])).shape == (5, 12)  # rank 2 works too


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_matches_numpy(norm_first):
    block = EncoderBlock(2, 32, dropout=0.3, norm_first=norm_first)
    x = normal(2, 5, 16)
    block(x)
    ref.randomize(block)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out = ops.convert_to_numpy(block(x, padding_mask=mask))
    expected = ref.encoder_block(block, x, mask=mask[:, None, :])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
