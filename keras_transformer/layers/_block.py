"""What EncoderBlock and DecoderBlock share: arguments, config, and the residual sub-layer."""

import inspect

import keras

from keras_transformer.layers import activations
from keras_transformer.layers._validation import (
    check_activation,
    check_choice,
    check_dims,
    check_key_value_heads,
    check_positive_int,
    check_rate,
)
from keras_transformer.layers.feed_forward import FeedForward
from keras_transformer.layers.multi_head_attention import MultiHeadAttention

NORMALIZATIONS = ("layer_norm", "rms_norm")


class TransformerBlockBase(keras.layers.Layer):
    """Stores the common block arguments and wraps sub-layers in dropout + residual + LayerNorm."""

    def __init__(
        self,
        num_heads,
        d_ff,
        dropout=0.1,
        activation="relu",
        norm_first=False,
        layer_norm_epsilon=1e-6,
        attention_dropout=0.0,
        num_key_value_heads=None,
        use_bias=True,
        normalization="layer_norm",
        gated_feed_forward=False,
        rotary_max_wavelength=None,
        rotary_scaling_factor=1.0,
        qkv_bias=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.d_ff = check_positive_int("d_ff", d_ff)
        self.dropout = check_rate("dropout", dropout)
        self.attention_dropout = check_rate("attention_dropout", attention_dropout)
        self.activation = activation
        check_activation("activation", activation)  # fail at construction, not at build
        self.norm_first = bool(norm_first)
        if not isinstance(layer_norm_epsilon, (int, float)) or layer_norm_epsilon <= 0:
            raise ValueError(
                "`layer_norm_epsilon` must be a positive number; received "
                f"layer_norm_epsilon={layer_norm_epsilon!r}."
            )
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.num_key_value_heads = check_key_value_heads(num_key_value_heads, self.num_heads)
        self.use_bias = bool(use_bias)
        self.qkv_bias = None if qkv_bias is None else bool(qkv_bias)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.gated_feed_forward = bool(gated_feed_forward)
        self.rotary_max_wavelength = rotary_max_wavelength
        self.rotary_scaling_factor = rotary_scaling_factor
        self.supports_masking = True

    def _layer_norm(self, name):
        """LayerNorm (the paper, BERT, GPT-2) or RMSNorm (Llama) with the block's epsilon."""
        if self.normalization == "rms_norm":
            return keras.layers.RMSNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
            )
        return keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )

    def _attention(self, name, rotary=False):
        """A MultiHeadAttention sub-layer with the block's heads, bias and (if `rotary`) RoPE."""
        return MultiHeadAttention(
            self.num_heads, dropout=self.attention_dropout, use_bias=self.use_bias,
            num_key_value_heads=self.num_key_value_heads,
            rotary_max_wavelength=self.rotary_max_wavelength if rotary else None,
            rotary_scaling_factor=self.rotary_scaling_factor, qkv_bias=self.qkv_bias,
            dtype=self.dtype_policy, name=name,
        )

    def _feed_forward(self, dropout=0.0):
        return FeedForward(
            self.d_ff, activation=self.activation, dropout=dropout, gated=self.gated_feed_forward,
            use_bias=self.use_bias, dtype=self.dtype_policy, name="feed_forward",
        )

    def _dropout(self, name):
        return keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name=name)

    def residual(self, x, sublayer, norm, dropout, training=None):
        """`LayerNorm(x + Dropout(sublayer(x)))` (post-norm, the paper) or
        `x + Dropout(sublayer(LayerNorm(x)))` (pre-norm, `norm_first=True`).

        `sublayer` may return `(output, *extras)` (e.g. an updated cache); the extras are
        returned alongside: `(new_x, extras)`.
        """
        result = sublayer(norm(x) if self.norm_first else x)
        extras = ()
        if isinstance(result, tuple):
            result, *extras = result
        x = x + dropout(result, training=training)
        if not self.norm_first:
            x = norm(x)
        return x, tuple(extras)

    @staticmethod
    def check_padding_mask(name, mask, batch, length):
        """`mask` (or None) must be `(batch, length)`; ValueError naming `name` otherwise."""
        if mask is None:
            return
        shape = tuple(mask.shape)
        if len(shape) != 2:
            raise ValueError(
                f"`{name}` must have rank 2 (batch, length); received shape {shape}."
            )
        check_dims(name, shape, (batch, length), "(batch, length)")

    def _check_inputs(self, x, **arguments):
        """Check `call`'s inputs (by argument name); blocks extend this."""

    def compute_output_spec(self, *args, **kwargs):
        # With `compute_output_shape` defined, Keras does not trace `call` for symbolic inputs,
        # so the input checks run here, matched to `call`'s arguments by name.
        try:
            arguments = inspect.signature(self.call).bind_partial(*args, **kwargs).arguments
        except TypeError:  # a subclass with another `call` signature: its own `call` checks
            arguments = {}
        if "x" in arguments:
            self._check_inputs(**arguments)
        return super().compute_output_spec(*args, **kwargs)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            d_ff=self.d_ff,
            dropout=self.dropout,
            activation=activations.serialize(self.activation),
            norm_first=self.norm_first,
            layer_norm_epsilon=self.layer_norm_epsilon,
            attention_dropout=self.attention_dropout,
            num_key_value_heads=self.num_key_value_heads,
            use_bias=self.use_bias,
            normalization=self.normalization,
            gated_feed_forward=self.gated_feed_forward,
            rotary_max_wavelength=self.rotary_max_wavelength,
            rotary_scaling_factor=self.rotary_scaling_factor,
            qkv_bias=self.qkv_bias,
        )
        return config
