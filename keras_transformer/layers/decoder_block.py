"""DecoderBlock: masked self-attention, cross-attention and feed-forward sub-layers (paper 3.1)."""

import keras

from keras_transformer.layers import masks
from keras_transformer.layers._block import TransformerBlockBase
from keras_transformer.layers._validation import check_last_dim, check_rank


@keras.saving.register_keras_serializable(package="keras_transformer")
class DecoderBlock(TransformerBlockBase):
    """One decoder layer: causal self-attention, cross-attention over the encoder output, FFN.

    With `cross_attention=False` the middle sub-layer is absent (decoder-only models such as
    GPT-2). Each sub-layer is wrapped in dropout + residual + LayerNorm, post-norm as in the paper
    or pre-norm with `norm_first=True`.

    Args:
        num_heads: attention heads; the input width must be divisible by it.
        d_ff: inner width of the feed-forward network.
        dropout: residual dropout rate.
        activation: feed-forward activation.
        norm_first: pre-norm instead of post-norm.
        layer_norm_epsilon: LayerNorm epsilon.
        cross_attention: whether the block attends to an encoder output.
        attention_dropout: dropout on attention probabilities.
        num_key_value_heads, use_bias, normalization, gated_feed_forward,
            rotary_max_wavelength, rotary_scaling_factor, qkv_bias: as in `EncoderBlock` (Llama-shaped
            blocks: `norm_first=True, normalization="rms_norm", use_bias=False,
            gated_feed_forward=True, activation="silu"`, rotary and fewer key/value heads).
            Rotary positions apply to the self-attention only.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        x: `(batch, length, d_model)` decoder states.
        encoder_outputs: `(batch, encoder_length, d_encoder)`; required when
            `cross_attention=True` unless `cross_attention_cache` is given.
        padding_mask: `(batch, length)` boolean, True at real decoder tokens; defaults to the
            Keras mask of `x`. With a cache it covers the cache positions instead,
            `(batch, max_length)`, so that batched prompts of different lengths can be decoded.
        encoder_padding_mask: `(batch, encoder_length)` boolean; defaults to the Keras mask of
            `encoder_outputs`.
        use_causal_mask: forbid attending to later positions (True for language models).
        cache: `(batch, 2, num_heads, max_length, head_dim)` self-attention keys/values.
        cache_index: number of positions already in `cache`; required with `cache`.
        cross_attention_cache: cross-attention keys/values from
            `compute_cross_attention_cache(encoder_outputs)`, so that decoding steps do not
            project the encoder output again.
        training: whether dropout is active.
        position_ids: `(batch, length)` positions for rotary self-attention (left-padded
            batches); default: `cache_index + arange(length)`.

    Returns:
        `(batch, length, d_model)`, or `(output, updated_cache)` when `cache` is given.

    Example:
    >>> block = DecoderBlock(num_heads=2, d_ff=32)
    >>> block(keras.random.normal((2, 4, 16)), keras.random.normal((2, 6, 16))).shape
    (2, 4, 16)
    """

    def __init__(self, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_epsilon=1e-6, cross_attention=True, attention_dropout=0.0, **kwargs):
        super().__init__(
            num_heads, d_ff, dropout=dropout, activation=activation, norm_first=norm_first,
            layer_norm_epsilon=layer_norm_epsilon, attention_dropout=attention_dropout, **kwargs,
        )  # **kwargs also carries the modern-decoder options of TransformerBlockBase
        self.cross_attention = bool(cross_attention)

    def build(self, x_shape, encoder_outputs_shape=None):
        input_shape = x_shape
        check_rank("x", input_shape, 3)
        check_last_dim("x", input_shape)
        if encoder_outputs_shape is not None:
            check_rank("encoder_outputs", encoder_outputs_shape, 3)
        self.self_attention = self._attention("self_attention", rotary=True)
        self.self_attention.build(input_shape)
        self.self_attention_norm = self._layer_norm("self_attention_norm")
        self.self_attention_norm.build(input_shape)
        self.self_attention_dropout = self._dropout("self_attention_dropout")
        if self.cross_attention:
            encoder_shape = encoder_outputs_shape or input_shape
            self.cross_attention_layer = self._attention("cross_attention")
            self.cross_attention_layer.build(input_shape, encoder_shape)
            self.cross_attention_norm = self._layer_norm("cross_attention_norm")
            self.cross_attention_norm.build(input_shape)
            self.cross_attention_dropout = self._dropout("cross_attention_dropout")
        self.feed_forward = self._feed_forward()
        self.feed_forward.build(input_shape)
        self.feed_forward_norm = self._layer_norm("feed_forward_norm")
        self.feed_forward_norm.build(input_shape)
        self.feed_forward_dropout = self._dropout("feed_forward_dropout")
        self.built = True

    def compute_cross_attention_cache(self, encoder_outputs):
        """Project `encoder_outputs` once into the cross-attention keys/values cache."""
        if not self.cross_attention:
            raise ValueError("This DecoderBlock was built with cross_attention=False.")
        return self.cross_attention_layer.compute_key_value_cache(encoder_outputs)

    def call(
        self,
        x,
        encoder_outputs=None,
        padding_mask=None,
        encoder_padding_mask=None,
        use_causal_mask=True,
        cache=None,
        cache_index=None,
        cross_attention_cache=None,
        training=None,
        position_ids=None,
    ):
        self._check_inputs(
            x, encoder_outputs, padding_mask, encoder_padding_mask, cache, cache_index,
            cross_attention_cache,
        )
        if padding_mask is None and cache is None:
            padding_mask = masks.keras_mask_of(x)
        if encoder_padding_mask is None:
            encoder_padding_mask = masks.keras_mask_of(encoder_outputs)

        # Without a cache the padding mask covers x; with one it covers the cache positions.
        self_mask = masks.merge_masks(padding_mask=padding_mask)
        x, extras = self.residual(
            x,
            lambda h: self.self_attention(
                h,
                attention_mask=self_mask,
                use_causal_mask=use_causal_mask,
                cache=cache,
                cache_index=cache_index,
                training=training,
                position_ids=position_ids,
            ),
            self.self_attention_norm,
            self.self_attention_dropout,
            training,
        )
        if self.cross_attention:
            cross_mask = masks.merge_masks(padding_mask=encoder_padding_mask)

            def attend_encoder(h):
                if cross_attention_cache is not None:
                    output, _ = self.cross_attention_layer(
                        h, attention_mask=cross_mask, cache=cross_attention_cache, training=training
                    )
                    return output
                return self.cross_attention_layer(
                    h, encoder_outputs, attention_mask=cross_mask, training=training
                )

            x, _ = self.residual(
                x, attend_encoder, self.cross_attention_norm, self.cross_attention_dropout, training
            )
        x, _ = self.residual(
            x,
            lambda h: self.feed_forward(h, training=training),
            self.feed_forward_norm,
            self.feed_forward_dropout,
            training,
        )
        if cache is not None:
            return x, extras[0]
        return x

    def _check_inputs(
        self, x, encoder_outputs=None, padding_mask=None, encoder_padding_mask=None, cache=None,
        cache_index=None, cross_attention_cache=None, **unused,
    ):
        check_rank("x", x, 3)
        if self.cross_attention and encoder_outputs is None and cross_attention_cache is None:
            raise ValueError(
                "This DecoderBlock has cross_attention=True: pass `encoder_outputs` (or a "
                "`cross_attention_cache`); received encoder_outputs=None."
            )
        if not self.cross_attention and encoder_outputs is not None:
            raise ValueError(
                "This DecoderBlock has cross_attention=False but received `encoder_outputs`; "
                "build it with cross_attention=True to attend to an encoder."
            )
        if encoder_outputs is not None:
            check_rank("encoder_outputs", encoder_outputs, 3)
        if cache is not None and cache_index is None:
            # Without an index, attention would read the cache as precomputed keys/values.
            raise ValueError(
                "A self-attention `cache` needs `cache_index` (the number of positions already "
                "in the cache); received cache_index=None."
            )
        if padding_mask is not None:
            # Without a cache the mask covers x; with one it covers the cache positions.
            length = x.shape[1] if cache is None else cache.shape[3]
            self.check_padding_mask("padding_mask", padding_mask, x.shape[0], length)
        if encoder_padding_mask is not None:
            encoder_length = None
            if encoder_outputs is not None:
                encoder_length = encoder_outputs.shape[1]
            elif cross_attention_cache is not None:
                encoder_length = cross_attention_cache.shape[3]
            self.check_padding_mask(
                "encoder_padding_mask", encoder_padding_mask, x.shape[0], encoder_length
            )

    def compute_output_shape(self, x_shape, encoder_outputs_shape=None, cache_shape=None):
        return tuple(x_shape) if cache_shape is None else (tuple(x_shape), tuple(cache_shape))

    def get_config(self):
        config = super().get_config()
        config.update(cross_attention=self.cross_attention)
        return config
