"""ONNX emitters for the keras_transformer layers, written from the layers' weights.

Each emitter takes a `GraphBuilder`, the Keras layer and the names of its input tensors, adds
the nodes computing what the layer's `call` computes at inference, and returns the name of its
output. Projections (Dense/EinsumDense/Embedding sublayers) go through
`export.native.projections` (float, LoRA, int8, int4); attention lives in
`export.native.attention` (fused and portable forms). The feed-forward bias + exact GELU
becomes onnxruntime's `BiasGelu` in the fused form.

Sub-layer emitters return their output *without* the last bias, `(output, bias)`; the
`export.native.blocks.ResidualStream` adds it together with the residual.
"""

import math

import keras
import numpy as np
from keras import ops

from export.native.graph import MICROSOFT_DOMAIN
from export.native.projections import (
    emit_embedding_logits,
    emit_embedding_lookup,
    emit_projection,
    projection_bias,
)
from keras_transformer.layers.activations import gelu_approximate

_ACTIVATIONS = {
    gelu_approximate: "gelu_approximate",
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
    from keras_transformer.layers import activations

    if isinstance(activation, dict) and activation.get("config") != "gelu_approximate":  # serialized callable
        activation = activation.get("config", activation.get("class_name"))
    try:
        function = activations.get(activation)
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
    if name == "gelu_approximate":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cubic = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Add", x, g.op("Mul", cubic, g.constant(0.044715, "float32")))
        tanh = g.op("Tanh", g.op("Mul", inner, g.constant(math.sqrt(2.0 / math.pi), "float32")))
        half = g.op("Mul", x, g.constant(0.5, "float32"))
        return g.op("Mul", half, g.op("Add", tanh, g.constant(1.0, "float32")))
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


# The RMS norm form of the fused graphs: None (standard ops, the default), "simplified"
# (SimplifiedLayerNormalization, an onnxruntime operator in the default domain that the ONNX
# checker rejects) or "skip" (SkipSimplifiedLayerNormalization, the residual Add included). A
# switch for `bench/llama_attention.py`: in three interleaved runs neither operator was faster
# than the standard ops (time ratios 1 x 128 / 16 x 128 / decode: simplified 0.99-1.02 /
# 0.88-1.03 / 0.97-1.13, skip 0.93-1.05 / 0.92-1.00 / 0.93-1.42), so the graphs keep them.
RMS_NORM_OPERATOR = None


def emit_norm(g, layer, x, fused=False):
    """LayerNormalization or RMSNormalization (over the last axis) of `x`; `fused` allows
    `RMS_NORM_OPERATOR` for an RMS norm."""
    if isinstance(layer, keras.layers.RMSNormalization):
        if fused and RMS_NORM_OPERATOR == "simplified":
            return g.op("SimplifiedLayerNormalization", x, g.weight("scale", _numpy(layer.scale)), axis=-1,
                        epsilon=float(layer.epsilon), stash_type=1, name="RMSNorm")
        return emit_rms_norm(g, layer, x)
    return emit_layer_norm(g, layer, x)


def emit_skip_rms_norm(g, layer, x, skip, bias=None):
    """`(RMSNorm(x + skip + bias), x + skip + bias)` as one SkipSimplifiedLayerNormalization."""
    outputs = g.op("SkipSimplifiedLayerNormalization", x, skip, g.weight("scale", _numpy(layer.scale)),
                   bias or "", domain=MICROSOFT_DOMAIN, outputs=[None, "", "", None],
                   epsilon=float(layer.epsilon), name="SkipRMSNorm")
    return outputs[0], outputs[3]


def emit_rms_norm(g, layer, x):
    """keras.layers.RMSNormalization: `x / sqrt(mean(x^2) + eps) * scale`, standard ops."""
    square = g.op("Mul", x, x)
    if g.opset >= 18:  # opset 18 made the axes an input
        mean_square = g.op("ReduceMean", square, g.constant([-1]), keepdims=1)
    else:
        mean_square = g.op("ReduceMean", square, axes=[-1], keepdims=1)
    rms = g.op("Sqrt", g.op("Add", mean_square, g.constant(float(layer.epsilon), "float32")))
    return g.op("Mul", g.op("Div", x, rms), g.weight("scale", _numpy(layer.scale)), name="RMSNorm")


def _norm_weights(g, layer):
    gamma = _numpy(layer.gamma) if layer.scale else np.ones(layer.beta.shape, "float32")
    beta = _numpy(layer.beta) if layer.center else np.zeros(gamma.shape, "float32")
    return g.weight("gamma", gamma), g.weight("beta", beta)


def emit_layer_norm(g, layer, x):
    """keras.layers.LayerNormalization over the last axis -> ONNX LayerNormalization."""
    gamma, beta = _norm_weights(g, layer)
    return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=float(layer.epsilon), name="LayerNorm")


def emit_dense(g, layer, x, name):
    """A Keras Dense layer: `act(x @ kernel + bias)` (float, LoRA or quantized)."""
    y = emit_projection(g, layer, x, name, ignore_activation=True)
    return emit_activation(g, activation_name(layer.activation), y)


def emit_feed_forward(g, layer, x, fused=True):
    """FeedForward without its output bias: `(output_dense(hidden) - b2, b2)` so that the caller
    can add `b2` with the residual; `hidden = act(x W1 + b1)` or, gated,
    `act(x Wg + bg) * (x W1 + b1)`. Exact GELU with a float, biased inner projection becomes
    one `BiasGelu` when `fused`. Dropout is inactive at inference."""
    name = activation_name(layer.activation)
    inner_layer = layer.intermediate_dense
    bias = projection_bias(inner_layer)
    if layer.gated:
        gate = emit_activation(g, name, emit_projection(g, layer.gate_dense, x, "gate"))
        hidden = g.op("Mul", gate, emit_projection(g, inner_layer, x, "inner"), name="gated")
    elif fused and name == "gelu" and bias is not None and inner_layer.quantization_mode is None:
        inner = emit_projection(g, inner_layer, x, "inner", bias=False)
        bias_name = g.weight(f"{inner_layer.path}/bias", bias)
        hidden = g.op("BiasGelu", inner, bias_name, domain=MICROSOFT_DOMAIN)
    else:
        hidden = emit_activation(g, name, emit_projection(g, inner_layer, x, "inner"))
    output = emit_projection(g, layer.output_dense, hidden, "output", bias=False)
    output_bias = projection_bias(layer.output_dense)
    return output, None if output_bias is None else g.weight(f"{layer.output_dense.path}/bias", output_bias)


# -- embeddings ------------------------------------------------------------------------------------


def emit_positions(g, token_ids, start=None):
    """int64 positions `start .. start + length - 1` of `(batch, length)` token ids, shape (length,)."""
    length = g.op("Squeeze", g.op("Shape", token_ids, start=1, end=2), g.constant([0]))
    if start is None:
        return g.op("Range", g.constant(0), length, g.constant(1), name="positions")
    return g.op("Range", start, g.op("Add", start, length), g.constant(1), name="positions")


def emit_token_and_position_embedding(g, layer, token_ids, positions):
    """Gather(E, ids) * sqrt(d) + PE(positions); `positions` is an int64 (length,) tensor."""
    x = emit_embedding_lookup(g, layer.token_embedding, token_ids, "token_embedding")
    if layer.scale:
        x = g.op("Mul", x, g.constant(math.sqrt(layer.d_model), "float32"), name="scale")
    encoding = layer.position_encoding
    if encoding is None:  # rotary models: positions enter in attention; BART: added per stack
        return x
    return emit_add_positions(g, encoding, x, positions, layer.d_model)


def emit_add_positions(g, encoding, x, positions, width):
    """`x + PE(positions)` of a PositionalEncoding; a learned table is stored from row
    `offset` on (the rows before position 0 are never read)."""
    if encoding.mode == "learned":
        table = g.weight("position_embeddings", _numpy(encoding.position_embeddings)[encoding.offset:])
        pe = g.op("Gather", table, positions, name="position_embedding")
    else:
        pe = _emit_sinusoid(g, width, encoding.max_wavelength, positions)
    return g.op("Add", x, pe, name="add_positions")


def emit_output_bias(g, layer, x):
    """OutputBias: `x + bias`."""
    return g.op("Add", x, g.weight("bias", _numpy(layer.bias)), name="output_bias")


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
    """hidden @ E^T with the token embedding stored once (shared with the lookup); onnxruntime
    folds the Transpose of a float initializer at session creation."""
    return emit_embedding_logits(g, embedding_layer.token_embedding, x, "logits")


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


# -- attention (export.native.attention; re-exported for the block and model emitters) ------------

from export.native.attention import ATTENTION_KINDS, MASKED_LOGIT, emit_attention  # noqa: E402,F401
