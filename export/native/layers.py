"""ONNX emitters for the keras_transformer layers, written from the layers' weights.

Each emitter takes a `GraphBuilder`, the Keras layer and the names of its input tensors, adds
the nodes computing what the layer's `call` computes at inference, and returns the name of its
output. Attention is emitted in one of two forms (`ATTENTION_KINDS`):

- `"fused"` (onnxruntime contrib operators): self-attention without a cache is one
  `com.microsoft.Attention` (the Q/K/V projection and the attention in one operator); with a
  cache, and for cross-attention, one MatMul for the fused projection and
  `com.microsoft.MultiHeadAttention` (past/present keys and values, key-padding mask, causal
  flag); the feed-forward bias + GELU becomes `BiasGelu`;
- `"portable"`: standard-opset MatMul/Softmax/LayerNormalization only.

Which is faster was measured, not assumed (`bench/onnx_inference.py` times both on every run):
on the 2-core AVX2 CPU of 2026-11 the fused form took 0.90-0.98x (1 x 128) and 0.95-1.00x
(16 x 128) of the portable one's time in two runs, never more, so `export.to_onnx` writes the
fused form (also the operators onnxruntime's GPU providers implement; not measured here).
For self-attention, `Attention` and MatMul + Split + `MultiHeadAttention` measured the same
within noise (1 thread: 21.8 / 22.4 ms at 1 x 128, 353 / 353 ms at 16 x 128).

Masking matches Keras: masked logits become -1e9 before a float32 softmax, so a query row with
no allowed key becomes a uniform average. Where a row can be fully masked (padding together with
causality) the masks are merged into one additive bias; -1e9 + logit rounds to -1e9 in float32
for any |logit| < 32, which reproduces Keras's replacement exactly.

Sub-layer emitters return their output *without* the last bias, `(output, bias)`; the
`export.native.blocks.ResidualStream` adds it together with the residual.
"""

import math

import keras
import numpy as np
from keras import ops

from export.native.graph import MICROSOFT_DOMAIN

ATTENTION_KINDS = ("fused", "portable")
MASKED_LOGIT = -1e9

_ACTIVATIONS = {
    keras.activations.relu: "relu",
    keras.activations.gelu: "gelu",
    keras.activations.silu: "silu",
    keras.activations.tanh: "tanh",
    keras.activations.sigmoid: "sigmoid",
    keras.activations.linear: "linear",
}


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable), dtype="float32")


def activation_name(activation):
    """The emitter name of a Keras activation (name or callable), or None if not supported."""
    if isinstance(activation, dict):  # serialized callable
        activation = activation.get("config", activation.get("class_name"))
    try:
        function = keras.activations.get(activation)
    except (ValueError, TypeError):
        return None
    return _ACTIVATIONS.get(function)


def emit_activation(g, name, x):
    if name == "relu":
        return g.op("Relu", x)
    if name == "gelu":  # exact (erf) GELU, keras's default. Written with Div, not Mul by 1/sqrt(2):
        # onnxruntime fuses only this form (with the bias Add before it) into one BiasGelu.
        inner = g.op("Erf", g.op("Div", x, g.constant(math.sqrt(2.0), "float32")))
        half = g.op("Mul", x, g.constant(0.5, "float32"))
        return g.op("Mul", half, g.op("Add", inner, g.constant(1.0, "float32")))
    if name == "silu":
        return g.op("Mul", x, g.op("Sigmoid", x))
    if name == "tanh":
        return g.op("Tanh", x)
    if name == "sigmoid":
        return g.op("Sigmoid", x)
    if name == "linear":
        return x
    raise ValueError(f"Unsupported activation {name!r}.")


# -- simple layers -------------------------------------------------------------------------------


def layer_norm_supported(layer):
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return list(axis) in ([-1], [2]) and not getattr(layer, "rms_scaling", False)


def _norm_weights(g, layer):
    gamma = _numpy(layer.gamma) if layer.scale else np.ones(layer.beta.shape, "float32")
    beta = _numpy(layer.beta) if layer.center else np.zeros(gamma.shape, "float32")
    return g.weight("gamma", gamma), g.weight("beta", beta)


def emit_layer_norm(g, layer, x):
    """keras.layers.LayerNormalization over the last axis -> ONNX LayerNormalization."""
    gamma, beta = _norm_weights(g, layer)
    return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=float(layer.epsilon), name="LayerNorm")


def emit_dense(g, kernel, bias, x, name):
    """x @ kernel (+ bias)."""
    y = g.op("MatMul", x, g.weight(f"{name}_kernel", _numpy(kernel)), name=f"{name}_MatMul")
    if bias is not None:
        y = g.op("Add", y, g.weight(f"{name}_bias", _numpy(bias)), name=f"{name}_Add")
    return y


def emit_feed_forward(g, layer, x, fused=True):
    """FeedForward without its output bias: returns `(act(x W1 + b1) W2, b2)` so that the caller
    can add `b2` together with the residual. GELU becomes one `BiasGelu` when
    `fused`. Dropout is inactive at inference."""
    name = activation_name(layer.activation)
    inner = g.op("MatMul", x, g.weight("inner_kernel", _numpy(layer.inner_kernel)), name="inner_MatMul")
    inner_bias = g.weight("inner_bias", _numpy(layer.inner_bias))
    if fused and name == "gelu":
        hidden = g.op("BiasGelu", inner, inner_bias, domain=MICROSOFT_DOMAIN)
    else:
        hidden = emit_activation(g, name, g.op("Add", inner, inner_bias, name="inner_Add"))
    output = g.op("MatMul", hidden, g.weight("output_kernel", _numpy(layer.output_kernel)), name="output_MatMul")
    return output, g.weight("output_bias", _numpy(layer.output_bias))


# -- embeddings ------------------------------------------------------------------------------------


def emit_positions(g, token_ids, start=None):
    """int64 positions `start .. start + length - 1` of `(batch, length)` token ids, shape (length,)."""
    length = g.op("Squeeze", g.op("Shape", token_ids, start=1, end=2), g.constant([0]))
    if start is None:
        return g.op("Range", g.constant(0), length, g.constant(1), name="positions")
    return g.op("Range", start, g.op("Add", start, length), g.constant(1), name="positions")


def emit_token_and_position_embedding(g, layer, token_ids, positions):
    """Gather(E, ids) * sqrt(d) + PE(positions); `positions` is an int64 (length,) tensor."""
    embeddings = g.weight(f"{layer.name}/token_embedding", _numpy(layer.embeddings))
    x = g.op("Gather", embeddings, token_ids, name="token_embedding")
    if layer.scale:
        x = g.op("Mul", x, g.constant(math.sqrt(layer.d_model), "float32"), name="scale")
    encoding = layer.position_encoding
    if encoding.mode == "learned":
        table = g.weight("position_embeddings", _numpy(encoding.position_embeddings))
        pe = g.op("Gather", table, positions, name="position_embedding")
    else:
        pe = _emit_sinusoid(g, layer.d_model, encoding.max_wavelength, positions)
    return g.op("Add", x, pe, name="add_positions")


def _emit_sinusoid(g, width, max_wavelength, positions):
    """PE[p, 2i] = sin(p f_i), PE[p, 2i+1] = cos(p f_i), computed in the graph for any length.

    The angles are computed column by column with each frequency repeated twice, then the even
    columns take the sine and the odd ones the cosine: the same float32 products as Keras's
    `sinusoidal_encoding`, without any reshaping.
    """
    half = (width + 1) // 2
    frequencies = ops.exp(ops.arange(half, dtype="float32") * (-2.0 * math.log(max_wavelength) / width))
    repeated = np.repeat(np.asarray(ops.convert_to_numpy(frequencies), "float32"), 2)[:width]
    angles = g.op(
        "Mul",
        g.op("Unsqueeze", g.op("Cast", positions, to=1, name="positions_float"), g.constant([-1]),
             name="positions_column"),
        g.weight("inverse_frequencies", repeated[None, :]),
        name="angles",
    )
    is_even = g.weight("even_columns", (np.arange(width) % 2 == 0)[None, :], dtype="bool")
    return g.op("Where", is_even, g.op("Sin", angles), g.op("Cos", angles), name="sinusoid")


def emit_tied_logits(g, embedding_layer, x):
    """hidden @ E^T with the token embedding stored once; onnxruntime folds the Transpose of the
    initializer at session creation, so the product runs as a plain pre-packed MatMul."""
    embeddings = g.weight(f"{embedding_layer.name}/token_embedding", _numpy(embedding_layer.embeddings))
    transposed = g.op("Transpose", embeddings, perm=[1, 0], name="embedding_transposed")
    return g.op("MatMul", x, transposed, name="logits_MatMul")


# -- masks -------------------------------------------------------------------------------------


def emit_key_valid(g, token_ids, pad_id):
    """(batch, length) bool, True at real tokens."""
    return g.op("Not", g.op("Equal", token_ids, g.constant(pad_id, "int32")), name="key_valid")


def emit_mask_bias(g, query_ids, key_valid=None, causal=False, past_length=None):
    """Additive attention bias `(batch|1, 1, T, S)`: 0 where attention is allowed, -1e9 elsewhere.

    Args:
        query_ids: `(batch, T)` tensor whose second dimension gives T.
        key_valid: `(batch, S)` bool, or None.
        causal: key `j` allowed for query `i` iff `j <= i + past_length`.
        past_length: int64 scalar tensor (number of cached positions) or None for 0.
    """
    allowed = None
    if causal:
        query_positions = emit_positions(g, query_ids, past_length)
        key_length = query_positions if past_length is None else g.op(
            "Range", g.constant(0), g.op("Add", past_length, g.op(
                "Squeeze", g.op("Shape", query_ids, start=1, end=2), g.constant([0]))), g.constant(1))
        allowed = g.op(
            "LessOrEqual",
            g.op("Unsqueeze", key_length, g.constant([0])),
            g.op("Unsqueeze", query_positions, g.constant([1])),
            name="causal",
        )  # (T, S)
    if key_valid is not None:
        valid = g.op("Unsqueeze", key_valid, g.constant([1, 2]))  # (B, 1, 1, S)
        allowed = valid if allowed is None else g.op("And", valid, allowed)
    return g.op("Where", allowed, g.constant(0.0, "float32"), g.constant(MASKED_LOGIT, "float32"),
                name="mask_bias")


def emit_attention_masks(g, kind, query_ids, key_valid=None, causal=False, past_length=None,
                         exact_masked_rows=True):
    """The mask arguments of `emit_attention` for one attention kind.

    The fused operators take a plain key-padding mask and/or the causal flag. When padding and
    causality together can mask a query row completely, Keras makes that row a uniform average
    over *all* keys; `exact_masked_rows` reproduces it with one merged additive bias (the
    portable form always uses the bias). Generation graphs pass False: there, only padding
    query rows can be fully masked, and no real token ever attends to them.
    """
    if key_valid is None and not causal:
        return {}
    if kind == "fused" and key_valid is None:
        return {"causal": True}
    if kind == "fused" and (not causal or not exact_masked_rows):
        return {"key_padding_mask": g.op("Cast", key_valid, to=6, name="key_padding_mask"), "causal": causal}
    return {"bias": emit_mask_bias(g, query_ids, key_valid, causal, past_length)}


# -- attention ---------------------------------------------------------------------------------


def attention_kernels(layer, names):
    kernel = np.concatenate([_numpy(getattr(layer, f"{n}_kernel")) for n in names], axis=1)
    bias = None
    if layer.use_bias:
        bias = np.concatenate([_numpy(getattr(layer, f"{n}_bias")) for n in names])
    return kernel, bias


def emit_attention(g, layer, query, kind="fused", memory=None, key_padding_mask=None,
                   bias=None, causal=False, past=None, memory_is_projected=False):
    """MultiHeadAttention at inference.

    Args:
        g: the graph builder.
        layer: a built `keras_transformer.layers.MultiHeadAttention`.
        query: `(B, T, d_model)`.
        kind: `"fused"` or `"portable"` (see module docstring).
        memory: None for self-attention; `(B, S, d)` to attend to (projected here), or with
            `memory_is_projected` a pair of `(B, h, S, d_k)` keys/values computed once.
        key_padding_mask: `(B, S_total)` int32, 1 at real keys, 0 at padding.
        bias: additive `(B|1, 1, T, S_total)` bias (already containing causality when needed).
        causal: causal masking without a bias (no padding: a row is never fully masked).
        past: `(past_key, past_value)` `(B, h, P, d_k)` for self-attention with a cache; the
            return value is then `(output, present_key, present_value)`.

    Returns:
        `(output, output_bias, *presents)`: the `(B, T, d_model)` output *without* the output
        projection's bias, which the caller folds into the residual (None without biases), then
        the present key/value names when `past` is given.
    """
    heads, head_dim = layer.num_heads, layer.head_dim
    inner = heads * head_dim
    output_bias = g.weight("output_bias", _numpy(layer.output_bias)) if layer.use_bias else None
    if memory is None and past is None and kind == "fused":
        attended = _fused_self_attention(g, layer, query, key_padding_mask, bias, causal)
        return _output_projection(g, layer, attended), output_bias
    if memory is None:
        kernel, qkv_bias = attention_kernels(layer, ("query", "key", "value"))
        qkv = g.op("MatMul", query, g.weight("qkv_kernel", kernel), name="qkv_MatMul")
        q, k, v = g.op("Split", qkv, g.constant([inner] * 3), axis=-1, outputs=3, name="qkv_split")
    elif memory_is_projected:
        kernel, qkv_bias = attention_kernels(layer, ("query",))
        q = g.op("MatMul", query, g.weight("q_kernel", kernel), name="q_MatMul")
        k, v = memory
    else:
        q_kernel, q_bias = attention_kernels(layer, ("query",))
        kv_kernel, kv_bias = attention_kernels(layer, ("key", "value"))
        q = g.op("MatMul", query, g.weight("q_kernel", q_kernel), name="q_MatMul")
        kv = g.op("MatMul", memory, g.weight("kv_kernel", kv_kernel), name="kv_MatMul")
        k, v = g.op("Split", kv, g.constant([inner] * 2), axis=-1, outputs=2, name="kv_split")
        qkv_bias = None if q_bias is None else np.concatenate([q_bias, kv_bias])
    if memory_is_projected and qkv_bias is not None:
        q = g.op("Add", q, g.weight("q_bias", qkv_bias), name="q_Add")
        qkv_bias = None
    if kind == "fused":
        outputs = _fused_attention(g, layer, q, k, v, qkv_bias, key_padding_mask, bias, causal, past)
    elif kind == "portable":
        outputs = _portable_attention(g, layer, q, k, v, qkv_bias, key_padding_mask, bias, causal,
                                      past, memory_is_projected)
    else:
        raise ValueError(f"`attention` must be one of {list(ATTENTION_KINDS)}; received {kind!r}.")
    attended, *present = outputs
    return (_output_projection(g, layer, attended), output_bias, *present)


def _output_projection(g, layer, attended):
    return g.op("MatMul", attended, g.weight("output_kernel", _numpy(layer.output_kernel)), name="output_MatMul")


def _fused_self_attention(g, layer, x, key_padding_mask, bias, causal):
    """com.microsoft.Attention: Q/K/V projection and attention in one operator."""
    kernel, qkv_bias = attention_kernels(layer, ("query", "key", "value"))
    if qkv_bias is None:
        qkv_bias = np.zeros(kernel.shape[1], "float32")
    return g.op(
        "Attention", x, g.weight("qkv_kernel", kernel), g.weight("qkv_bias", qkv_bias),
        key_padding_mask or "", "", bias or "", domain=MICROSOFT_DOMAIN, num_heads=layer.num_heads,
        unidirectional=int(bool(causal)), mask_filter_value=MASKED_LOGIT,
    )


def _fused_attention(g, layer, q, k, v, qkv_bias, key_padding_mask, bias, causal, past):
    inputs = [q, k, v, "" if qkv_bias is None else g.weight("qkv_bias", qkv_bias),
              key_padding_mask or "", bias or ""]
    if past is not None:
        inputs += list(past)
    outputs = g.op(
        "MultiHeadAttention", *inputs, domain=MICROSOFT_DOMAIN,
        outputs=3 if past is not None else 1, num_heads=layer.num_heads,
        unidirectional=int(bool(causal)), mask_filter_value=MASKED_LOGIT,
    )
    return outputs if past is not None else [outputs]


def _portable_attention(g, layer, q, k, v, qkv_bias, key_padding_mask, bias, causal, past,
                        memory_is_projected):
    heads, head_dim = layer.num_heads, layer.head_dim
    inner = heads * head_dim
    if qkv_bias is not None:
        parts = g.op("Split", g.weight("qkv_bias", qkv_bias), g.constant([inner] * 3), axis=0,
                     outputs=3, name="bias_split")
        q, k, v = (g.op("Add", t, b) for t, b in zip((q, k, v), parts))
    split_shape = g.constant([0, 0, heads, head_dim])

    def heads_first(t):  # (B, L, h*dk) -> (B, h, L, dk)
        return g.op("Transpose", g.op("Reshape", t, split_shape), perm=[0, 2, 1, 3])

    q = heads_first(q)
    if not memory_is_projected:
        k, v = heads_first(k), heads_first(v)
    present = []
    if past is not None:
        k = g.op("Concat", past[0], k, axis=2, name="present_key")
        v = g.op("Concat", past[1], v, axis=2, name="present_value")
        present = [k, v]
    scaled_q = g.op("Mul", q, g.constant(1.0 / math.sqrt(head_dim), "float32"), name="scale_q")
    logits = g.op("MatMul", scaled_q, g.op("Transpose", k, perm=[0, 1, 3, 2]), name="logits")
    if key_padding_mask is not None or causal:
        raise ValueError("The portable attention takes its masks as an additive `bias` only.")
    if bias is not None:
        logits = g.op("Add", logits, bias, name="masked_logits")
    scores = g.op("Softmax", logits, axis=-1)
    attended = g.op("Transpose", g.op("MatMul", scores, v), perm=[0, 2, 1, 3])
    return [g.op("Reshape", attended, g.constant([0, 0, inner]), name="merge_heads"), *present]
