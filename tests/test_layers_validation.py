"""Bad arguments and inputs raise a ValueError that names the argument and the value received."""

import keras
import numpy as np
import pytest

from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    FeedForward,
    MultiHeadAttention,
    PositionalEncoding,
    TokenAndPositionEmbedding,
)


def zeros(*shape, dtype="float32"):
    return np.zeros(shape, dtype)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: PositionalEncoding(mode="rotary"), r"`mode`.*received mode='rotary'"),
        (lambda: PositionalEncoding(mode="learned"), r"`max_length`.*received max_length=None"),
        (lambda: PositionalEncoding(max_wavelength=1), r"`max_wavelength`.*received max_wavelength=1"),
        (lambda: TokenAndPositionEmbedding(0, 16), r"`vocab_size`.*received vocab_size=0"),
        (lambda: TokenAndPositionEmbedding(10, 16.5), r"`d_model`.*received d_model=16.5"),
        (lambda: TokenAndPositionEmbedding(10, 16, positional="alibi"), r"`positional`.*'alibi'"),
        (lambda: TokenAndPositionEmbedding(10, 16, positional="learned"), r"max_length=None"),
        (lambda: TokenAndPositionEmbedding(10, 16, dropout=1.0), r"`dropout`.*\[0, 1\).*dropout=1.0"),
        (lambda: MultiHeadAttention(0), r"`num_heads`.*received num_heads=0"),
        (lambda: MultiHeadAttention(2, key_dim=-4), r"`key_dim`.*received key_dim=-4"),
        (lambda: MultiHeadAttention(2, dropout=-0.1), r"`dropout`.*received dropout=-0.1"),
        (lambda: FeedForward(0), r"`d_ff`.*received d_ff=0"),
        (lambda: FeedForward(8, activation="swishy"), r"`activation`.*received activation='swishy'"),
        (lambda: FeedForward(8, dropout=1.5), r"`dropout`.*received dropout=1.5"),
        (lambda: EncoderBlock(2, 8, activation="swishy"), r"`activation`.*'swishy'"),
        (lambda: EncoderBlock(2, 8, dropout=1), r"`dropout`.*received dropout=1"),
        (lambda: EncoderBlock(2, 8, attention_dropout=-1.0), r"`attention_dropout`.*=-1.0"),
        (lambda: EncoderBlock(2, 8, layer_norm_epsilon=0), r"`layer_norm_epsilon`.*=0"),
        (lambda: DecoderBlock(2, -8), r"`d_ff`.*received d_ff=-8"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_d_model_not_divisible_by_num_heads():
    for layer in (MultiHeadAttention(3), EncoderBlock(3, 8), DecoderBlock(3, 8, cross_attention=False)):
        with pytest.raises(ValueError, match=r"d_model=10.*num_heads=3"):
            layer(zeros(1, 4, 10))
    assert MultiHeadAttention(3, key_dim=4)(zeros(1, 4, 10)).shape == (1, 4, 10)  # fine with key_dim


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: PositionalEncoding()(zeros(4, 16)), r"`inputs`.*rank 3.*\(4, 16\)"),
        (lambda: TokenAndPositionEmbedding(10, 8)(zeros(1, 4, 8, dtype="int32")), r"`inputs`.*rank 2"),
        (lambda: TokenAndPositionEmbedding(10, 8)(zeros(1, 4), reverse=True), r"`inputs`.*rank 3"),
        (lambda: MultiHeadAttention(2)(zeros(4, 8)), r"`query`.*rank 3.*\(4, 8\)"),
        (lambda: MultiHeadAttention(2)(zeros(1, 4, 8), zeros(1, 8)), r"`value`.*rank 3.*\(1, 8\)"),
        (lambda: MultiHeadAttention(2)(zeros(1, 4, 8), zeros(1, 5, 8), zeros(1, 6, 8)),
         r"`key`.*\(1, 6\)"),
        (lambda: FeedForward(8)(zeros(1, 2, 3, 8)), r"`inputs`.*rank 2 or 3"),
        (lambda: EncoderBlock(2, 8)(zeros(3, 8)), r"`x`.*rank 3.*\(3, 8\)"),
        (lambda: DecoderBlock(2, 8)(zeros(1, 3, 8), zeros(5, 8)), r"`encoder_outputs`.*rank 3"),
    ],
)
def test_wrong_ranks(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: MultiHeadAttention(2)(zeros(2, 4, 8), attention_mask=np.ones((2, 4, 5), bool)),
         r"`attention_mask`.*\(2, 4, 4\).*\(2, 4, 5\)"),
        (lambda: MultiHeadAttention(2)(zeros(2, 4, 8), attention_mask=np.ones((1, 2, 4, 4), bool)),
         r"`attention_mask`.*rank 2 or 3"),
        (lambda: EncoderBlock(2, 8)(zeros(2, 4, 8), padding_mask=np.ones((2, 5), bool)),
         r"`padding_mask`.*\(2, 4\).*\(2, 5\)"),
        (lambda: EncoderBlock(2, 8)(zeros(2, 4, 8), padding_mask=np.ones((2, 4, 4), bool)),
         r"`padding_mask`.*rank 2.*\(2, 4, 4\)"),
        (lambda: EncoderBlock(2, 8)(zeros(2, 4, 8), attention_mask=np.ones((3, 4, 4), bool)),
         r"`attention_mask`.*\(3, 4, 4\)"),
        (lambda: DecoderBlock(2, 8)(zeros(2, 4, 8), zeros(2, 6, 8), encoder_padding_mask=np.ones((2, 4), bool)),
         r"`encoder_padding_mask`.*\(2, 6\).*\(2, 4\)"),
        (lambda: DecoderBlock(2, 8, cross_attention=False)(
            zeros(2, 1, 8), padding_mask=np.ones((2, 1), bool), cache=zeros(2, 2, 2, 6, 4), cache_index=0),
         r"`padding_mask`.*\(2, 6\).*\(2, 1\)"),
    ],
)
def test_mask_shapes_that_do_not_match(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_caches():
    mha = MultiHeadAttention(2)
    with pytest.raises(ValueError, match=r"`cache_index`.*without a `cache`"):
        mha(zeros(1, 1, 8), cache_index=0)
    with pytest.raises(ValueError, match=r"`cache`.*\(1, 2, 3, 6, 4\)"):
        mha(zeros(1, 1, 8), cache=zeros(1, 2, 3, 6, 4), cache_index=0)  # 3 heads, layer has 2
    with pytest.raises(ValueError, match=r"`cache`.*rank 5"):
        mha(zeros(1, 1, 8), cache=zeros(2, 6, 4), cache_index=0)
    with pytest.raises(ValueError, match=r"`cache_index`.*received cache_index=None"):
        DecoderBlock(2, 8, cross_attention=False)(zeros(1, 1, 8), cache=zeros(1, 2, 2, 6, 4))


def test_cross_attention_arguments():
    with pytest.raises(ValueError, match=r"cross_attention=True.*encoder_outputs=None"):
        DecoderBlock(2, 8)(zeros(1, 3, 8))
    with pytest.raises(ValueError, match=r"cross_attention=False.*`encoder_outputs`"):
        DecoderBlock(2, 8, cross_attention=False)(zeros(1, 3, 8), zeros(1, 3, 8))


def test_learned_positions_past_max_length():
    layer = TokenAndPositionEmbedding(10, 8, max_length=4, positional="learned")
    with pytest.raises(ValueError, match=r"max_length=4.*length 5"):
        layer(zeros(1, 5, dtype="int32"))
    with pytest.raises(ValueError, match=r"max_length=4.*start_index=3"):
        layer(zeros(1, 2, dtype="int32"), start_index=np.int32(3))  # eager tensors are checked too


def test_symbolic_inputs_are_checked_when_the_functional_model_is_built():
    x = keras.Input((4, 8))
    with pytest.raises(ValueError, match=r"`padding_mask`.*\(None, 4\).*\(None, 5\)"):
        EncoderBlock(2, 8)(x, padding_mask=keras.Input((5,), dtype="bool"))
    with pytest.raises(ValueError, match=r"`attention_mask`.*\(None, 4, 4\).*\(None, 4, 6\)"):
        MultiHeadAttention(2)(x, attention_mask=keras.Input((4, 6), dtype="bool"))
    with pytest.raises(ValueError, match=r"cross_attention=True.*encoder_outputs=None"):
        DecoderBlock(2, 8)(x)
    with pytest.raises(ValueError, match=r"`encoder_padding_mask`.*\(None, 3\).*\(None, 7\)"):
        DecoderBlock(2, 8)(x, keras.Input((3, 8)), encoder_padding_mask=keras.Input((7,), dtype="bool"))
    with pytest.raises(ValueError, match=r"max_length=4.*length 10"):
        PositionalEncoding("learned", max_length=4)(keras.Input((10, 8)))
    with pytest.raises(ValueError, match=r"max_length=4.*length 6"):
        TokenAndPositionEmbedding(10, 8, max_length=4, positional="learned")(keras.Input((6,), dtype="int32"))
