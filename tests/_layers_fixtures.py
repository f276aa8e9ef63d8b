"""Plain-NumPy (float64) versions of the paper's formulas, used as references by the layer tests.

Each function takes the weights read from a built layer, so the comparison checks the layer's
arithmetic, not its initialisation.
"""

import numpy as np


def weights_of(layer):
    """`{weight path below the layer: float64 array}` for a built layer, "/" written "_", e.g.
    `{"query_kernel": ...}`; multi-head kernels and biases are flattened to the 2-D matrix /
    1-D vector of the paper's formulas (`(d_in, heads * d_k)`, `(heads * d_k, d_model)`)."""
    weights = {}
    for w in layer.weights:
        name = w.path[len(layer.path) + 1:].replace("/", "_")
        value = np.asarray(w.numpy(), np.float64)
        if name.endswith("bias") or name.startswith("attention_output_kernel"):
            value = value.reshape(-1, value.shape[-1]) if name.endswith("kernel") else value.reshape(-1)
        elif value.ndim == 3:  # (d_in, heads, d_k)
            value = value.reshape(value.shape[0], -1)
        weights[name] = value
    return weights


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


def rotary(x, positions, max_wavelength=10000.0, scaling_factor=1.0):
    """RoPE, "rotate half" form, written out pair by pair: feature i pairs with i + d/2 and
    both rotate by `position / scaling_factor * max_wavelength^(-2i/d)`. `x` is
    `(batch, heads, length, d)`, `positions` `(length,)` or `(batch, length)`."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    positions = np.asarray(positions, np.float64)
    positions = positions.reshape((1,) * (2 - positions.ndim) + positions.shape)[:, None, :]
    out = np.empty_like(x)
    for i in range(half):
        angle = positions / scaling_factor * max_wavelength ** (-2.0 * i / x.shape[-1])
        first, second = x[..., i], x[..., i + half]
        out[..., i] = first * np.cos(angle) - second * np.sin(angle)
        out[..., i + half] = second * np.cos(angle) + first * np.sin(angle)
    return out


def multi_head_attention(layer, query, value=None, key=None, mask=None, bias=None, positions=None):
    """`Concat(head_1..h) W_O`, `head_i = softmax(Q W_Q^i (K W_K^j)^T * scale + bias) V W_V^j`.

    Query head `i` reads key/value head `j = i // (h / kv_heads)` (grouped-query attention).
    With a rotary layer, queries and keys are rotated by `positions` (default `0..T-1`).
    `mask` is boolean `(batch|1, T, S)` (True = may attend); masked logits are -inf, as in the
    paper; `bias` is added to the logits. Returns `(output, scores)`, scores `(batch, h, T, S)`.
    """
    w = weights_of(layer)
    value = query if value is None else value
    key = value if key is None else key
    heads, kv_heads, head_dim = layer.num_heads, layer.kv_heads, layer.head_dim

    def project(x, name, count):
        y = np.asarray(x, np.float64) @ w[f"{name}_kernel"] + w.get(f"{name}_bias", 0.0)
        batch, length, _ = y.shape
        return y.reshape(batch, length, count, head_dim).transpose(0, 2, 1, 3)

    q, k, v = project(query, "query", heads), project(key, "key", kv_heads), project(value, "value", kv_heads)
    if layer.rotary_max_wavelength is not None:
        positions = np.arange(q.shape[2]) if positions is None else positions
        q = rotary(q, positions, layer.rotary_max_wavelength, layer.rotary_scaling_factor)
        k = rotary(k, positions, layer.rotary_max_wavelength, layer.rotary_scaling_factor)
    group = heads // kv_heads
    k = np.stack([k[:, i // group] for i in range(heads)], axis=1)
    v = np.stack([v[:, i // group] for i in range(heads)], axis=1)
    scale = layer.scale if layer.scale is not None else 1.0 / np.sqrt(head_dim)
    logits = q @ k.transpose(0, 1, 3, 2) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if mask is not None:
        mask = np.asarray(mask, bool)
        mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape)
        logits = np.where(mask[:, None], logits, -np.inf)
    scores = softmax(logits)
    attended = (scores @ v).transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], -1)
    return attended @ w["attention_output_kernel"] + w.get("attention_output_bias", 0.0), scores


def feed_forward(layer, x, activation=lambda h: np.maximum(0.0, h)):
    """act(x W1 + b1) W2 + b2, or gated: (act(x Wg + bg) * (x W1 + b1)) W2 + b2."""
    w = weights_of(layer)
    x = np.asarray(x, np.float64)
    hidden = x @ w["intermediate_dense_kernel"] + w.get("intermediate_dense_bias", 0.0)
    if layer.gated:
        hidden = activation(x @ w["gate_dense_kernel"] + w.get("gate_dense_bias", 0.0)) * hidden
    else:
        hidden = activation(hidden)
    return hidden @ w["output_dense_kernel"] + w.get("output_dense_bias", 0.0)


def rms_norm(layer, x):
    """x / sqrt(mean(x^2) + eps) * scale."""
    w = weights_of(layer)
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + layer.epsilon) * w["scale"]


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
