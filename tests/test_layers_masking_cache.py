"""Causality, padding (explicit and Keras masks) and key/value-cache equivalence of the layers."""

import keras
import numpy as np
import pytest
from keras import ops

import _layers_fixtures as ref
from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    MultiHeadAttention,
    TokenAndPositionEmbedding,
)

RNG = np.random.default_rng(11)
D_MODEL, HEADS, MAX_LENGTH = 16, 2, 8


def normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def numpy(x):
    return ops.convert_to_numpy(ops.cast(x, "float32"))


def empty_cache(batch=2, max_length=MAX_LENGTH, dtype="float32"):
    return np.zeros((batch, 2, HEADS, max_length, D_MODEL // HEADS), dtype)


# -- causality --------------------------------------------------------------------------------


def _assert_causal(function, x, split=3):
    changed = x.copy()
    changed[:, split:] = normal(*changed[:, split:].shape)
    before, after = numpy(function(x)), numpy(function(changed))
    np.testing.assert_allclose(before[:, :split], after[:, :split], atol=1e-6)
    assert np.abs(before[:, split:] - after[:, split:]).max() > 1e-3  # the change did reach later outputs


def test_causal_attention_ignores_future_tokens():
    layer = MultiHeadAttention(HEADS)
    _assert_causal(lambda x: layer(x, use_causal_mask=True), normal(2, 6, D_MODEL))


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_ignores_future_tokens(norm_first):
    block = DecoderBlock(HEADS, 32, norm_first=norm_first)
    encoded = normal(2, 5, D_MODEL)
    _assert_causal(lambda x: block(x, encoded), normal(2, 6, D_MODEL))
    decoder_only = DecoderBlock(HEADS, 32, cross_attention=False, norm_first=norm_first)
    _assert_causal(decoder_only, normal(2, 6, D_MODEL), split=4)


# -- padding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_ignores_padded_content(norm_first):
    block = EncoderBlock(HEADS, 32, norm_first=norm_first)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
    x = normal(2, 6, D_MODEL)
    changed = np.where(mask[..., None], x, normal(2, 6, D_MODEL))
    before, after = numpy(block(x, padding_mask=mask)), numpy(block(changed, padding_mask=mask))
    np.testing.assert_allclose(before[mask], after[mask], atol=1e-5)
    unmasked = numpy(block(changed))
    assert np.abs(unmasked[mask] - before[mask]).max() > 1e-3  # without the mask it would differ


def _functional(mask_zero, decoder_only=False):
    ids = keras.Input((None,), dtype="int32")
    x = TokenAndPositionEmbedding(30, D_MODEL, mask_zero=mask_zero, name="embed")(ids)
    if decoder_only:
        x = DecoderBlock(HEADS, 32, cross_attention=False)(x)
    else:
        x = EncoderBlock(HEADS, 32)(x)
        x = EncoderBlock(HEADS, 32, norm_first=True)(x)
    return keras.Model(ids, x)


def test_keras_mask_from_embedding_is_honoured_in_a_functional_model():
    model = _functional(mask_zero=True)
    padded = np.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]], "int32")
    real = numpy(model(padded[:1, :3]))[0]  # the same sentence without its padding
    np.testing.assert_allclose(numpy(model(padded))[0, :3], real, atol=1e-5)
    np.testing.assert_allclose(model.predict(padded, verbose=0)[0, :3], real, atol=1e-5)
    unmasked = _functional(mask_zero=False)
    unmasked.set_weights(model.get_weights())
    assert np.abs(numpy(unmasked(padded))[0, :3] - real).max() > 1e-3


def test_keras_mask_reaches_a_decoder_block_in_a_functional_model():
    model = _functional(mask_zero=True, decoder_only=True)
    ids = np.array([[5, 0, 7, 8, 0], [8, 9, 10, 11, 12]], "int32")  # a pad the causal mask keeps
    embed, block = model.get_layer("embed"), model.layers[-1]
    plain = ops.convert_to_tensor(numpy(embed(ids)))  # same values, no Keras mask attached
    explicit = numpy(block(plain, padding_mask=ids != 0))
    real = ids != 0
    np.testing.assert_allclose(numpy(model(ids))[real], explicit[real], atol=1e-5)
    np.testing.assert_allclose(model.predict(ids, verbose=0)[real], explicit[real], atol=1e-5)
    assert np.abs(numpy(block(plain))[real] - explicit[real]).max() > 1e-3


def test_keras_mask_of_encoder_outputs_is_honoured_by_cross_attention():
    enc_ids, dec_ids = keras.Input((None,), dtype="int32"), keras.Input((None,), dtype="int32")
    encoded = EncoderBlock(HEADS, 32)(TokenAndPositionEmbedding(30, D_MODEL, mask_zero=True)(enc_ids))
    decoded = DecoderBlock(HEADS, 32)(TokenAndPositionEmbedding(30, D_MODEL)(dec_ids), encoded)
    model = keras.Model([enc_ids, dec_ids], decoded)
    source, target = np.array([[3, 4, 5, 0, 0]], "int32"), np.array([[6, 7, 8]], "int32")
    np.testing.assert_allclose(
        numpy(model([source, target])), numpy(model([source[:, :3], target])), atol=1e-5
    )


def test_attention_layer_reads_keras_masks_in_a_functional_model():
    ids, other = keras.Input((None,), dtype="int32"), keras.Input((None,), dtype="int32")
    embed = keras.layers.Embedding(30, D_MODEL, mask_zero=True)
    query, value = embed(ids), embed(other)
    attention = MultiHeadAttention(HEADS)
    model = keras.Model([ids, other], [attention(query), attention(query, value)])
    source, target = np.array([[4, 5, 0]], "int32"), np.array([[6, 7, 8, 0, 0]], "int32")
    self_out, cross_out = model.predict([source, target], verbose=0)
    trimmed_self, trimmed_cross = model.predict([source[:, :2], target[:, :3]], verbose=0)
    np.testing.assert_allclose(self_out[:, :2], trimmed_self, atol=1e-5)
    np.testing.assert_allclose(cross_out[:, :2], trimmed_cross[:, :2], atol=1e-5)


def test_explicit_padding_mask_wins_over_the_keras_mask():
    block = EncoderBlock(HEADS, 32)
    embed = TokenAndPositionEmbedding(30, D_MODEL, mask_zero=True)
    x = embed(np.array([[5, 6, 0, 0]], "int32"))
    all_real = np.ones((1, 4), bool)
    explicit = numpy(block(x, padding_mask=all_real))
    np.testing.assert_allclose(explicit, numpy(block(ops.convert_to_tensor(numpy(x)))), atol=1e-6)
    assert np.abs(explicit - numpy(block(x))).max() > 1e-3


# -- caches -----------------------------------------------------------------------------------


def _decode(step, x, chunks):
    """Feed `x` in chunks of the given sizes through `step(chunk, index)`; concat the outputs."""
    outputs, index = [], 0
    for size in chunks:
        outputs.append(numpy(step(x[:, index : index + size], index)))
        index += size
    return np.concatenate(outputs, axis=1)


@pytest.mark.parametrize("chunks", [[1] * 6, [3, 1, 2]])
def test_cached_attention_equals_the_full_causal_pass(chunks):
    layer = MultiHeadAttention(HEADS)
    x = normal(2, 6, D_MODEL)
    full = numpy(layer(x, use_causal_mask=True))
    state = {"cache": empty_cache()}

    def step(chunk, index):
        out, state["cache"] = layer(chunk, cache=state["cache"], cache_index=index, use_causal_mask=True)
        return out

    np.testing.assert_allclose(_decode(step, x, chunks), full, atol=1e-5)


def test_non_causal_cache_attends_to_every_filled_position():
    layer = MultiHeadAttention(HEADS)
    x = normal(2, 6, D_MODEL)
    layer(x)
    ref.randomize(layer)
    cache = empty_cache()
    first, cache = layer(x[:, :4], cache=cache, cache_index=0)
    second, cache = layer(x[:, 4:], cache=cache, cache_index=4)
    filled = np.arange(6)[None, :] < np.array([4, 4, 4, 4, 6, 6])[:, None]  # query row -> keys
    expected, _ = ref.multi_head_attention(layer, x, mask=filled)
    np.testing.assert_allclose(np.concatenate([numpy(first), numpy(second)], 1), expected, atol=1e-5)


@pytest.mark.parametrize("cross_attention", [True, False])
@pytest.mark.parametrize("chunks", [[1] * 6, [4, 1, 1]])
def test_cached_decoder_block_equals_the_full_pass(cross_attention, chunks):
    block = DecoderBlock(HEADS, 32, cross_attention=cross_attention, norm_first=not cross_attention)
    x, encoded = normal(2, 6, D_MODEL), normal(2, 5, D_MODEL)
    encoder_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    kwargs = dict(encoder_outputs=encoded, encoder_padding_mask=encoder_mask) if cross_attention else {}
    full = numpy(block(x, **kwargs))
    if cross_attention:  # project the encoder output once, reuse it on every step
        kwargs = dict(
            cross_attention_cache=block.compute_cross_attention_cache(encoded),
            encoder_padding_mask=encoder_mask,
        )
    state = {"cache": empty_cache()}

    def step(chunk, index):
        out, state["cache"] = block(chunk, cache=state["cache"], cache_index=index, **kwargs)
        return out

    np.testing.assert_allclose(_decode(step, x, chunks), full, atol=1e-5)


def test_cached_decoding_with_a_padding_mask_over_cache_positions():
    block = DecoderBlock(HEADS, 32, cross_attention=False)
    x = normal(2, 5, D_MODEL)
    real = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool)  # second prompt left-padded
    full = numpy(block(x, padding_mask=real))
    cache_mask = np.concatenate([real, np.ones((2, MAX_LENGTH - 5), bool)], axis=1)
    state = {"cache": empty_cache()}

    def step(chunk, index):
        out, state["cache"] = block(chunk, padding_mask=cache_mask, cache=state["cache"], cache_index=index)
        return out

    decoded = _decode(step, x, [3, 1, 1])
    np.testing.assert_allclose(decoded[real], full[real], atol=1e-5)


@pytest.mark.tensorflow
def test_cached_decoding_inside_tf_function_with_dynamic_shapes():
    block = DecoderBlock(HEADS, 32)
    x, encoded = normal(2, 6, D_MODEL), normal(2, 5, D_MODEL)
    full = numpy(block(x, encoded))
    import tensorflow as tf

    cache_spec = tf.TensorSpec((None, 2, HEADS, None, D_MODEL // HEADS), tf.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None, D_MODEL), tf.float32),
            tf.TensorSpec((None, None, D_MODEL), tf.float32),
            cache_spec,
            tf.TensorSpec((), tf.int32),
        ]
    )
    def step(chunk, encoder_outputs, cache, index):
        cross = block.compute_cross_attention_cache(encoder_outputs)
        return block(chunk, cross_attention_cache=cross, cache=cache, cache_index=index)

    state = {"cache": empty_cache()}

    def run(chunk, index):
        out, state["cache"] = step(chunk, encoded, state["cache"], np.int32(index))
        return out

    np.testing.assert_allclose(_decode(run, x, [2, 1, 1, 1, 1]), full, atol=1e-5)
    assert step.experimental_get_tracing_count() == 1  # one graph for every length and index


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_float32_cache_under_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    block = DecoderBlock(HEADS, 32, cross_attention=False)
    x = normal(2, 4, D_MODEL)
    full = numpy(block(x))
    state = {"cache": empty_cache(dtype="float32")}

    def step(chunk, index):
        out, state["cache"] = block(chunk, cache=state["cache"], cache_index=index)
        dtypes = {keras.backend.standardize_dtype(t.dtype) for t in (out, state["cache"])}  # torch.bfloat16 -> "bfloat16"
        assert dtypes == {block.compute_dtype}
        return out

    decoded = _decode(step, x, [2, 1, 1])
    assert np.isfinite(decoded).all()
    np.testing.assert_allclose(decoded, full, atol=0.1)  # half-precision rounding only
