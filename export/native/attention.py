"""ONNX emitters for `MultiHeadAttention`: fused (onnxruntime contrib) and portable forms.

- `"fused"` (`fused_operator` says which operator a layer gets):
  - plain multi-head attention (as many key/value heads as query heads, no rotary positions; any
    scale, passed as the operators' `scale`): self-attention without a cache is one
    `com.microsoft.Attention` (projection and attention in one operator); with a cache, and for
    cross-attention, the projections are MatMuls and the attention is one
    `com.microsoft.MultiHeadAttention` (past/present keys and values, key-padding mask, causal flag),
    except with a cache *and* a key-padding mask (the decoder-only cache graph), where it is one
    `com.microsoft.GroupQueryAttention` with as many key/value heads as heads, whose cache can
    be one buffer shared by past and present (`shares_cache_buffer`);
  - grouped-query and/or rotary self-attention, causal or not, with or without a cache: one
    `com.microsoft.GroupQueryAttention` after `com.microsoft.RotaryEmbedding`
    (`export.native.grouped_attention`, where its exactness conditions are written down);
  - grouped-query cross-attention, and head widths that are not a multiple of 8, have no fused
    operator: `export.native.models.check_attention` writes such a model in the portable form.
- `"portable"`: standard MatMul/Softmax ops, with the rotary rotation and the key/value head
  sharing written out.

Projections go through `export.native.projections`, so LoRA (merged kernels) and Keras-quantized
projections (integer weights, `MatMulInteger`/`MatMulNBits`) work in every form; the fused
`Attention` operator takes a float QKV weight and is used only when no projection is quantized.

Masking matches Keras: masked logits become -1e9 before a float32 softmax, so a query row with
no allowed key becomes a uniform average. Where a row can be fully masked (padding together with
causality) the masks are merged into one additive bias; -1e9 + logit rounds to -1e9 in float32
for any |logit| < 32, which reproduces Keras's replacement exactly.

Emitters return the attention output *without* the output projection's bias, `(output, bias)`;
`export.native.blocks.ResidualStream` adds it together with the residual.
"""

import math

import numpy as np

from export.native.graph import MICROSOFT_DOMAIN
from export.native.grouped_attention import emit_grouped_attention, supports_grouped
from export.native.projections import (
    emit_fused_projections,
    emit_projection,
    projection_bias,
    projection_matrix,
)

ATTENTION_KINDS = ("fused", "portable")
MASKED_LOGIT = -1e9


def is_plain(layer):
    """True when `Attention`/`MultiHeadAttention` compute `layer` (no GQA or rotary; any scale)."""
    return layer.kv_heads == layer.num_heads and layer.rotary_embedding is None


def fused_operator(layer, cross_attention=False):
    """The onnxruntime operator of `layer` in the fused form, or None (portable form):
    `GroupQueryAttention` for grouped-query or rotary self-attention, `MultiHeadAttention` (or
    `Attention`) for the rest, portable for grouped-query cross-attention and for head widths
    that are not a multiple of 8 (`GroupQueryAttention`'s CPU kernel rejects them)."""
    if is_plain(layer):
        return "MultiHeadAttention"
    return None if cross_attention or layer.head_dim % 8 else "GroupQueryAttention"


def shares_cache_buffer(g, layer, memory, key_padding_mask, past):
    """True when a plain layer's self-attention with a cache and a key-padding mask, in a graph
    built with `g.shared_cache` (the decoder-only cache graph's default), is emitted as
    `GroupQueryAttention` instead of `MultiHeadAttention`:
    that operator takes the cache length from the mask, so the runtimes can keep one
    `(batch, kv_heads, max_length, head_dim)` buffer per cache tensor for the whole generation
    (past and present bound to the same memory: no copy of the cache per step), which is
    onnxruntime-genai's `past_present_share_buffer` mode and `export.decoding`'s default."""
    return (g.shared_cache and memory is None and past is not None and key_padding_mask is not None
            and layer.head_dim % 8 == 0)  # GroupQueryAttention's CPU kernel needs head_dim % 8 == 0


def _is_float(layers):
    return all(layer.quantization_mode is None for layer in layers)


def output_bias(g, layer):
    bias = projection_bias(layer.output_dense)
    return None if bias is None else g.weight(f"{layer.output_dense.path}/bias", bias)


def emit_attention(g, layer, query, kind="fused", memory=None, key_padding_mask=None,
                   bias=None, causal=False, past=None, memory_is_projected=False, positions=None):
    """MultiHeadAttention at inference.

    Args:
        g: the graph builder.
        layer: a built `keras_transformer.layers.MultiHeadAttention`.
        query: `(B, T, d_model)`.
        kind: `"fused"` or `"portable"` (see module docstring).
        memory: None for self-attention; `(B, S, d)` to attend to (projected here), or with
            `memory_is_projected` a pair of `(B, kv_heads, S, d_k)` keys/values computed once.
        key_padding_mask: `(B, S_total)` int32, 1 at real keys, 0 at padding (fused only).
        bias: additive `(B|1, 1, T, S_total)` bias (already containing causality when needed).
        causal: causal masking without a bias (fused only; a row is never fully masked).
        past: `(past_key, past_value)` `(B, kv_heads, P, d_k)` for self-attention with a cache;
            the return value then ends with the present key/value names.
        positions: int64 `(T,)` or `(B, T)` positions of the queries (rotary layers only).

    Returns:
        `(output, output_bias, *presents)`: the `(B, T, d_model)` output without the output
        projection's bias (None without biases), then the present keys/values with `past`.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"`attention` must be one of {list(ATTENTION_KINDS)}; received {kind!r}.")
    projections = layer.projections
    q_layer, k_layer, v_layer = projections["query"], projections["key"], projections["value"]
    fused = kind == "fused" and is_plain(layer) and not shares_cache_buffer(g, layer, memory, key_padding_mask, past)
    grouped = kind == "fused" and not fused and supports_grouped(memory, bias)
    if memory is None and past is None and fused and _is_float([q_layer, k_layer, v_layer]):
        attended = _fused_self_attention(g, layer, query, key_padding_mask, bias, causal)
        return _output_projection(g, layer, attended), output_bias(g, layer)
    if memory is None:
        q, k, v = emit_fused_projections(g, [q_layer, k_layer, v_layer], query, "qkv")
    elif memory_is_projected:
        q = emit_projection(g, q_layer, query, "q")
        k, v = memory
    else:
        q = emit_projection(g, q_layer, query, "q")
        k, v = emit_fused_projections(g, [k_layer, v_layer], memory, "kv")
    if fused:
        outputs = _fused_attention(g, layer, q, k, v, key_padding_mask, bias, causal, past)
    elif grouped:
        outputs = emit_grouped_attention(g, layer, q, k, v, causal, key_padding_mask, past, positions)
    else:
        if key_padding_mask is not None or causal:
            raise ValueError("The portable attention takes its masks as an additive `bias` only.")
        rotate = memory is None and layer.rotary_embedding is not None
        outputs = _portable_attention(g, layer, q, k, v, bias, past, memory_is_projected,
                                      positions if rotate else None, rotate)
    attended, *present = outputs
    return (_output_projection(g, layer, attended), output_bias(g, layer), *present)


def _output_projection(g, layer, attended):
    return emit_projection(g, layer.output_dense, attended, "output", bias=False)


def _scale(layer):
    """The operators' `scale` attribute: only a custom scale (their default is 1/sqrt(d_k))."""
    return {} if layer.scale is None else {"scale": float(layer.scale)}


def _fused_self_attention(g, layer, x, key_padding_mask, bias, causal):
    """com.microsoft.Attention: Q/K/V projection and attention in one operator."""
    names = ("query", "key", "value")
    kernel = np.concatenate([projection_matrix(layer.projections[n]) for n in names], axis=1)
    biases = [projection_bias(layer.projections[n]) for n in names]
    qkv_bias = np.concatenate([np.zeros(kernel.shape[1] // 3, "float32") if b is None else b for b in biases])
    return g.op(
        "Attention", x, g.weight("qkv_kernel", kernel), g.weight("qkv_bias", qkv_bias),
        key_padding_mask or "", "", bias or "", domain=MICROSOFT_DOMAIN, num_heads=layer.num_heads,
        unidirectional=int(bool(causal)), mask_filter_value=MASKED_LOGIT, **_scale(layer),
    )


def _fused_attention(g, layer, q, k, v, key_padding_mask, bias, causal, past):
    inputs = [q, k, v, "", key_padding_mask or "", bias or ""]
    if past is not None:
        inputs += list(past)
    outputs = g.op(
        "MultiHeadAttention", *inputs, domain=MICROSOFT_DOMAIN,
        outputs=3 if past is not None else 1, num_heads=layer.num_heads,
        unidirectional=int(bool(causal)), mask_filter_value=MASKED_LOGIT, **_scale(layer),
    )
    return outputs if past is not None else [outputs]


def emit_rotary(g, layer, x, positions):
    """RoPE of `(B, heads, T, d_k)` `x` at int64 `positions` `(T,)` or `(B, T)` (rotate half)."""
    rotary = layer.rotary_embedding
    head_dim = layer.head_dim
    exponents = np.arange(0, head_dim, 2, dtype="float32") / float(head_dim)
    inverse = (1.0 / np.power(np.float32(rotary.max_wavelength), exponents) / rotary.scaling_factor).astype("float32")
    # angles (…, T, d_k/2) -> duplicated halves (…, T, d_k)
    angles = g.op("Mul", g.op("Unsqueeze", g.op("Cast", positions, to=1), g.constant([-1])),
                  g.weight("rotary_inverse_frequencies", inverse), name="rotary_angles")
    angles = g.op("Concat", angles, angles, axis=-1)
    cos, sin = g.op("Cos", angles), g.op("Sin", angles)
    if_batched = g.op("Unsqueeze", cos, g.constant([-3]))  # (T, d) -> (1, T, d); (B, T, d) -> (B, 1, T, d)
    cos, sin = if_batched, g.op("Unsqueeze", sin, g.constant([-3]))
    first, second = g.op("Split", x, g.constant([head_dim // 2] * 2), axis=-1, outputs=2)
    rotated = g.op("Concat", g.op("Neg", second), first, axis=-1)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin), name="rotary")


def _portable_attention(g, layer, q, k, v, bias, past, memory_is_projected, positions, rotate):
    heads, kv_heads, head_dim = layer.num_heads, layer.kv_heads, layer.head_dim

    def heads_first(t, count):  # (B, L, count*dk) -> (B, count, L, dk)
        return g.op("Transpose", g.op("Reshape", t, g.constant([0, 0, count, head_dim])), perm=[0, 2, 1, 3])

    q = heads_first(q, heads)
    if not memory_is_projected:
        k, v = heads_first(k, kv_heads), heads_first(v, kv_heads)
    if rotate:
        q, k = emit_rotary(g, layer, q, positions), emit_rotary(g, layer, k, positions)
    present = []
    if past is not None:
        k = g.op("Concat", past[0], k, axis=2, name="present_key")
        v = g.op("Concat", past[1], v, axis=2, name="present_value")
        present = [k, v]
    if kv_heads != heads:  # each key/value head serves `heads / kv_heads` query heads
        k, v = _repeat_heads(g, k, heads // kv_heads), _repeat_heads(g, v, heads // kv_heads)
    scale = layer.scale if layer.scale is not None else 1.0 / math.sqrt(head_dim)
    scaled_q = g.op("Mul", q, g.constant(scale, "float32"), name="scale_q")
    logits = g.op("MatMul", scaled_q, g.op("Transpose", k, perm=[0, 1, 3, 2]), name="logits")
    if bias is not None:
        logits = g.op("Add", logits, bias, name="masked_logits")
    scores = g.op("Softmax", logits, axis=-1)
    attended = g.op("Transpose", g.op("MatMul", scores, v), perm=[0, 2, 1, 3])
    return [g.op("Reshape", attended, g.constant([0, 0, heads * head_dim]), name="merge_heads"), *present]


def _repeat_heads(g, t, groups):
    """(B, kv, L, dk) -> (B, kv * groups, L, dk), each head repeated `groups` times in a row."""
    shape = g.op("Shape", t)
    batch_heads, length_width = (g.op("Slice", shape, g.constant([a]), g.constant([b])) for a, b in ((0, 2), (2, 4)))
    expanded = g.op("Expand", g.op("Unsqueeze", t, g.constant([2])),
                    g.op("Concat", batch_heads, g.constant([groups]), length_width, axis=0))
    merged = g.op("Concat", g.op("Slice", shape, g.constant([0]), g.constant([1])), g.constant([-1]), length_width, axis=0)
    return g.op("Reshape", expanded, merged, name="repeat_heads")


def emit_key_value_cache(g, layer, memory):
    """`layer`'s keys and values of `memory`, `(B, kv_heads, S, d_k)` each, bias included."""
    keys, values = emit_fused_projections(g, [layer.key_dense, layer.value_dense], memory, "kv")

    def heads_first(t):
        shape = g.constant([0, 0, layer.kv_heads, layer.head_dim])
        return g.op("Transpose", g.op("Reshape", t, shape), perm=[0, 2, 1, 3])

    return heads_first(keys), heads_first(values)
