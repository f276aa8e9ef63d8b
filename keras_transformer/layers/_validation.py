"""Argument checks shared by the layers: each raises ValueError naming the argument and the value."""


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


def check_rank(name, tensor, ranks):
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    shape = tuple(tensor.shape)
    if len(shape) not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"`{name}` must have rank {expected}; received a tensor of shape {shape} "
            f"(rank {len(shape)})."
        )


def check_last_dim(name, shape):
    if shape[-1] is None:
        raise ValueError(
            f"The last dimension of `{name}` must be known when the layer is built; "
            f"received shape {tuple(shape)}."
        )
    return int(shape[-1])
