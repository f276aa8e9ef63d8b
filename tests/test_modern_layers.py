"""The modern-decoder pieces (rotary, RMS norm, gated feed-forward, grouped-query attention,
additive bias, tanh GELU) against float64 NumPy references, and their cache equivalence."""

import keras
import numpy as np
import pytest
from keras import ops

import _layers_fixtures as ref
from keras_transformer.layers import (
    CacheSpec,
    DecoderBlock,
    FeedForward,
    MultiHeadAttention,
    RotaryEmbedding,
    gelu_approximate,
)

RNG = np.random.default_rng(11)


def normal(*shape):
    return RNG.normal(size=shape).astype("float32")


@pytest.mark.parametrize("start,theta,factor", [(0, 10000.0, 1.0), (5, 500000.0, 1.0), (3, 10000.0, 4.0)])
def test_rotary_matches_numpy_pair_rotation(start, theta, factor):
    x = normal(2, 3, 6, 8)
    got = RotaryEmbedding(theta, factor)(x, start_index=start)
    expected = ref.rotary(x, np.arange(start, start + 6), theta, factor)
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, atol=1e-5)


def test_rotary_position_ids_per_row_and_relative_property():
    x = normal(2, 1, 4, 8)
    positions = np.array([[0, 1, 2, 3], [7, 8, 9, 10]], "int32")
    got = ops.convert_to_numpy(RotaryEmbedding()(x, position_ids=positions))
    np.testing.assert_allclose(got, ref.rotary(x, positions), atol=1e-5)
    # q.k depends only on the position difference: shifting both by 7 keeps the dot products.
    q, k = normal(1, 1, 1, 8), normal(1, 1, 1, 8)
    rope = RotaryEmbedding()
    dot = lambda a, b: float(np.sum(ops.convert_to_numpy(a) * ops.convert_to_numpy(b)))  # noqa: E731
    assert dot(rope(q, start_index=5), rope(k, start_index=2)) == pytest.approx(
        dot(rope(q, start_index=12), rope(k, start_index=9)), abs=1e-4)


def test_rotary_rejects_odd_width_and_bad_base():
    with pytest.raises(ValueError, match="even last dimension"):
        RotaryEmbedding()(normal(1, 2, 3, 5))
    with pytest.raises(ValueError, match="max_wavelength"):
        RotaryEmbedding(max_wavelength=-1)


def test_rms_norm_matches_numpy():
    layer = keras.layers.RMSNormalization(epsilon=1e-5)
    x = normal(2, 5, 16)
    layer(x)
    ref.randomize(layer)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), ref.rms_norm(layer, x), rtol=1e-4, atol=1e-5)


def _silu(h):
    return h / (1.0 + np.exp(-h))


@pytest.mark.parametrize("gated,use_bias", [(True, False), (True, True), (False, False)])
def test_gated_feed_forward_matches_numpy(gated, use_bias):
    layer = FeedForward(24, activation="silu", gated=gated, use_bias=use_bias)
    x = normal(2, 5, 16)
    layer(x)
    ref.randomize(layer)
    expected = ref.feed_forward(layer, x, activation=_silu)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-5)
    assert use_bias == any("bias" in w.path for w in layer.weights)


def test_gelu_approximate_is_the_tanh_form_and_round_trips():
    x = np.linspace(-4, 4, 33).astype("float32")
    tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(ops.convert_to_numpy(gelu_approximate(x)), tanh_form, atol=1e-6)
    layer = FeedForward(8, activation="gelu_approximate")
    clone = FeedForward.from_config(layer.get_config())
    assert clone.get_config()["activation"] == "gelu_approximate"
    assert np.abs(tanh_form - ops.convert_to_numpy(keras.activations.gelu(x))).max() > 1e-4  # erf differs


@pytest.mark.parametrize("heads,kv_heads,rotary", [(4, 2, None), (4, 1, 10000.0), (4, 4, 10000.0)])
def test_grouped_query_and_rotary_attention_match_numpy(heads, kv_heads, rotary):
    layer = MultiHeadAttention(heads, num_key_value_heads=kv_heads, rotary_max_wavelength=rotary)
    x = normal(2, 5, 16)
    mask = RNG.random((2, 5, 5)) > 0.3
    mask[..., 0] = True
    layer(x)
    ref.randomize(layer)
    out, scores = layer(x, attention_mask=mask, return_attention_scores=True)
    expected, expected_scores = ref.multi_head_attention(layer, x, mask=mask)
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(scores), expected_scores, rtol=1e-4, atol=1e-6)
    assert tuple(layer.key_dense.kernel.shape) == (16, kv_heads, 4)


def test_additive_bias_and_scale_match_numpy():
    layer = MultiHeadAttention(2, scale=0.3, use_bias=False)
    x = normal(2, 4, 8)
    bias = normal(1, 2, 4, 4)
    layer(x)
    ref.randomize(layer)
    out = layer(x, attention_bias=bias, use_causal_mask=True)
    expected, _ = ref.multi_head_attention(layer, x, mask=np.tril(np.ones((4, 4), bool)), bias=bias)
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-5)


def test_cached_decoding_equals_full_pass_with_gqa_and_rotary():
    block = DecoderBlock(4, 32, dropout=0.0, cross_attention=False, num_key_value_heads=2, norm_first=True,
                         normalization="rms_norm", use_bias=False, gated_feed_forward=True, activation="silu",
                         rotary_max_wavelength=10000.0)
    x = normal(2, 7, 16)
    full = ops.convert_to_numpy(block(x))
    ref.randomize(block)
    full = ops.convert_to_numpy(block(x))
    spec = block.self_attention.cache_spec()
    assert spec == CacheSpec(1, 2, 4, "float32")
    (cache,) = spec.zeros(2, 7)
    outputs = []
    for start, stop in ((0, 3), (3, 4), (4, 7)):  # a prompt, then one token, then three
        y, cache = block(x[:, start:stop], cache=cache, cache_index=start)
        outputs.append(ops.convert_to_numpy(y))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)
    assert tuple(cache.shape) == (2, 2, 2, 7, 4)  # only the key/value heads are cached


def test_bad_modern_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_key_value_heads.*must divide"):
        MultiHeadAttention(4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="scale"):
        MultiHeadAttention(4, scale=0)
    with pytest.raises(ValueError, match="normalization"):
        DecoderBlock(2, 8, normalization="batch_norm")
    layer = MultiHeadAttention(4, num_key_value_heads=2)
    layer(normal(1, 3, 16))
    with pytest.raises(ValueError, match="`cache` must have shape"):
        layer(normal(1, 1, 16), cache=np.zeros((1, 2, 4, 5, 4), "float32"), cache_index=0)  # 4 != 2 kv heads
