"""The fused form of Llama-shaped self-attention: onnxruntime's `com.microsoft.GroupQueryAttention`.

Grouped-query (`kv_heads < heads`, 1 = multi-query) and rotary self-attention, with or without a
cache, is one `GroupQueryAttention` node (onnxruntime >= 1.32 schema: `kv_num_heads`, `scale`,
`causal`, `attention_bias`), after one `com.microsoft.RotaryEmbedding` per query/key when the
layer is rotary. What each input reproduces:

- Rotary positions: where every row has the same positions (a `Range`: full-sequence graphs,
  the encoder-decoder's decoder) and the head width is a multiple of 16, the operator rotates
  (`do_rotary`, packed Q/K/V input); otherwise (the decoder-only cache graph's `position_ids`) a
  separate `com.microsoft.RotaryEmbedding` per query/key, because `do_rotary` takes a prompt's
  positions from `position_ids[0, 0]` only, which a left-padded batch breaks. The cos/sin cache
  is computed in the graph up to the largest position fed, so no length limit is baked in.
- Masks: the operator treats every row as `past + new` keys long (`seqlens_k = total - 1`, no
  right-padding semantics) and applies causality by cache index, as Keras does; padded keys
  (`attention_mask` 0, left or right) are hidden by an additive `attention_bias` of -1e9.
  Non-causal (encoder) self-attention uses `causal=0` with the same bias.
- A merged padding + causality bias (`emit_attention_masks(..., exact_masked_rows=True)`, where a
  query row can be fully masked and Keras averages over *all* keys) is not what the operator's
  own causal mask gives; `supports_grouped` says no and the portable form is used.

The projections stay `export.native.projections` MatMuls (float, LoRA, int8, int4); the output is
`(B, T, heads * head_dim)` like the portable form's.
"""

import numpy as np

from export.native.graph import MICROSOFT_DOMAIN

MASKED_LOGIT = -1e9  # export.native.attention.MASKED_LOGIT (which imports this module)


def supports_grouped(memory, bias):
    """True when `GroupQueryAttention` computes a layer exactly for these `emit_attention`
    arguments: self-attention whose masks are a causal flag and/or a key-padding mask (no
    merged additive `bias`)."""
    return memory is None and bias is None


def _cached(g, key, build):
    """One set of nodes per graph for `key` (the masks and rotary tables all layers share);
    a key naming no positions identifies no sequence, so it is built every time."""
    if key[1] is None:
        return build()
    if key not in g.shared:
        g.shared[key] = build()
    return g.shared[key]


def _lengths(g, query, past, key_padding_mask):
    """`(seqlens_k, total_sequence_length, query_seqlens)`: int32 `(B,)` all `past + T - 1`,
    the int32 scalar `past + T`, and with a past int32 `(B,)` all `T` (else "").

    With a key-padding mask, `past + T` is the mask's width, not the past's length: then the
    past may be a buffer as long as the whole generation, shared with the present (the
    operator writes the new keys/values at `past` and reads `past + T` of them)."""
    shape = g.op("Shape", query)
    batch = g.op("Slice", shape, g.constant([0]), g.constant([1]))
    length = g.op("Cast", g.op("Slice", shape, g.constant([1]), g.constant([2])), to=6)
    total = length
    if past is not None and key_padding_mask is not None:
        total = g.op("Cast", g.op("Shape", key_padding_mask, start=1, end=2), to=6)
    elif past is not None:
        total = g.op("Add", length, g.op("Cast", g.op("Shape", past[0], start=2, end=3), to=6))
    seqlens = g.op("Expand", g.op("Sub", total, g.constant([1], "int32")), batch, name="seqlens_k")
    # Without `query_seqlens` the operator refuses a chunk of more than one token after a past
    # in a batch of more than one row (chunked prefill, the runtimes' teacher forcing).
    query_seqlens = "" if past is None else g.op("Expand", length, batch, name="query_seqlens")
    return seqlens, g.op("Squeeze", total, g.constant([0]), name="total_sequence_length"), query_seqlens


def _padding_bias(g, query, key_padding_mask):
    """`(B, 1, T, S)` additive bias: 0 at real keys, -1e9 at padded ones."""
    valid = g.op("Cast", key_padding_mask, to=9)
    bias = g.op("Where", g.op("Unsqueeze", valid, g.constant([1, 2])), g.constant(0.0, "float32"),
                g.constant(MASKED_LOGIT, "float32"))
    rows = g.op("Concat", g.constant([1, 1]), g.op("Shape", query, start=1, end=2), g.constant([1]), axis=0)
    return g.op("Expand", bias, rows, name="padding_bias")


def _rotary_tables(g, layer, positions):
    """cos/sin caches `(max(positions) + 1, head_dim / 2)` of `layer`'s RotaryEmbedding."""
    rotary, head_dim = layer.rotary_embedding, layer.head_dim
    exponents = np.arange(0, head_dim, 2, dtype="float32") / np.float32(head_dim)
    # `RotaryEmbedding.cos_sin` divides the positions by the scaling factor; dividing the
    # frequencies instead differs by one float32 rounding, far inside the export tolerance.
    inverse = (1.0 / np.power(np.float32(rotary.max_wavelength), exponents) / rotary.scaling_factor).astype("float32")
    count = g.op("Add", g.op("ReduceMax", g.op("Reshape", positions, g.constant([-1])), keepdims=0), g.constant(1))
    # Node names ending in positions_float / positions_column / angles stay float32 under
    # `export.precision`'s fp16 conversion (positions past 2048 are not float16 integers).
    table_positions = g.op("Cast", g.op("Range", g.constant(0), count, g.constant(1)), to=1, name="positions_float")
    column = g.op("Unsqueeze", table_positions, g.constant([-1]), name="positions_column")
    angles = g.op("Mul", column, g.weight("rotary_half_frequencies", inverse), name="angles")
    return g.op("Cos", angles, name="rotary_cos_cache"), g.op("Sin", angles, name="rotary_sin_cache")


def _rotary_positions(g, query, positions):
    """The `(B, T)` `position_ids` of `RotaryEmbedding` from `(T,)` or `(B, T)` positions."""
    return g.op("Expand", positions, g.op("Shape", query, start=0, end=2), name="rotary_position_ids")


# Rotate inside GroupQueryAttention (`do_rotary`, packed Q/K/V input) where that is exact, 8 nodes
# fewer per layer. Measured equal to separate RotaryEmbedding nodes within the noise (separate /
# inside: 1 x 128 0.98-1.08, 16 x 128 0.90-1.09, bench/llama_attention.py); a switch for the bench.
ROTARY_IN_OPERATOR = True


def _same_for_every_row(g, positions):
    """True for `(T,)` positions written by a `Range` (`start .. start + T - 1`, every row)."""
    return ROTARY_IN_OPERATOR and any(node.op_type == "Range" and positions in node.output for node in g.nodes)


def _packed_input(g, q):
    """The `(B, T, (heads + 2 kv_heads) d_k)` Q/K/V MatMul output `q` was split from, or None."""
    for node in g.nodes:
        if node.op_type == "Split" and q == node.output[0] and len(node.output) == 3:
            return node.input[0]
    return None


def emit_grouped_attention(g, layer, q, k, v, causal=False, key_padding_mask=None, past=None, positions=None):
    """`GroupQueryAttention` of projected `(B, T, width)` `q`, `k`, `v`.

    Args:
        g: the graph builder.
        layer: a built `keras_transformer.layers.MultiHeadAttention` (self-attention).
        q, k, v: the projections, `(B, T, heads * head_dim)` and `(B, T, kv_heads * head_dim)`.
        causal: causal masking by cache index.
        key_padding_mask: int32 `(B, past + T)`, 1 at real keys, or None.
        past: `(past_key, past_value)` `(B, kv_heads, P, head_dim)`, or None.
        positions: int64 `(T,)` or `(B, T)` positions of the queries (rotary layers).

    Returns:
        `[output]`, or `[output, present_key, present_value]` with `past`.
    """
    rotary_inputs, rotary = ["", ""], {}
    if layer.rotary_embedding is not None:
        cos, sin = _cached(g, ("rotary", layer.rotary_embedding.max_wavelength,
                               layer.rotary_embedding.scaling_factor, layer.head_dim, positions),
                           lambda: _rotary_tables(g, layer, positions))
    if layer.rotary_embedding is not None and layer.head_dim % 16 == 0 and _same_for_every_row(g, positions):
        rotary_inputs, rotary = [cos, sin], {"do_rotary": 1}
        packed = _packed_input(g, q)
        if packed is not None:
            q, k, v = packed, "", ""
    elif layer.rotary_embedding is None and _packed_input(g, q) is not None:
        q, k, v = _packed_input(g, q), "", ""  # the Q/K/V MatMul's output as it is: no Split
    elif layer.rotary_embedding is not None:
        position_ids = _cached(g, ("rotary_positions", positions), lambda: _rotary_positions(g, q, positions))
        q, k = (g.op("RotaryEmbedding", t, position_ids, cos, sin, domain=MICROSOFT_DOMAIN, num_heads=heads,
                     name=f"rotary_{part}")
                for t, heads, part in ((q, layer.num_heads, "q"), (k, layer.kv_heads, "k")))
    seqlens, total, query_seqlens = _cached(g, ("lengths", positions, key_padding_mask, past is None),
                                            lambda: _lengths(g, q, past, key_padding_mask))
    bias = ""
    if key_padding_mask is not None:
        bias = _cached(g, ("padding_bias", key_padding_mask), lambda: _padding_bias(g, q, key_padding_mask))
    past_inputs = list(past) if past is not None else ["", ""]
    scale = {} if layer.scale is None else {"scale": float(layer.scale)}  # default 1/sqrt(d_k)
    outputs = g.op(
        "GroupQueryAttention", q, k, v, *past_inputs, seqlens, total, *rotary_inputs, "", bias, "", "", "", "",
        "", query_seqlens if causal else "",
        domain=MICROSOFT_DOMAIN, outputs=3, num_heads=layer.num_heads, kv_num_heads=layer.kv_heads,
        causal=int(bool(causal)), **scale, **rotary,
    )
    return list(outputs) if past is not None else [outputs[0]]
