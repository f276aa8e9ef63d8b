"""Full-sequence ONNX graphs of the three keras_transformer model families, from their layers.

A model is supported when it is exactly one of `EncoderDecoderTransformer`,
`EncoderOnlyTransformer` or `DecoderOnlyTransformer` and every layer in it is one the emitters
know (our layers plus Keras LayerNormalization / Dense / Dropout / Activation). Anything else,
e.g. a user's custom layer or a subclass that may override `call`, goes through tracing.
"""

import keras

from export.native.blocks import ResidualStream, emit_decoder_block, emit_encoder_block
from export.native.graph import GraphBuilder
from export.native.layers import (
    ATTENTION_KINDS,
    activation_name,
    emit_activation,
    emit_attention_masks,
    emit_dense,
    emit_key_valid,
    emit_layer_norm,
    emit_positions,
    emit_tied_logits,
    emit_token_and_position_embedding,
    layer_norm_supported,
)
from keras_transformer.layers import DecoderBlock, EncoderBlock, TokenAndPositionEmbedding
from keras_transformer.models import (
    DecoderOnlyTransformer,
    EncoderDecoderTransformer,
    EncoderOnlyTransformer,
)

MODEL_CLASSES = (EncoderDecoderTransformer, EncoderOnlyTransformer, DecoderOnlyTransformer)
DEFAULT_OPSET = 17


def unsupported_reason(model):
    """Why the native emitter cannot build `model` (a sentence), or None when it can."""
    if type(model) not in MODEL_CLASSES:
        return f"{type(model).__name__} is not one of {[c.__name__ for c in MODEL_CLASSES]}"
    for layer in model.layers:
        if layer.dtype_policy.compute_dtype != "float32":
            # A float32 graph would not reproduce mixed-precision compute within the float32
            # tolerance; tracing exports what the model actually computes.
            return f"layer {layer.name!r} computes in {layer.dtype_policy.compute_dtype}, not float32"
        reason = _layer_reason(layer)
        if reason:
            return f"layer {layer.name!r}: {reason}"
    return None


def _layer_reason(layer):
    kind = type(layer)
    if kind in (keras.layers.InputLayer, keras.layers.Dropout):
        return None
    if kind is keras.layers.Activation:
        return None if activation_name(layer.activation) else "unsupported activation"
    if kind is keras.layers.LayerNormalization:
        return None if layer_norm_supported(layer) else "LayerNormalization over a non-last axis or RMS"
    if kind is keras.layers.Dense:
        return None if activation_name(layer.activation) else "unsupported Dense activation"
    if kind is TokenAndPositionEmbedding:
        return None
    if kind in (EncoderBlock, DecoderBlock):
        if activation_name(layer.activation) is None:
            return f"unsupported activation {layer.activation!r}"
        norms = [n for n in ("self_attention_norm", "cross_attention_norm", "feed_forward_norm") if hasattr(layer, n)]
        if not all(layer_norm_supported(getattr(layer, n)) for n in norms):
            return "unsupported LayerNormalization"
        return None
    return f"{kind.__name__} has no native emitter"


def supports(model):
    """True when `build(model)` can emit the model natively (else use tracing)."""
    return unsupported_reason(model) is None


def check_attention(attention):
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"`attention` must be one of {list(ATTENTION_KINDS)}; received attention={attention!r}.")
    return attention


def check_supported(model, opset):
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(f"The native ONNX emitter does not support this model: {reason}; use method='tracing'.")
    if not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise ValueError(f"`opset` must be an integer >= {DEFAULT_OPSET}; received opset={opset!r}.")


def emit_embedding(g, layer, ids, start=None):
    with g.scoped(layer.name):
        return emit_token_and_position_embedding(g, layer, ids, emit_positions(g, ids, start))


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
        return emit_dense(g, model.lm_head.kernel, model.lm_head.bias, x, "lm_head")


def emit_decoder_only_body(g, model, ids, kind, past=None, start=None, key_valid=None):
    """Embedding and decoder blocks; returns `(hidden, presents)` (presents only with `past`)."""
    stream = new_stream(g, emit_embedding(g, model.token_embedding, ids, start), kind)
    masks = emit_attention_masks(g, kind, ids, key_valid, causal=True, past_length=start,
                                 exact_masked_rows=past is None)
    presents = []
    for i, block in enumerate(model.decoder_blocks):
        present = emit_decoder_block(g, block, stream, kind, masks, past=None if past is None else past[i])
        if past is not None:
            presents.append(present)
    return finish_stack(stream, model.final_norm), presents


def emit_encoder_stack(g, model, ids, kind):
    """Encoder of EncoderDecoderTransformer: `(encoder_output, source_key_valid)`."""
    key_valid = emit_key_valid(g, ids, model.pad_id)
    stream = new_stream(g, emit_embedding(g, model.token_embedding, ids), kind)
    masks = emit_attention_masks(g, kind, ids, key_valid)
    for block in model.encoder_blocks:
        emit_encoder_block(g, block, stream, kind, masks)
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
    stream = new_stream(g, emit_embedding(g, model.target_embedding, target), kind)
    self_masks = emit_attention_masks(g, kind, target, causal=True)
    cross_masks = emit_attention_masks(g, kind, target, key_valid)
    for block in model.decoder_blocks:
        emit_decoder_block(g, block, stream, kind, self_masks, memory, cross_masks)
    y = finish_stack(stream, model.decoder_final_norm)
    logits = emit_lm_logits(g, model, model.target_embedding, y)
    g.output(logits, "logits", "float32", ["batch", "decoder_sequence", model.target_vocab_size])


def _encoder_only(g, model, kind):
    config = model.get_config()
    ids = g.input("token_ids", "int32", ["batch", "sequence"])
    key_valid = emit_key_valid(g, ids, model.pad_id)
    stream = new_stream(g, emit_embedding(g, model.token_embedding, ids), kind)
    masks = emit_attention_masks(g, kind, ids, key_valid)
    for block in model.encoder_blocks:
        emit_encoder_block(g, block, stream, kind, masks)
    x = finish_stack(stream, model.get_layer("final_norm") if config["norm_first"] else None)
    head = config["head"]
    if head is None:
        g.output(x, "hidden_states", "float32", ["batch", "sequence", config["d_model"]])
        return
    if head == "masked_lm":
        x = _dense_layer(g, model.get_layer("mlm_transform"), x)
        with g.scoped("mlm_norm"):
            x = emit_layer_norm(g, model.get_layer("mlm_norm"), x)
        logits = emit_tied_logits(g, model.token_embedding, x)
        g.output(logits, "logits", "float32", ["batch", "sequence", config["vocab_size"]])
        return
    shape = ["batch", "sequence", config["num_classes"]]
    if head == "classification":
        shape = ["batch", config["num_classes"]]
        if config["pooling"] == "cls":
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
        y = emit_dense(g, layer.kernel, layer.bias if layer.use_bias else None, x, "dense")
        return emit_activation(g, activation_name(layer.activation), y)


_FAMILIES = {
    DecoderOnlyTransformer: _decoder_only,
    EncoderDecoderTransformer: _encoder_decoder,
    EncoderOnlyTransformer: _encoder_only,
}


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
    kind = check_attention(attention)
    g = GraphBuilder(model.name, opset)
    _FAMILIES[type(model)](g, model, kind)
    return g.model(metadata={"keras_transformer.native_attention": kind})
