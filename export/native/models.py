"""Full-sequence ONNX graphs of the three keras_transformer model families, from their layers.

Emitters are looked up by class through the MRO (`export.native.registry`): a model is
supported when its class is (a subclass of) one of `EncoderDecoderTransformer`,
`EncoderOnlyTransformer` or `DecoderOnlyTransformer` that does not override `call`, and every
layer in it, nested sub-layers included, has an emitter (our layers, and Keras
LayerNormalization / RMSNormalization / Dense / EinsumDense / Embedding / Dropout / Activation,
float, LoRA or int8/int4-quantized). A user's subclass that only adds methods stays native; one
that overrides `call` (or `MultiHeadAttention._compute_attention`) goes through tracing, and
`unsupported_reason` names the layer and why.
"""

import keras

from export.native.blocks import ResidualStream, emit_decoder_block, emit_encoder_block
from export.native.graph import GraphBuilder
from export.native.attention import emit_attention, fused_operator
from export.native.layers import (
    ATTENTION_KINDS,
    activation_name,
    emit_activation,
    emit_attention_masks,
    emit_add_positions,
    emit_dense,
    emit_key_valid,
    emit_feed_forward,
    emit_norm,
    emit_output_bias,
    emit_positions,
    emit_tied_logits,
    emit_token_and_position_embedding,
    layer_norm_supported,
)
from export.native.projections import SUPPORTED_MODES, emit_embedding_lookup, emit_projection
from export.native.registry import emitter_for, lookup, register
from keras_transformer.layers import (
    DecoderBlock,
    FeedForward,
    MultiHeadAttention,
    OutputBias,
    PositionalEncoding,
    RotaryEmbedding,
    TokenAndPositionEmbedding,
)
from keras_transformer.models import (
    DecoderOnlyTransformer,
    EncoderDecoderTransformer,
    EncoderOnlyTransformer,
)

MODEL_CLASSES = (EncoderDecoderTransformer, EncoderOnlyTransformer, DecoderOnlyTransformer)
DEFAULT_OPSET = 17


# Layers emitted inside the model/block emitters: registered so that the MRO lookup knows them.
register(keras.layers.InputLayer)(None)
register(keras.layers.Dropout)(None)
register(keras.layers.Activation)(emit_activation)
register(keras.layers.LayerNormalization)(emit_norm)
register(keras.layers.RMSNormalization)(emit_norm)
register(keras.layers.Dense)(emit_dense)
register(keras.layers.EinsumDense)(emit_projection)
register(keras.layers.Embedding)(emit_embedding_lookup)
register(PositionalEncoding)(emit_add_positions)
register(OutputBias)(emit_output_bias)
register(RotaryEmbedding)(emit_attention)
register(TokenAndPositionEmbedding)(emit_token_and_position_embedding)
register(FeedForward)(emit_feed_forward)
register(MultiHeadAttention, computes=("call", "_compute_attention", "_project", "_output_projection"))(
    emit_attention)


def unsupported_reason(model):
    """Why the native emitter cannot build `model` (a sentence), or None when it can."""
    _, reason = lookup(model)
    if reason:
        return f"{reason} (native export knows {[c.__name__ for c in MODEL_CLASSES]})"
    for layer in model._flatten_layers(include_self=False):
        if layer.dtype_policy.compute_dtype != "float32" and not isinstance(layer, keras.layers.InputLayer):
            # A float32 graph would not reproduce mixed-precision compute within the float32
            # tolerance; tracing exports what the model actually computes.
            return f"layer {layer.path!r} computes in {layer.dtype_policy.compute_dtype}, not float32"
        _, reason = lookup(layer)
        reason = reason or _layer_reason(layer)
        if reason:
            return f"layer {layer.path!r}: {reason}"
    return None


def _layer_reason(layer):
    """What an emitter cannot reproduce in a layer of a known class (None: nothing)."""
    if getattr(layer, "quantization_mode", None) not in SUPPORTED_MODES:
        return f"quantization mode {layer.quantization_mode!r} (native export: float, int8, int4)"
    activation = getattr(layer, "activation", None)
    if isinstance(layer, (keras.layers.Activation, keras.layers.Dense, FeedForward)) or hasattr(layer, "d_ff"):
        if activation is not None and activation_name(activation) is None:
            return f"unsupported activation {activation!r}"
    if isinstance(layer, keras.layers.LayerNormalization) and not layer_norm_supported(layer):
        return "LayerNormalization over a non-last axis or with RMS scaling"
    return None


def supports(model):
    """True when `build(model)` can emit the model natively (else use tracing)."""
    return unsupported_reason(model) is None


def check_attention(attention, model=None):
    """The validated attention kind, the form the graph is written in (its
    `keras_transformer.native_attention` metadata).

    `"fused"` writes every attention layer as one onnxruntime operator
    (`export.native.attention.fused_operator`: `Attention`/`MultiHeadAttention`, or
    `GroupQueryAttention` for grouped-query/rotary self-attention); a model with an attention no
    fused operator computes (grouped-query cross-attention; grouped-query/rotary attention whose
    head width is not a multiple of 8) is written `"portable"`.
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"`attention` must be one of {list(ATTENTION_KINDS)}; received attention={attention!r}.")
    if model is not None:
        cross = {id(block.cross_attention_layer) for block in model._flatten_layers()
                 if isinstance(block, DecoderBlock) and block.cross_attention}
        if any(fused_operator(layer, id(layer) in cross) is None for layer in model._flatten_layers()
               if isinstance(layer, MultiHeadAttention)):
            return "portable"
    return attention


def check_supported(model, opset):
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(f"The native ONNX emitter does not support this model: {reason}; use method='tracing'.")
    if not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise ValueError(f"`opset` must be an integer >= {DEFAULT_OPSET}; received opset={opset!r}.")


def emit_embedding(g, layer, ids, start=None, positions=None):
    """Token + position embedding of `ids` at positions `start ..` (or the given positions)."""
    with g.scoped(layer.name):
        positions = emit_positions(g, ids, start) if positions is None else positions
        return emit_token_and_position_embedding(g, layer, ids, positions)


def emit_stack_embedding(g, stack, ids, positions):
    """One stack's embedding in EncoderDecoderTransformer (`model.source_stack` /
    `model.target_stack`): tokens (+ shared positions) [+ the stack's own positions]
    [-> embedding norm]; dropout is inactive at inference."""
    token_layer, position, norm, _ = stack
    x = emit_embedding(g, token_layer, ids, positions=positions)
    if position is not None:
        with g.scoped(position.name):
            x = emit_add_positions(g, position, x, positions, token_layer.d_model)
    if norm is not None:
        with g.scoped(norm.name):
            x = emit_norm(g, norm, x)
    return x


def finish_stack(stream, final_norm):
    """The stack's output: its final LayerNorm (pre-norm models) or the state as it is."""
    return stream.norm(final_norm, replace=True) if final_norm is not None else stream.value()


def new_stream(g, x, kind):
    return ResidualStream(g, x, fused=kind == "fused")


def emit_lm_logits(g, model, embedding, x):
    """The vocabulary projection: tied embedding or the Dense `lm_head`."""
    if model.tie_embeddings:
        return emit_tied_logits(g, embedding, x)
    with g.scoped(model.lm_head.name):
        return emit_dense(g, model.lm_head, x, "lm_head")


def emit_decoder_only_body(g, model, ids, kind, past=None, start=None, key_valid=None, positions=None):
    """Embedding and decoder blocks; returns `(hidden, presents)` (presents only with `past`).
    `positions`: int64 `(batch, T)` token positions (default `start .. start + T - 1`)."""
    positions = emit_positions(g, ids, start) if positions is None else positions
    stream = new_stream(g, emit_embedding(g, model.token_embedding, ids, positions=positions), kind)
    masks = emit_attention_masks(g, kind, ids, key_valid, causal=True, past_length=start,
                                 exact_masked_rows=past is None)
    presents = []
    for i, block in enumerate(model.decoder_blocks):
        present = emit_decoder_block(g, block, stream, kind, masks, past=None if past is None else past[i],
                                     positions=positions)
        if past is not None:
            presents.append(present)
    return finish_stack(stream, model.final_norm), presents


def emit_encoder_stack(g, model, ids, kind):
    """Encoder of EncoderDecoderTransformer: `(encoder_output, source_key_valid)`."""
    key_valid = emit_key_valid(g, ids, model.pad_id)
    positions = emit_positions(g, ids)
    stream = new_stream(g, emit_stack_embedding(g, model.source_stack, ids, positions), kind)
    masks = emit_attention_masks(g, kind, ids, key_valid)
    for block in model.encoder_blocks:
        emit_encoder_block(g, block, stream, kind, masks, positions=positions)
    return finish_stack(stream, model.encoder_final_norm), key_valid


def _decoder_only(g, model, kind):
    ids = g.input("token_ids", "int32", ["batch", "sequence"])
    x, _ = emit_decoder_only_body(g, model, ids, kind)
    logits = emit_lm_logits(g, model, model.token_embedding, x)
    g.output(logits, "logits", "float32", ["batch", "sequence", model.vocab_size])


def _encoder_decoder(g, model, kind):
    source = g.input("encoder_token_ids", "int32", ["batch", "encoder_sequence"])
    target = g.input("decoder_token_ids", "int32", ["batch", "decoder_sequence"])
    memory, key_valid = emit_encoder_stack(g, model, source, kind)
    positions = emit_positions(g, target)
    stream = new_stream(g, emit_stack_embedding(g, model.target_stack, target, positions), kind)
    self_masks = emit_attention_masks(g, kind, target, causal=True)
    cross_masks = emit_attention_masks(g, kind, target, key_valid)
    for block in model.decoder_blocks:
        emit_decoder_block(g, block, stream, kind, self_masks, memory, cross_masks, positions=positions)
    y = finish_stack(stream, model.decoder_final_norm)
    logits = emit_lm_logits(g, model, model.target_embedding, y)
    g.output(logits, "logits", "float32", ["batch", "decoder_sequence", model.target_vocab_size])


def _encoder_only(g, model, kind):
    config = model.get_config()
    ids = g.input("token_ids", "int32", ["batch", "sequence"])
    segments = g.input("segment_ids", "int32", ["batch", "sequence"]) if config["num_segments"] else None
    key_valid = emit_key_valid(g, ids, model.pad_id)
    positions = emit_positions(g, ids)
    x = emit_embedding(g, model.token_embedding, ids, positions=positions)
    if segments is not None:
        with g.scoped(model.segment_embedding.name):
            segment = emit_embedding_lookup(g, model.segment_embedding, segments, "segment_embedding")
            x = g.op("Add", x, segment, name="add_segments")
    if model.embedding_norm is not None:
        with g.scoped(model.embedding_norm.name):
            x = emit_norm(g, model.embedding_norm, x)
    stream = new_stream(g, x, kind)
    masks = emit_attention_masks(g, kind, ids, key_valid)
    for block in model.encoder_blocks:
        emit_encoder_block(g, block, stream, kind, masks, positions=positions)
    x = finish_stack(stream, model.get_layer("final_norm") if config["norm_first"] else None)
    head = config["head"]
    pooled = None
    if config["pooler"]:
        pooled = _dense_layer(g, model.get_layer("pooler"), g.op("Gather", x, g.constant(0), axis=1, name="cls"))
    if head is None:
        g.output(x, "hidden_states", "float32", ["batch", "sequence", config["d_model"]])
        if pooled is not None:
            g.output(pooled, "pooled_output", "float32", ["batch", config["d_model"]])
        return
    if head == "masked_lm":
        x = _dense_layer(g, model.get_layer("mlm_transform"), x)
        with g.scoped("mlm_norm"):
            x = emit_norm(g, model.get_layer("mlm_norm"), x)
        logits = emit_tied_logits(g, model.token_embedding, x)
        if config["mlm_output_bias"]:
            with g.scoped("mlm_output_bias"):
                logits = emit_output_bias(g, model.get_layer("mlm_output_bias"), logits)
        g.output(logits, "logits", "float32", ["batch", "sequence", config["vocab_size"]])
        return
    shape = ["batch", "sequence", config["num_classes"]]
    if head == "classification":
        shape = ["batch", config["num_classes"]]
        if pooled is not None:
            x = pooled
        elif config["pooling"] == "cls":
            x = g.op("Gather", x, g.constant(0), axis=1, name="cls_pooling")
        else:
            weights = g.op("Unsqueeze", g.op("Cast", key_valid, to=1), g.constant([-1]))
            total = g.op("ReduceSum", g.op("Mul", x, weights), g.constant([1]), keepdims=0)
            count = g.op("ReduceSum", weights, g.constant([1]), keepdims=0)
            count = g.op("Max", count, g.constant(1.0, "float32"))
            x = g.op("Div", total, count, name="mean_pooling")
    logits = _dense_layer(g, model.get_layer("classifier"), x)
    g.output(logits, "logits", "float32", shape)


def _dense_layer(g, layer, x):
    with g.scoped(layer.name):
        return emit_dense(g, layer, x, "dense")


register(DecoderOnlyTransformer)(_decoder_only)
register(EncoderDecoderTransformer)(_encoder_decoder)
register(EncoderOnlyTransformer)(_encoder_only)


def build(model, opset=DEFAULT_OPSET, attention="fused"):
    """The full-sequence ONNX graph of `model`, written from its layers' weights.

    Args:
        model: an `EncoderDecoderTransformer`, `EncoderOnlyTransformer` or
            `DecoderOnlyTransformer` (see `supports`).
        opset: default-domain opset, >= 17.
        attention: `"fused"` (onnxruntime's MultiHeadAttention operator) or `"portable"`
            (standard MatMul/Softmax only).

    Returns:
        An `onnx.ModelProto` with the model's input and output names and the dynamic axes
        `batch`, `sequence`, `encoder_sequence`, `decoder_sequence`.

    Example:
    >>> proto = build(DecoderOnlyTransformer(50, 1, 16, 2, 32))  # doctest: +SKIP
    >>> [i.name for i in proto.graph.input]  # doctest: +SKIP
    ['token_ids']
    """
    check_supported(model, opset)
    kind = check_attention(attention, model)
    g = GraphBuilder(model.name, opset)
    emitter_for(model)(g, model, kind)
    return g.model(metadata={"keras_transformer.native_attention": kind})
