"""FeedForward: the position-wise network max(0, x W1 + b1) W2 + b2 (paper 3.3), or gated."""

import keras

from keras_transformer.layers import activations
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

    `output_dense(act(intermediate_dense(x)))` (the paper, BERT, GPT-2), or with `gated=True`
    `output_dense(act(gate_dense(x)) * intermediate_dense(x))` (SwiGLU with `"silu"` as in
    Llama/Mistral/Qwen2, GeGLU with `"gelu"`). The projections are Keras `Dense` sublayers
    `intermediate_dense (d_model -> d_ff)`, `gate_dense` and `output_dense (d_ff -> d_model)`,
    so `enable_lora` and `quantize` work on them. The output width equals the input width.

    Args:
        d_ff: inner width (2048 in the base model).
        activation: a Keras activation name or callable (`"relu"` in the paper, `"gelu"` in BERT,
            `"gelu_approximate"` (tanh) in GPT-2, `"silu"` in Llama).
        dropout: dropout rate applied to the inner activations.
        gated: multiply the activation by a second (gate) projection.
        use_bias: whether the projections have biases.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(..., d_model)` float tensor.
        training: whether dropout is active.

    Example:
    >>> FeedForward(d_ff=64, activation="silu", gated=True, use_bias=False)(
    ...     keras.random.normal((2, 5, 16))).shape
    (2, 5, 16)
    """

    def __init__(self, d_ff, activation="relu", dropout=0.0, gated=False, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.d_ff = check_positive_int("d_ff", d_ff)
        self._activation_fn = check_activation("activation", activation)
        self.activation = activation
        self.dropout = check_rate("dropout", dropout)
        self.gated = bool(gated)
        self.use_bias = bool(use_bias)
        self.supports_masking = True

    def _dense(self, units, name, input_width):
        layer = keras.layers.Dense(units, use_bias=self.use_bias, dtype=self.dtype_policy, name=name)
        layer.build((None, input_width))
        return layer

    def build(self, input_shape):
        check_rank("inputs", input_shape, (2, 3))
        d_model = check_last_dim("inputs", input_shape)
        self.intermediate_dense = self._dense(self.d_ff, "intermediate_dense", d_model)
        self.gate_dense = self._dense(self.d_ff, "gate_dense", d_model) if self.gated else None
        self.output_dense = self._dense(d_model, "output_dense", self.d_ff)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    @property
    def projections(self):
        """`{"intermediate", "gate", "output"}` -> the Dense sublayers (no gate unless gated)."""
        layers = {"intermediate": self.intermediate_dense, "output": self.output_dense}
        if self.gated:
            layers["gate"] = self.gate_dense
        return layers

    def call(self, inputs, training=None):
        check_rank("inputs", inputs, (2, 3))
        if self.gated:
            hidden = self._activation_fn(self.gate_dense(inputs)) * self.intermediate_dense(inputs)
        else:
            hidden = self._activation_fn(self.intermediate_dense(inputs))
        return self.output_dense(self.dropout_layer(hidden, training=training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            d_ff=self.d_ff, activation=activations.serialize(self.activation), dropout=self.dropout,
            gated=self.gated, use_bias=self.use_bias,
        )
        return config
