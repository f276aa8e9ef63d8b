"""EncoderBlock: self-attention and feed-forward sub-layers with residual + LayerNorm (paper 3.1)."""

import keras

from keras_transformer.layers import masks
from keras_transformer.layers._block import TransformerBlockBase
from keras_transformer.layers._validation import check_last_dim, check_rank


@keras.saving.register_keras_serializable(package="keras_transformer")
class EncoderBlock(TransformerBlockBase):
    """One encoder layer: multi-head self-attention, then a position-wise feed-forward network.

    Each sub-layer is wrapped as `LayerNorm(x + Dropout(Sublayer(x)))` (post-norm, the paper),
    or `x + Dropout(Sublayer(LayerNorm(x)))` when `norm_first=True` (pre-norm).

    Args:
        num_heads: attention heads; the input width must be divisible by it.
        d_ff: inner width of the feed-forward network.
        dropout: residual dropout rate (0.1 in the base model).
        activation: feed-forward activation.
        norm_first: pre-norm instead of the paper's post-norm.
        layer_norm_epsilon: LayerNorm epsilon.
        attention_dropout: dropout on attention probabilities.
        num_key_value_heads: key/value heads of the attention (grouped-query attention).
        use_bias: whether the attention and feed-forward projections have biases.
        normalization: `"layer_norm"` or `"rms_norm"`.
        gated_feed_forward: gated feed-forward (SwiGLU with `activation="silu"`).
        rotary_max_wavelength: None, or the rotary base of the self-attention's RoPE.
        rotary_scaling_factor: linear position interpolation of the RoPE.
        qkv_bias: whether the attention query/key/value projections have biases; None follows
            `use_bias` (Qwen2: `use_bias=False, qkv_bias=True`).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        x: `(batch, length, d_model)`.
        padding_mask: `(batch, length)` boolean, True at real tokens. Defaults to the Keras
            mask carried by `x` (from `mask_zero=True`); an explicit mask wins.
        attention_mask: `(batch, length, length)` boolean (or broadcastable), True = may attend.
        training: whether dropout is active.

    Sub-layers (made in `build`): `self_attention`, `self_attention_norm`, `feed_forward`,
    `feed_forward_norm`.

    Example:
    >>> block = EncoderBlock(num_heads=2, d_ff=32)
    >>> block(keras.random.normal((2, 7, 16))).shape
    (2, 7, 16)
    """

    def build(self, input_shape):
        check_rank("x", input_shape, 3)
        check_last_dim("x", input_shape)
        self.self_attention = self._attention("self_attention", rotary=True)
        self.self_attention.build(input_shape)
        self.self_attention_norm = self._layer_norm("self_attention_norm")
        self.self_attention_norm.build(input_shape)
        self.self_attention_dropout = self._dropout("self_attention_dropout")
        self.feed_forward = self._feed_forward()
        self.feed_forward.build(input_shape)
        self.feed_forward_norm = self._layer_norm("feed_forward_norm")
        self.feed_forward_norm.build(input_shape)
        self.feed_forward_dropout = self._dropout("feed_forward_dropout")
        self.built = True

    def call(self, x, padding_mask=None, attention_mask=None, training=None):
        self._check_inputs(x, padding_mask, attention_mask)
        if padding_mask is None:
            padding_mask = masks.keras_mask_of(x)
        mask = masks.merge_masks(padding_mask=padding_mask, attention_mask=attention_mask)
        x, _ = self.residual(
            x,
            lambda h: self.self_attention(h, attention_mask=mask, training=training),
            self.self_attention_norm,
            self.self_attention_dropout,
            training,
        )
        x, _ = self.residual(
            x,
            lambda h: self.feed_forward(h, training=training),
            self.feed_forward_norm,
            self.feed_forward_dropout,
            training,
        )
        return x

    def _check_inputs(self, x, padding_mask=None, attention_mask=None, **unused):
        check_rank("x", x, 3)
        self.check_padding_mask("padding_mask", padding_mask, x.shape[0], x.shape[1])
        if attention_mask is not None:
            masks.check_mask_shape(attention_mask, x, x.shape[1])
