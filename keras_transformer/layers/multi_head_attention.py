"""MultiHeadAttention: softmax(Q K^T / sqrt(d_k)) V over h heads (paper 3.2), with a KV cache."""

import math

import keras
from keras import ops

from keras_transformer.layers import masks
from keras_transformer.layers._validation import (
    check_dims,
    check_float,
    check_width,
    check_last_dim,
    check_positive_int,
    check_rank,
    check_rate,
)

# Added to the logits of masked positions. Softmax runs in float32, so this is safe in every
# compute dtype; a row with no allowed position becomes a (near-)uniform average: finite, never NaN.
_MASKED_LOGIT = -1e9


@keras.saving.register_keras_serializable(package="keras_transformer")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention with an optional key/value cache.

    `MultiHead(Q, K, V) = Concat(head_1..head_h) W_O` with
    `head_i = softmax(Q W_Q^i (K W_K^i)^T / sqrt(d_k)) V W_V^i`. The weights are stored as
    `query_kernel`, `key_kernel`, `value_kernel` of shape `(d_in, num_heads * key_dim)` and
    `output_kernel` of shape `(num_heads * key_dim, d_model)`, each with a bias when `use_bias`.
    Self-attention projects Q, K and V with one fused matrix product.

    Args:
        num_heads: number of heads `h`.
        key_dim: width of each head `d_k`; defaults to `d_model // num_heads`, in which case
            `d_model` must be divisible by `num_heads`.
        dropout: dropout rate on the attention probabilities.
        use_bias: whether the projections have biases.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        query: `(batch, query_length, d_model)`.
        value: `(batch, key_length, d_value)`; None means self-attention (`value = query`).
        key: `(batch, key_length, d_key)`; defaults to `value`.
        attention_mask: boolean, True = may attend, `(batch, query_length, key_length)` or
            broadcastable to it (with a cache, `key_length` is the cache length).
        use_causal_mask: forbid attending to later positions.
        cache: `(batch, 2, num_heads, max_length, key_dim)` keys (index 0) and values (index 1)
            of all positions. With `cache_index`, the new keys/values are written at
            `cache_index` and attention covers positions `< cache_index + query_length`; without
            it the cache is used as is (precomputed cross-attention keys/values, see
            `compute_key_value_cache`).
        cache_index: number of positions already in the cache (int or scalar tensor).
            Like every float input, the cache is cast to the layer's compute dtype, so under
            `mixed_float16` a float32 cache comes back as float16: keep caches in the compute
            dtype (e.g. inside a `tf.while_loop`).
        return_attention_scores: also return the `(batch, num_heads, query_length,
            key_length)` attention probabilities.
        training: whether dropout is active.
        query_mask, value_mask, key_mask: Keras masks, filled in automatically by Keras;
            combined with `attention_mask` (which wins where both exist).

    Returns:
        `output`, then `scores` if requested, then the updated cache if `cache` was given
        (a tuple when more than one).

    Example:
    >>> mha = MultiHeadAttention(num_heads=2)
    >>> x = keras.random.normal((2, 5, 16))
    >>> mha(x, use_causal_mask=True).shape
    (2, 5, 16)
    """

    def __init__(self, num_heads, key_dim=None, dropout=0.0, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.key_dim = check_positive_int("key_dim", key_dim, allow_none=True)
        self.dropout = check_rate("dropout", dropout)
        self.use_bias = bool(use_bias)
        self.supports_masking = True

    def build(self, query_shape, value_shape=None, key_shape=None):
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if shape is not None:
                check_rank(name, shape, 3)
        d_model = check_last_dim("query", query_shape)
        if self.key_dim is None and d_model % self.num_heads:
            raise ValueError(
                f"The query width d_model={d_model} must be divisible by num_heads="
                f"{self.num_heads} when `key_dim` is not given."
            )
        self.head_dim = self.key_dim or d_model // self.num_heads
        d_value = d_model if value_shape is None else check_last_dim("value", value_shape)
        d_key = d_value if key_shape is None else check_last_dim("key", key_shape)
        inner = self.num_heads * self.head_dim
        self.query_kernel, self.query_bias = self._projection("query", d_model, inner)
        self.key_kernel, self.key_bias = self._projection("key", d_key, inner)
        self.value_kernel, self.value_bias = self._projection("value", d_value, inner)
        self.output_kernel, self.output_bias = self._projection("output", inner, d_model)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    def _projection(self, name, fan_in, fan_out):
        kernel = self.add_weight(
            name=f"{name}_kernel", shape=(fan_in, fan_out), initializer="glorot_uniform"
        )
        bias = None
        if self.use_bias:
            bias = self.add_weight(name=f"{name}_bias", shape=(fan_out,), initializer="zeros")
        return kernel, bias

    # -- projections ---------------------------------------------------------------------------

    def _project(self, x, kernels, biases):
        """One matrix product for several projections, split back into `(batch, h, len, d_k)`."""
        kernel = kernels[0] if len(kernels) == 1 else ops.concatenate(kernels, axis=-1)
        y = ops.matmul(x, ops.cast(kernel, x.dtype))
        if self.use_bias:
            bias = biases[0] if len(biases) == 1 else ops.concatenate(biases, axis=-1)
            y = y + ops.cast(bias, x.dtype)
        # Split on the feature axis (its gradient is one concat; indexing a 5-D transpose made
        # zero-filled gradients per part), then (batch, length, h, d_k) -> (batch, h, length, d_k).
        parts = ops.split(y, len(kernels), axis=-1) if len(kernels) > 1 else [y]
        length = ops.shape(x)[1]
        return [
            ops.transpose(ops.reshape(p, (-1, length, self.num_heads, self.head_dim)), (0, 2, 1, 3))
            for p in parts
        ]

    def compute_key_value_cache(self, value, key=None):
        """Project `value` (and `key`) once into a `(batch, 2, h, length, d_k)` cache.

        Used for cross-attention during decoding: the encoder output is projected once and the
        cache is passed on every step with `cache_index=None`.
        """
        if not self.built:
            self.build((None, None, value.shape[-1]), value.shape, None if key is None else key.shape)
        # Called outside `__call__`, so no autocast: project in the compute dtype ourselves.
        value = ops.cast(value, self.compute_dtype)
        key = None if key is None else ops.cast(key, self.compute_dtype)
        if key is None:
            keys, values = self._project(
                value, [self.key_kernel, self.value_kernel], [self.key_bias, self.value_bias]
            )
        else:
            (keys,) = self._project(key, [self.key_kernel], [self.key_bias])
            (values,) = self._project(value, [self.value_kernel], [self.value_bias])
        return ops.stack([keys, values], axis=1)

    # -- call ----------------------------------------------------------------------------------

    def call(
        self,
        query,
        value=None,
        key=None,
        attention_mask=None,
        use_causal_mask=False,
        cache=None,
        cache_index=None,
        return_attention_scores=False,
        training=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
    ):
        check_rank("query", query, 3)
        check_float("query", query)
        check_width("query", query, self.query_kernel.shape[0])
        for name, tensor in (("value", value), ("key", key)):
            if tensor is not None:
                check_rank(name, tensor, 3)
        if cache_index is not None and cache is None:
            raise ValueError("`cache_index` was given without a `cache`; pass both or neither.")
        if cache is not None:
            self._check_cache(cache)
        if key is not None and value is not None:
            check_dims("key", key.shape[:2], value.shape[:2], "(batch, key_length) of `value`")

        self_attention = value is None
        if self_attention:
            value = query
            if value_mask is None:
                value_mask = query_mask if query_mask is not None else masks.keras_mask_of(query)
        key = value if key is None else key
        key_mask = value_mask if key_mask is None else key_mask

        if cache is not None and cache_index is None:
            # Precomputed keys/values (cross-attention): no projection, no update.
            (queries,) = self._project(query, [self.query_kernel], [self.query_bias])
            keys = ops.cast(cache[:, 0], queries.dtype)
            values = ops.cast(cache[:, 1], queries.dtype)
        elif self_attention:
            queries, keys, values = self._project(
                query,
                [self.query_kernel, self.key_kernel, self.value_kernel],
                [self.query_bias, self.key_bias, self.value_bias],
            )
        else:
            (queries,) = self._project(query, [self.query_kernel], [self.query_bias])
            if key is value:
                keys, values = self._project(
                    value, [self.key_kernel, self.value_kernel], [self.key_bias, self.value_bias]
                )
            else:
                (keys,) = self._project(key, [self.key_kernel], [self.key_bias])
                (values,) = self._project(value, [self.value_kernel], [self.value_bias])

        mask = self._attention_mask(
            query, keys, attention_mask, use_causal_mask, cache, cache_index, key_mask
        )
        if cache is not None and cache_index is not None:
            update = ops.stack([keys, values], axis=1)
            start = [0, 0, 0, ops.cast(cache_index, "int32"), 0]
            cache = ops.slice_update(cache, start, ops.cast(update, cache.dtype))
            keys, values = cache[:, 0], cache[:, 1]
            keys, values = ops.cast(keys, queries.dtype), ops.cast(values, queries.dtype)

        output, scores = self._attend(queries, keys, values, mask, training)
        outputs = (output,)
        if return_attention_scores:
            outputs += (scores,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _check_cache(self, cache):
        check_rank("cache", cache, 5)
        expected = (None, 2, self.num_heads, None, self.head_dim)
        check_dims("cache", cache.shape, expected, "(batch, 2, num_heads, max_length, head_dim)")

    def _attention_mask(self, query, keys, attention_mask, use_causal_mask, cache, cache_index, key_mask):
        """Merge the explicit, Keras, causal and cache-fill masks into `(batch|1, T, S)`."""
        query_length = ops.shape(query)[1]
        key_length = ops.shape(keys)[2] if cache is None else ops.shape(cache)[3]
        if attention_mask is not None:
            self._check_mask_shape(attention_mask, query, key_length)
        elif key_mask is not None and cache is None:
            attention_mask = ops.expand_dims(ops.cast(key_mask, "bool"), 1)
        causal = None
        if cache is not None and cache_index is not None:
            # Only the filled part of the cache (and, if causal, the past of each query) counts.
            if use_causal_mask:
                causal = masks.causal_mask(query_length, key_length, cache_index)
            else:
                filled = ops.arange(key_length, dtype="int32") < ops.cast(cache_index, "int32") + query_length
                causal = ops.reshape(filled, (1, 1, -1))
        elif use_causal_mask:
            causal = masks.causal_mask(query_length, key_length, key_length - query_length)
        return masks.merge_masks(attention_mask=attention_mask, causal=causal)

    @staticmethod
    def _check_mask_shape(attention_mask, query, key_length, name="attention_mask"):
        """`attention_mask` must have rank 2 or 3 and broadcast to `(batch, T, key_length)`."""
        check_rank(name, attention_mask, (2, 3))
        expected = (query.shape[0], query.shape[1], key_length)
        got = tuple(attention_mask.shape)
        got = (1,) * (3 - len(got)) + got
        for have, want in zip(got, expected):
            if isinstance(have, int) and isinstance(want, int) and have not in (1, want):
                raise ValueError(
                    f"`{name}` must broadcast to (batch, query_length, key_length) = "
                    f"{expected}; received shape {tuple(attention_mask.shape)}."
                )

    def _attend(self, queries, keys, values, mask, training):
        scale = 1.0 / math.sqrt(self.head_dim)
        logits = ops.matmul(queries * ops.cast(scale, queries.dtype), ops.swapaxes(keys, -1, -2))
        logits = ops.cast(logits, "float32")  # softmax in float32 under mixed precision
        if mask is not None:
            # An additive bias built on the small (batch|1, T, S) mask: cheaper than a `where` on
            # the full logits (and its gradient); masked logits still end up at -1e9.
            bias = ops.where(mask, 0.0, _MASKED_LOGIT)
            logits = logits + ops.expand_dims(ops.cast(bias, "float32"), 1)
        # One key (static length 1): every probability is exactly 1 (masked logits are finite),
        # and Keras warns about a softmax over a size-1 axis, so the ones are written directly.
        single_key = logits.shape[-1] == 1
        scores = ops.cast(ops.ones_like(logits) if single_key else ops.softmax(logits, axis=-1), queries.dtype)
        attended = ops.matmul(self.dropout_layer(scores, training=training), values)
        attended = ops.transpose(attended, (0, 2, 1, 3))
        attended = ops.reshape(
            attended, (-1, ops.shape(attended)[1], self.num_heads * self.head_dim)
        )
        output = ops.matmul(attended, ops.cast(self.output_kernel, attended.dtype))
        if self.use_bias:
            output = output + ops.cast(self.output_bias, output.dtype)
        return output, scores

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None, cache_shape=None):
        if cache_shape is not None:
            return tuple(query_shape), tuple(cache_shape)
        return tuple(query_shape)

    def compute_output_spec(
        self,
        query,
        value=None,
        key=None,
        attention_mask=None,
        use_causal_mask=False,
        cache=None,
        cache_index=None,
        return_attention_scores=False,
        **kwargs,
    ):
        # Mirrors `call`'s signature, so that arguments passed by position land in the same place.
        # Keras does not trace `call` for symbolic inputs, so the input checks are repeated here.
        for name, tensor in (("query", query), ("value", value), ("key", key)):
            if tensor is not None:
                check_rank(name, tensor, 3)
        key_length = (value if value is not None else query).shape[1]
        if cache is not None:
            self._check_cache(cache)
            key_length = cache.shape[3]
        if attention_mask is not None:
            self._check_mask_shape(attention_mask, query, key_length)
        output = keras.KerasTensor(query.shape, dtype=self.compute_dtype)
        outputs = (output,)
        if return_attention_scores:
            shape = (query.shape[0], self.num_heads, query.shape[1], key_length)
            outputs += (keras.KerasTensor(shape, dtype=self.compute_dtype),)
        if cache is not None:
            outputs += (keras.KerasTensor(cache.shape, dtype=cache.dtype),)
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_mask(self, query, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            dropout=self.dropout,
            use_bias=self.use_bias,
        )
        return config
