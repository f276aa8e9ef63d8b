"""Plain-NumPy (float64) versions of the paper's formulas, used as references by the layer tests.

Each function takes the weights read from a built layer, so the comparison checks the layer's
arithmetic, not its initialisation.
"""

import numpy as np


def weights_of(layer):
    """`{weight path tail: float64 array}` for a built layer, e.g. `{"query_kernel": ...}`."""
    return {w.path.split("/")[-1]: np.asarray(w.numpy(), np.float64) for w in layer.weights}


def randomize(layer_or_model, scale=0.3, seed=0):
    """Give every weight random values (biases and LayerNorm gains included), so that zeros/ones
    initialisers cannot hide a bug."""
    rng = np.random.default_rng(seed)
    for weight in layer_or_model.weights:
        weight.assign(rng.normal(scale=scale, size=weight.shape).astype(weight.dtype))


def sinusoid(length, width, start_index=0, base=10000.0):
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d))."""
    table = np.zeros((length, width))
    for pos in range(length):
        for column in range(width):
            i = column // 2
            angle = (start_index + pos) / base ** (2 * i / width)
            table[pos, column] = np.sin(angle) if column % 2 == 0 else np.cos(angle)
    return table


def softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def multi_head_attention(layer, query, value=None, key=None, mask=None):
    """`Concat(head_1..h) W_O`, `head_i = softmax(Q W_Q^i (K W_K^i)^T / sqrt(d_k)) V W_V^i`.

    `mask` is boolean `(batch|1, T, S)` (True = may attend); masked logits are -inf, as in the
    paper. Returns `(output, scores)` with scores `(batch, heads, T, S)`.
    """
    w = weights_of(layer)
    value = query if value is None else value
    key = value if key is None else key
    heads, head_dim = layer.num_heads, layer.head_dim

    def project(x, name):
        y = np.asarray(x, np.float64) @ w[f"{name}_kernel"] + w.get(f"{name}_bias", 0.0)
        batch, length, _ = y.shape
        return y.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

    q, k, v = project(query, "query"), project(key, "key"), project(value, "value")
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim)
    if mask is not None:
        mask = np.asarray(mask, bool)
        mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape)
        logits = np.where(mask[:, None], logits, -np.inf)
    scores = softmax(logits)
    attended = (scores @ v).transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], -1)
    return attended @ w["output_kernel"] + w.get("output_bias", 0.0), scores


def feed_forward(layer, x):
    """max(0, x W1 + b1) W2 + b2."""
    w = weights_of(layer)
    hidden = np.maximum(0.0, np.asarray(x, np.float64) @ w["inner_kernel"] + w["inner_bias"])
    return hidden @ w["output_kernel"] + w["output_bias"]


def layer_norm(layer, x):
    w = weights_of(layer)
    mean = x.mean(axis=-1, keepdims=True)
    variance = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + layer.epsilon) * w["gamma"] + w["beta"]


def encoder_block(block, x, mask=None):
    """The paper's encoder layer (post-norm), or pre-norm when `block.norm_first` (no dropout)."""
    x = np.asarray(x, np.float64)

    def sublayer(x, function, norm):
        if block.norm_first:
            return x + function(layer_norm(norm, x))
        return layer_norm(norm, x + function(x))

    x = sublayer(
        x,
        lambda h: multi_head_attention(block.self_attention, h, mask=mask)[0],
        block.self_attention_norm,
    )
    return sublayer(x, lambda h: feed_forward(block.feed_forward, h), block.feed_forward_norm)
