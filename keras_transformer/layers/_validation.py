"""Argument checks shared by the layers: each raises ValueError naming the argument and the value."""

import keras


def check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; received {name}={value!r}.")
    return value


def check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a float in [0, 1); received {name}={value!r}.")
    return float(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; received {name}={value!r}.")
    return value


def check_activation(name, value):
    """Resolve a Keras activation name or callable; ValueError naming `name` if unknown."""
    from keras_transformer.layers import activations

    try:
        return activations.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be a Keras activation name (or \"gelu_approximate\") or a callable; "
            f"received {name}={value!r}."
        ) from error


def check_rank(name, tensor, ranks):
    """`tensor` may be a tensor or a shape tuple (so that `build` can check shapes early)."""
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    shape = tuple(getattr(tensor, "shape", tensor))
    if len(shape) not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"`{name}` must have rank {expected}; received a tensor of shape {shape} "
            f"(rank {len(shape)})."
        )


def check_dims(name, shape, expected, meaning):
    """Each known dim of `shape` must equal the known dim of `expected` at the same place.

    `expected` holds ints or None (unknown, not checked); `meaning` names its dims in the
    message, e.g. "(batch, length)".
    """
    shape = tuple(shape)
    for have, want in zip(shape, expected):
        if isinstance(have, int) and isinstance(want, int) and have != want:
            raise ValueError(
                f"`{name}` must have shape {meaning} = {tuple(expected)}; received shape {shape}."
            )


def check_last_dim(name, shape):
    if shape[-1] is None:
        raise ValueError(
            f"The last dimension of `{name}` must be known when the layer is built; "
            f"received shape {tuple(shape)}."
        )
    return int(shape[-1])


def check_float(name, tensor):
    """TypeError unless `tensor` has a floating dtype (int inputs would be silently truncated)."""
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if "float" not in dtype:
        raise TypeError(f"`{name}` must be a float tensor; received dtype {dtype}.")


def check_width(name, tensor, width):
    """ValueError unless the last dim of `tensor` is `width` (the width the layer was built for)."""
    have = tensor.shape[-1]
    if isinstance(have, int) and have != width:
        raise ValueError(
            f"`{name}` must have last dimension {width} (the width this layer was built for); "
            f"received shape {tuple(tensor.shape)}."
        )


def check_token_ids(name, tensor, vocab_size):
    """TypeError for non-integer ids; ValueError for ids outside [0, vocab_size) when the values
    are known (eager calls). Inside compiled graphs the gather op reports bad ids itself."""
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if "int" not in dtype:
        # Inside a compiled graph the values are unknown, so float ids cannot be checked to be
        # whole numbers here; `generate` and `export.runtime` (numpy inputs) do cast them.
        raise TypeError(
            f"`{name}` must hold integer token ids; received dtype {dtype} (cast float ids with "
            f"keras.ops.cast(ids, 'int32'))."
        )
    try:
        values = keras.ops.convert_to_numpy(tensor)
    except Exception:  # noqa: BLE001 - a symbolic (traced) tensor has no values yet
        return
    if values.size and (values.min() < 0 or values.max() >= vocab_size):
        raise ValueError(
            f"`{name}` must hold token ids in [0, vocab_size={vocab_size}); received ids in "
            f"[{values.min()}, {values.max()}]."
        )


def check_key_value_heads(num_key_value_heads, num_heads):
    """None, or a positive divisor of `num_heads` (grouped-query attention)."""
    check_positive_int("num_key_value_heads", num_key_value_heads, allow_none=True)
    if num_key_value_heads is not None and num_heads % num_key_value_heads:
        raise ValueError(
            "`num_key_value_heads` must divide `num_heads`; received "
            f"num_key_value_heads={num_key_value_heads}, num_heads={num_heads}."
        )
    return num_key_value_heads
