"""The mask helpers: causal, padding, merging, and reading Keras masks (also in functional models)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer.layers import (
    EncoderBlock,
    causal_mask,
    keras_mask_of,
    merge_masks,
    padding_mask,
)


def numpy(x):
    return ops.convert_to_numpy(x)


def test_causal_mask_is_lower_triangular():
    mask = numpy(causal_mask(4))
    assert mask.shape == (1, 4, 4) and mask.dtype == bool
    np.testing.assert_array_equal(mask[0], np.tril(np.ones((4, 4), bool)))


def test_causal_mask_with_start_index_and_key_length():
    # Two new queries after three cached positions, in a cache of six.
    mask = numpy(causal_mask(2, key_length=6, start_index=3))[0]
    expected = np.arange(6)[None, :] <= np.array([3, 4])[:, None]
    np.testing.assert_array_equal(mask, expected)
    assert numpy(causal_mask(2, start_index=3)).shape == (1, 2, 5)  # key_length defaults to 3 + 2


def test_padding_mask():
    ids = np.array([[5, 1, 0, 0], [2, 0, 3, 7]], "int32")  # the models' id dtype (JAX truncates int64)
    np.testing.assert_array_equal(numpy(padding_mask(ids)), ids != 0)
    np.testing.assert_array_equal(numpy(padding_mask(ids, pad_id=7)), ids != 7)
    with pytest.raises(ValueError, match=r"`token_ids`.*rank 2.*\(4,\)"):
        padding_mask(ids[0])


def test_merge_masks_is_a_logical_and_with_broadcasting():
    pad = np.array([[1, 1, 0], [1, 1, 1]], bool)
    attention = np.random.default_rng(0).random((2, 3, 3)) > 0.3
    causal = numpy(causal_mask(3))
    merged = numpy(merge_masks(padding_mask=pad, attention_mask=attention, causal=causal))
    np.testing.assert_array_equal(merged, pad[:, None, :] & attention & causal)
    np.testing.assert_array_equal(numpy(merge_masks(attention_mask=attention[0].astype("int32"))),
                                  attention[:1])  # rank-2 and 0/1 masks are accepted
    assert merge_masks() is None
    with pytest.raises(ValueError, match=r"`padding_mask`.*\(2, 3, 3\)"):
        merge_masks(padding_mask=attention)


def test_keras_mask_of():
    ids = np.array([[4, 0]])
    embedded = keras.layers.Embedding(5, 4, mask_zero=True)(ids)
    np.testing.assert_array_equal(numpy(keras_mask_of(embedded)), [[True, False]])
    assert keras_mask_of(keras.layers.Embedding(5, 4)(ids)) is None
    assert keras_mask_of(None) is None


@keras.saving.register_keras_serializable(package="keras_transformer_tests")
class RecordMask(keras.layers.Layer):
    """Outputs the Keras mask its input carries, as 0/1 floats (all ones when there is none)."""

    def call(self, x):
        mask = keras_mask_of(x)
        if mask is None:
            return ops.ones(ops.shape(x)[:2])
        return ops.cast(mask, "float32")

    def compute_mask(self, inputs, mask=None):
        return None


def test_keras_mask_of_inside_a_functional_model_and_predict():
    ids = keras.Input((None,), dtype="int32")
    hidden = EncoderBlock(2, 8)(keras.layers.Embedding(9, 8, mask_zero=True)(ids))
    model = keras.Model(ids, RecordMask()(hidden))  # the block passes the mask on
    data = np.array([[3, 2, 0, 0], [1, 1, 1, 0]], "int32")
    np.testing.assert_array_equal(numpy(model(data)), data != 0)
    np.testing.assert_array_equal(model.predict(data, verbose=0), data != 0)
