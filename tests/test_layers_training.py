"""The layers train with `model.fit` (functional and subclassed models), also in mixed precision."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    FeedForward,
    TokenAndPositionEmbedding,
)

VOCAB, D_MODEL = 12, 16


def _copy_task(batch=32, length=6):
    """Predict the previous token: learnable in a few steps by a causal model."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(batch, length)).astype("int32")
    targets = np.concatenate([np.zeros((batch, 1), "int32"), ids[:, :-1]], axis=1)
    return ids, targets


def _functional_model():
    ids = keras.Input((None,), dtype="int32")
    embed = TokenAndPositionEmbedding(VOCAB, D_MODEL, mask_zero=True, dropout=0.1)
    x = DecoderBlock(2, 32, cross_attention=False, attention_dropout=0.1)(embed(ids))
    return keras.Model(ids, embed(x, reverse=True))


def _every_block_model():
    ids = keras.Input((None,), dtype="int32")
    embed = TokenAndPositionEmbedding(VOCAB, D_MODEL, mask_zero=True)
    x = embed(ids)
    encoded = EncoderBlock(2, 32)(x)
    x = DecoderBlock(2, 32, norm_first=True)(x, encoded)
    x = FeedForward(32, activation="gelu")(x)
    return keras.Model(ids, embed(x, reverse=True))


class SubclassedDecoder(keras.Model):
    """A decoder-only language model written as a `keras.Model` subclass."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = TokenAndPositionEmbedding(VOCAB, D_MODEL)
        self.block = DecoderBlock(2, 32, cross_attention=False, dropout=0.0)

    def call(self, ids, training=None):
        x = self.block(self.embed(ids, training=training), training=training)
        return self.embed(x, reverse=True)


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("make", [_functional_model, SubclassedDecoder], ids=["functional", "subclassed"])
def test_fit_lowers_the_loss(make):
    ids, targets = _copy_task()
    model = make()
    # SGD keeps the traced training graph small: tracing dominates the time of such tiny fits.
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS, jit_compile=False)
    losses = model.fit(ids, targets, batch_size=16, epochs=8, verbose=0).history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.85 * losses[0]


@pytest.mark.tensorflow  # gradients by tf.GradientTape; fit under mixed precision runs everywhere
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_forward_and_gradients_are_finite(policy):
    import tensorflow as tf

    keras.config.set_dtype_policy(policy)
    model = _every_block_model()
    ids, targets = _copy_task(batch=4)
    ids[0, 3:] = 0  # padding, so that masked rows are exercised too
    with tf.GradientTape() as tape:
        logits = model(ids, training=True)
        loss = LOSS(targets, logits)
    assert logits.dtype == policy.split("_")[1]
    assert all(v.dtype == "float32" for v in model.trainable_variables)  # float32 master weights
    gradients = tape.gradient(loss, model.trainable_variables)
    assert all(np.isfinite(g.numpy()).all() for g in gradients)
    assert np.isfinite(ops.convert_to_numpy(ops.cast(logits, "float32"))).all()


def test_predict_with_unknown_batch_and_length():
    model = _functional_model()
    for shape in [(1, 3), (5, 9)]:  # one relaxed-shape graph serves every batch size and length
        ids = np.random.default_rng(1).integers(1, VOCAB, size=shape).astype("int32")
        assert model.predict(ids, verbose=0).shape == shape + (VOCAB,)
