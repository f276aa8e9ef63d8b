"""Mask helpers shared by every attention layer.

All masks are boolean with the convention **True = may attend**. Attention masks have shape
`(batch, query_length, key_length)` or anything that broadcasts to it; padding masks have shape
`(batch, length)` and mark real (non-pad) positions.
"""

from keras import ops

from keras_transformer.layers._validation import check_rank


def causal_mask(query_length, key_length=None, start_index=0):
    """Lower-triangular mask: query position `i` may attend key position `j` iff `j <= i + start_index`.

    Args:
        query_length: number of query positions (int or scalar tensor).
        key_length: number of key positions; defaults to `query_length + start_index`.
        start_index: absolute position of the first query (the number of cached positions
            during incremental decoding).

    Returns:
        Boolean tensor of shape `(1, query_length, key_length)`.

    Example:
    >>> causal_mask(3)[0]  # doctest: +SKIP
    [[ True, False, False],
     [ True,  True, False],
     [ True,  True,  True]]
    """
    if key_length is None:
        key_length = query_length + start_index
    query_positions = ops.arange(query_length, dtype="int32") + ops.cast(start_index, "int32")
    key_positions = ops.arange(key_length, dtype="int32")
    return ops.expand_dims(key_positions[None, :] <= query_positions[:, None], 0)


def padding_mask(token_ids, pad_id=0):
    """Boolean `(batch, length)` mask that is True where `token_ids != pad_id`."""
    if len(token_ids.shape) != 2:
        raise ValueError(
            f"`token_ids` must have rank 2 (batch, length); received shape {tuple(token_ids.shape)}."
        )
    return ops.not_equal(token_ids, ops.cast(pad_id, token_ids.dtype))


def merge_masks(padding_mask=None, attention_mask=None, causal=None):
    """Combine a key padding mask, an attention mask and a causal mask into one attention mask.

    Args:
        padding_mask: `(batch, key_length)` boolean, True at real key positions.
        attention_mask: `(batch, query_length, key_length)` boolean or broadcastable.
        causal: a mask from `causal_mask`, `(1, query_length, key_length)`.

    Returns:
        A boolean mask broadcastable to `(batch, query_length, key_length)`, or None when every
        argument is None. An explicit mask is combined with the others by logical AND.
    """
    merged = None
    if padding_mask is not None:
        if len(padding_mask.shape) != 2:
            raise ValueError(
                "`padding_mask` must have shape (batch, key_length); received shape "
                f"{tuple(padding_mask.shape)}."
            )
        merged = ops.expand_dims(ops.cast(padding_mask, "bool"), 1)
    for mask in (attention_mask, causal):
        if mask is None:
            continue
        mask = ops.cast(mask, "bool")
        if len(mask.shape) == 2:
            mask = ops.expand_dims(mask, 0)
        merged = mask if merged is None else ops.logical_and(merged, mask)
    return merged


def keras_mask_of(tensor):
    """The Keras mask a masking layer (e.g. `mask_zero=True`) attached to `tensor`, or None."""
    if tensor is None:
        return None
    try:  # Keras 3 keeps the accessor internal; it also covers backends without tensor attributes.
        from keras.src.backend.common.masking import get_keras_mask
    except ImportError:  # pragma: no cover - older/newer Keras layouts
        return getattr(tensor, "_keras_mask", None)
    return get_keras_mask(tensor)


def check_mask_shape(attention_mask, query, key_length, name="attention_mask"):
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


def attention_mask_of(query, keys, attention_mask, use_causal_mask, cache, cache_index, key_mask):
    """`MultiHeadAttention`'s one boolean `(batch|1, T, S)` mask (or None): the explicit
    `attention_mask` (else the Keras `key_mask`), causality, and with a cache being written
    (`cache_index`) only its filled part.

    Args:
        query: `(batch, T, d)`.
        keys: `(batch, kv_heads, S, d_k)` projected keys (their length is S without a cache).
        attention_mask, use_causal_mask, cache, cache_index: as `MultiHeadAttention.call` takes them.
        key_mask: the Keras mask of the keys, used when there is no `attention_mask`.
    """
    query_length = ops.shape(query)[1]
    key_length = ops.shape(keys)[2] if cache is None else ops.shape(cache)[3]
    if attention_mask is not None:
        check_mask_shape(attention_mask, query, key_length)
    elif key_mask is not None and cache is None:
        attention_mask = ops.expand_dims(ops.cast(key_mask, "bool"), 1)
    causal = None
    if cache is not None and cache_index is not None:
        # Only the filled part of the cache (and, if causal, the past of each query) counts.
        if use_causal_mask:
            causal = causal_mask(query_length, key_length, cache_index)
        else:
            filled = ops.arange(key_length, dtype="int32") < ops.cast(cache_index, "int32") + query_length
            causal = ops.reshape(filled, (1, 1, -1))
    elif use_causal_mask:
        causal = causal_mask(query_length, key_length, key_length - query_length)
    return merge_masks(attention_mask=attention_mask, causal=causal)
