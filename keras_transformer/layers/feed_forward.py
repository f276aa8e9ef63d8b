"""FeedForward: the position-wise network max(0, x W1 + b1) W2 + b2 (paper 3.3)."""

import keras
from keras import ops

from keras_transformer.layers._validation import (
    check_activation,
    check_last_dim,
    check_positive_int,
    check_rank,
    check_rate,
)


@keras.saving.register_keras_serializable(package="keras_transformer")
class FeedForward(keras.layers.Layer):
    """Two linear maps with an activation between them, applied at every position.

    Weights: `inner_kernel (d_model, d_ff)`, `inner_bias (d_ff,)`, `output_kernel
    (d_ff, d_model)`, `output_bias (d_model,)`. The output width equals the input width.

    Args:
        d_ff: inner width (2048 in the base model).
        activation: any Keras activation name or callable (`"relu"` in the paper, `"gelu"` in
            BERT and GPT-2).
        dropout: dropout rate applied to the inner activations.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(..., d_model)` float tensor.
        training: whether dropout is active.

    Example:
    >>> FeedForward(d_ff=64)(keras.random.normal((2, 5, 16))).shape
    (2, 5, 16)
    """

    def __init__(self, d_ff, activation="relu", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.d_ff = check_positive_int("d_ff", d_ff)
        self._activation_fn = check_activation("activation", activation)
        self.activation = activation
        self.dropout = check_rate("dropout", dropout)
        self.supports_masking = True

    def build(self, input_shape):
        check_rank("inputs", input_shape, (2, 3))
        d_model = check_last_dim("inputs", input_shape)
        self.inner_kernel = self.add_weight(name="inner_kernel", shape=(d_model, self.d_ff), initializer="glorot_uniform")
        self.inner_bias = self.add_weight(name="inner_bias", shape=(self.d_ff,), initializer="zeros")
        self.output_kernel = self.add_weight(name="output_kernel", shape=(self.d_ff, d_model), initializer="glorot_uniform")
        self.output_bias = self.add_weight(name="output_bias", shape=(d_model,), initializer="zeros")
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    def call(self, inputs, training=None):
        check_rank("inputs", inputs, (2, 3))
        hidden = ops.matmul(inputs, ops.cast(self.inner_kernel, inputs.dtype))
        hidden = self._activation_fn(hidden + ops.cast(self.inner_bias, inputs.dtype))
        hidden = self.dropout_layer(hidden, training=training)
        output = ops.matmul(hidden, ops.cast(self.output_kernel, inputs.dtype))
        return output + ops.cast(self.output_bias, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        activation = self.activation
        if not isinstance(activation, str):
            activation = keras.activations.serialize(activation)
        config.update(d_ff=self.d_ff, activation=activation, dropout=self.dropout)
        return config
