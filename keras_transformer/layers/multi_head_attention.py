"""MultiHeadAttention: softmax(Q K^T / sqrt(d_k) + bias) V over h heads (paper 3.2), with a KV
cache, grouped-query attention and rotary positions."""

import math

import keras
from keras import ops

from keras_transformer.layers import masks
from keras_transformer.layers._attention_ops import (
    input_einsum_dense,
    output_einsum_dense,
    output_projection,
    output_spec,
    project,
    use_dot_product_attention,
)
from keras_transformer.layers._validation import (
    check_dims,
    check_key_value_heads,
    check_float,
    check_last_dim,
    check_positive_int,
    check_rank,
    check_rate,
    check_width,
)
from keras_transformer.layers.cache import CacheSpec
from keras_transformer.layers.rotary_embedding import RotaryEmbedding

# Added to the logits of masked positions. Softmax runs in float32, so this is safe in every
# compute dtype; a row with no allowed position becomes a (near-)uniform average: finite, never NaN.
_MASKED_LOGIT = -1e9


@keras.saving.register_keras_serializable(package="keras_transformer")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention with an optional key/value cache.

    `MultiHead(Q, K, V) = Concat(head_1..head_h) W_O` with
    `head_i = softmax(Q W_Q^i (K W_K^i)^T * scale + bias) V W_V^i`. The projections are Keras
    `EinsumDense` sublayers, so `enable_lora` and `quantize` work on them:
    `query` (kernel `(d_model, num_heads, head_dim)`), `key` and `value`
    (`(d_in, num_key_value_heads, head_dim)`) and `attention_output`
    (`(num_heads, head_dim, d_model)`), each with a bias when `use_bias` (the layout of Keras's
    and keras-hub's attention layers). Self-attention projects Q, K and V with one fused matrix
    product when none of them is quantized.

    With `num_key_value_heads < num_heads` (grouped-query attention; 1 = multi-query) each
    key/value head serves `num_heads / num_key_value_heads` query heads, and the cache holds only
    the key/value heads. With `rotary_max_wavelength`, queries and keys of self-attention are
    rotated by their positions (`RotaryEmbedding`) before the cache is written.

    Override `_compute_attention` to change the score/softmax/value step (e.g. a different
    normalisation); the projections, rotary positions, masks and cache stay as they are.

    Args:
        num_heads: number of query heads `h`.
        key_dim: width of each head `d_k`; defaults to `d_model // num_heads`, in which case
            `d_model` must be divisible by `num_heads`.
        dropout: dropout rate on the attention probabilities.
        use_bias: whether the projections have biases.
        num_key_value_heads: key/value heads (grouped-query attention); defaults to
            `num_heads`; must divide it.
        scale: multiplier of the logits; defaults to `1 / sqrt(head_dim)`.
        rotary_max_wavelength: None (no rotary positions) or the rotary base `theta`.
        rotary_scaling_factor: linear position interpolation of the rotary embedding.
        qkv_bias: whether the query/key/value projections have biases; defaults to `use_bias`
            (Qwen2: True with `use_bias=False`, so the output projection has none).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        query: `(batch, query_length, d_model)`.
        value: `(batch, key_length, d_value)`; None means self-attention (`value = query`).
        key: `(batch, key_length, d_key)`; defaults to `value`.
        attention_mask: boolean, True = may attend, `(batch, query_length, key_length)` or
            broadcastable to it (with a cache, `key_length` is the cache length).
        use_causal_mask: forbid attending to later positions.
        cache: `(batch, 2, num_key_value_heads, max_length, key_dim)` keys (index 0) and values
            (index 1) of all positions (see `cache_spec`). With `cache_index`, the new
            keys/values are written at `cache_index` and attention covers positions
            `< cache_index + query_length`; without it the cache is used as is (precomputed
            cross-attention keys/values, see `compute_key_value_cache`).
        cache_index: number of positions already in the cache (int or scalar tensor).
            Like every float input, the cache is cast to the layer's compute dtype, so under
            `mixed_float16` a float32 cache comes back as float16: keep caches in the compute
            dtype (e.g. inside a `tf.while_loop`).
        return_attention_scores: also return the `(batch, num_heads, query_length,
            key_length)` attention probabilities.
        training: whether dropout is active.
        attention_bias: float, added to the logits (T5 relative positions, ALiBi), broadcastable
            to `(batch, num_heads, query_length, key_length)`; combined with the masks.
        position_ids: `(batch, query_length)` integer positions of the queries for the rotary
            embedding (left-padded batches); default `cache_index + arange(query_length)`.
        query_mask, value_mask, key_mask: Keras masks, filled in automatically by Keras;
            combined with `attention_mask` (which wins where both exist).

    Returns:
        `output`, then `scores` if requested, then the updated cache if `cache` was given
        (a tuple when more than one).

    Example:
    >>> mha = MultiHeadAttention(num_heads=4, num_key_value_heads=2, rotary_max_wavelength=1e4)
    >>> x = keras.random.normal((2, 5, 16))
    >>> mha(x, use_causal_mask=True).shape
    (2, 5, 16)
    """

    def __init__(
        self,
        num_heads,
        key_dim=None,
        dropout=0.0,
        use_bias=True,
        num_key_value_heads=None,
        scale=None,
        rotary_max_wavelength=None,
        rotary_scaling_factor=1.0,
        qkv_bias=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.key_dim = check_positive_int("key_dim", key_dim, allow_none=True)
        self.dropout = check_rate("dropout", dropout)
        self.use_bias = bool(use_bias)
        self.qkv_bias = self.use_bias if qkv_bias is None else bool(qkv_bias)
        self.num_key_value_heads = check_key_value_heads(num_key_value_heads, self.num_heads)
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0):
            raise ValueError(f"`scale` must be a positive number or None; received scale={scale!r}.")
        self.scale = None if scale is None else float(scale)
        self.rotary_max_wavelength = rotary_max_wavelength
        self.rotary_scaling_factor = rotary_scaling_factor
        self.rotary_embedding = None
        if rotary_max_wavelength is not None:
            self.rotary_embedding = RotaryEmbedding(
                rotary_max_wavelength, rotary_scaling_factor, dtype=self.dtype_policy,
                name="rotary_embedding",
            )
        self.supports_masking = True

    @property
    def kv_heads(self):
        """The number of key/value heads (`num_key_value_heads`, or `num_heads`)."""
        return self.num_key_value_heads or self.num_heads

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
        self.d_model = d_model
        if self.rotary_embedding is not None and self.head_dim % 2:
            raise ValueError(f"Rotary positions need an even head width; received head_dim={self.head_dim}.")
        d_value = d_model if value_shape is None else check_last_dim("value", value_shape)
        d_key = d_value if key_shape is None else check_last_dim("key", key_shape)
        self.query_dense = self._input_projection("query", d_model, self.num_heads)
        self.key_dense = self._input_projection("key", d_key, self.kv_heads)
        self.value_dense = self._input_projection("value", d_value, self.kv_heads)
        self.output_dense = output_einsum_dense(self.num_heads, self.head_dim, d_model, self.use_bias, self.dtype_policy)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    def _input_projection(self, name, fan_in, heads):
        return input_einsum_dense(name, fan_in, heads, self.head_dim, self.qkv_bias, self.dtype_policy)

    @property
    def projections(self):
        """`{"query", "key", "value", "attention_output"}` -> the EinsumDense sublayers."""
        return {
            "query": self.query_dense, "key": self.key_dense, "value": self.value_dense,
            "attention_output": self.output_dense,
        }

    def cache_spec(self, num_layers=1):
        """The `CacheSpec` of this layer's self-attention cache."""
        return CacheSpec(num_layers, self.kv_heads, self.head_dim, self.compute_dtype)

    # -- projections ---------------------------------------------------------------------------

    def _project(self, x, layers):
        """Project `x` with each EinsumDense in `layers`, as `(batch, heads, length, d_k)`
        (`_attention_ops.project`: one matrix product for float projections)."""
        return project(x, layers, self.head_dim, self.qkv_bias)

    def _rotate(self, tensor, start_index, position_ids):
        if self.rotary_embedding is None:
            return tensor
        return self.rotary_embedding(tensor, start_index=start_index, position_ids=position_ids)

    def compute_key_value_cache(self, value, key=None):
        """Project `value` (and `key`) once into a `(batch, 2, kv_heads, length, d_k)` cache.

        Used for cross-attention during decoding: the encoder output is projected once and the
        cache is passed on every step with `cache_index=None`.
        """
        if not self.built:
            self.build((None, None, value.shape[-1]), value.shape, None if key is None else key.shape)
        # Called outside `__call__`, so no autocast: project in the compute dtype ourselves.
        value = ops.cast(value, self.compute_dtype)
        key = None if key is None else ops.cast(key, self.compute_dtype)
        if key is None:
            keys, values = self._project(value, [self.key_dense, self.value_dense])
        else:
            (keys,) = self._project(key, [self.key_dense])
            (values,) = self._project(value, [self.value_dense])
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
        attention_bias=None,
        position_ids=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
    ):
        check_rank("query", query, 3)
        check_float("query", query)
        check_width("query", query, self.d_model)
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
        start = 0 if cache_index is None else cache_index

        if cache is not None and cache_index is None:
            # Precomputed keys/values (cross-attention): no projection, no update.
            (queries,) = self._project(query, [self.query_dense])
            keys = ops.cast(cache[:, 0], queries.dtype)
            values = ops.cast(cache[:, 1], queries.dtype)
        elif self_attention:
            queries, keys, values = self._project(query, [self.query_dense, self.key_dense, self.value_dense])
            queries = self._rotate(queries, start, position_ids)
            keys = self._rotate(keys, start, position_ids)
        else:
            (queries,) = self._project(query, [self.query_dense])
            if key is value:
                keys, values = self._project(value, [self.key_dense, self.value_dense])
            else:
                (keys,) = self._project(key, [self.key_dense])
                (values,) = self._project(value, [self.value_dense])

        # The explicit, Keras, causal and cache-fill masks merged into `(batch|1, T, S)`.
        mask = masks.attention_mask_of(query, keys, attention_mask, use_causal_mask, cache, cache_index, key_mask)
        if cache is not None and cache_index is not None:
            update = ops.stack([keys, values], axis=1)
            start_indices = [0, 0, 0, ops.cast(cache_index, "int32"), 0]
            cache = ops.slice_update(cache, start_indices, ops.cast(update, cache.dtype))
            keys, values = cache[:, 0], cache[:, 1]
            keys, values = ops.cast(keys, queries.dtype), ops.cast(values, queries.dtype)

        attended, scores = self._compute_attention(
            queries, keys, values, attention_mask=mask, attention_bias=attention_bias,
            training=training, return_attention_scores=return_attention_scores,
        )
        output = self._output_projection(attended)
        outputs = (output,)
        if return_attention_scores:
            outputs += (scores,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _compute_attention(self, query, key, value, attention_mask=None, attention_bias=None,
                           training=None, return_attention_scores=False):
        """The score/softmax/value step; override it to change how heads attend.

        Args:
            query: `(batch, num_heads, query_length, head_dim)`, rotary positions applied.
            key, value: `(batch, num_key_value_heads, key_length, head_dim)`.
            attention_mask: boolean `(batch|1, query_length, key_length)`, True = may attend,
                or None.
            attention_bias: float, broadcastable to `(batch, num_heads, query_length,
                key_length)`, or None.
            training: whether dropout is active.
            return_attention_scores: whether the probabilities are needed.

        Returns:
            `(attended, scores)`: `(batch, num_heads, query_length, head_dim)` and the float
            `(batch, num_heads, query_length, key_length)` probabilities (None when not
            requested and not computed).
        """
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(self.head_dim)
        if self._use_dot_product_attention(attention_bias, training, return_attention_scores):
            attended = ops.dot_product_attention(
                ops.transpose(query, (0, 2, 1, 3)), ops.transpose(key, (0, 2, 1, 3)),
                ops.transpose(value, (0, 2, 1, 3)),
                mask=None if attention_mask is None else ops.expand_dims(attention_mask, 1),
                scale=scale,
            )
            return ops.transpose(attended, (0, 2, 1, 3)), None
        groups = self.num_heads // self.kv_heads
        if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
            key, value = ops.repeat(key, groups, axis=1), ops.repeat(value, groups, axis=1)
        logits = ops.matmul(query * ops.cast(scale, query.dtype), ops.swapaxes(key, -1, -2))
        logits = ops.cast(logits, "float32")  # softmax in float32 under mixed precision
        if attention_mask is not None:
            # An additive bias built on the small (batch|1, T, S) mask: cheaper than a `where` on
            # the full logits (and its gradient); masked logits still end up at -1e9.
            bias = ops.where(attention_mask, 0.0, _MASKED_LOGIT)
            logits = logits + ops.expand_dims(ops.cast(bias, "float32"), 1)
        if attention_bias is not None:
            logits = logits + ops.cast(attention_bias, "float32")
        # One key (static length 1): every probability is exactly 1 (masked logits are finite),
        # and Keras warns about a softmax over a size-1 axis, so the ones are written directly.
        single_key = logits.shape[-1] == 1
        scores = ops.cast(ops.ones_like(logits) if single_key else ops.softmax(logits, axis=-1), query.dtype)
        attended = ops.matmul(self.dropout_layer(scores, training=training), value)
        return attended, scores

    def _use_dot_product_attention(self, attention_bias, training, return_attention_scores):
        return use_dot_product_attention(self.dropout, attention_bias, training, return_attention_scores)

    def _output_projection(self, attended):
        """`(batch, h, T, d_k)` -> `(batch, T, d_model)` through `attention_output`."""
        return output_projection(self.output_dense, attended, self.use_bias)

    def _check_cache(self, cache):
        CacheSpec(1, self.kv_heads, self.head_dim).check("cache", cache)

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
            masks.check_mask_shape(attention_mask, query, key_length)
        scores_shape = (query.shape[0], self.num_heads, query.shape[1], key_length)
        scores_shape = scores_shape if return_attention_scores else None
        return output_spec(query.shape, self.compute_dtype, scores_shape, cache)

    def compute_mask(self, query, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            dropout=self.dropout,
            use_bias=self.use_bias,
            num_key_value_heads=self.num_key_value_heads,
            scale=self.scale,
            rotary_max_wavelength=self.rotary_max_wavelength,
            rotary_scaling_factor=self.rotary_scaling_factor,
            qkv_bias=self.qkv_bias,
        )
        return config
