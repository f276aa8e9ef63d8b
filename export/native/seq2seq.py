"""Encoder-decoder generation graphs in optimum's seq2seq convention (`ORTModelForSeq2SeqLM`).

Three files, the names Hugging Face optimum exports and loads:

* `encoder_model.onnx`: int64 `input_ids`, `attention_mask` `(batch, encoder_sequence)` ->
  `last_hidden_state` `(batch, encoder_sequence, d_model)`.
* `decoder_model.onnx` (the first step): int64 `input_ids` `(batch, decoder_sequence)`,
  `encoder_attention_mask`, float `encoder_hidden_states` -> `logits`, `present.{i}.decoder.key`
  / `.value` (the self-attention cache) and `present.{i}.encoder.key` / `.value` (the
  cross-attention keys/values, computed once here).
* `decoder_with_past_model.onnx` (every later step): `input_ids`, `encoder_attention_mask`,
  `past_key_values.{i}.decoder.*` and `past_key_values.{i}.encoder.*` -> `logits` and
  `present.{i}.decoder.*`.

Caches are `(batch, kv_heads, length, head_dim)`. Decoder positions count the cached steps
(seq2seq decoding runs every row in lockstep from the start token, so there is no decoder-side
padding). A source key is attended when its `attention_mask` is 1 *and* it is not the model's
pad id, which is Keras's mask whenever `attention_mask` marks the padding (as tokenizers do).
"""

import json

from export.native.blocks import emit_cross_attention_cache, emit_decoder_block, emit_encoder_block
from export.native.cache import cache_shape, past_length
from export.native.graph import GraphBuilder
from export.native.layers import emit_attention_masks, emit_key_valid, emit_positions
from export.native.models import (
    DEFAULT_OPSET,
    check_attention,
    check_supported,
    emit_lm_logits,
    emit_stack_embedding,
    finish_stack,
    new_stream,
)
from export.seq2seq_decoding import DECODER_FILE, DECODER_WITH_PAST_FILE, ENCODER_FILE, SEQ2SEQ_FILES  # noqa: F401
from keras_transformer.models import EncoderDecoderTransformer



def _as_int32(g, ids):
    return g.op("Cast", ids, to=6, name="ids_int32")


def _as_bool(g, mask):
    return g.op("Cast", mask, to=9, name="mask_bool")


def _build_encoder(model, opset, kind):
    g = GraphBuilder(f"{model.name}_encoder_model", opset)
    ids = _as_int32(g, g.input("input_ids", "int64", ["batch", "encoder_sequence"]))
    attention_mask = g.input("attention_mask", "int64", ["batch", "encoder_sequence"])
    key_valid = g.op("And", emit_key_valid(g, ids, model.pad_id), _as_bool(g, attention_mask), name="source_valid")
    positions = emit_positions(g, ids)
    stream = new_stream(g, emit_stack_embedding(g, model.source_stack, ids, positions), kind)
    masks = emit_attention_masks(g, kind, ids, key_valid)
    for block in model.encoder_blocks:
        emit_encoder_block(g, block, stream, kind, masks, positions=positions)
    g.output(finish_stack(stream, model.encoder_final_norm), "last_hidden_state", "float32",
             ["batch", "encoder_sequence", model.get_config()["d_model"]])
    return g.model()


def _empty_past(g, model, ids):
    """A zero-length self-attention past `(batch, kv_heads, 0, head_dim)` for the first step."""
    spec = model.cache_spec
    batch = g.op("Shape", ids, start=0, end=1)
    shape = g.op("Concat", batch, g.constant([spec.num_key_value_heads, 0, spec.head_dim]), axis=0)
    empty = g.op("ConstantOfShape", shape, name="empty_past")  # float32 zeros by default
    return empty, empty


def _emit_decoder_steps(g, model, kind, ids, source_mask, cross, past, with_past_inputs):
    """Logits and present self-attention caches of `ids` after `past` (see the module docstring)."""
    start = past_length(g, past[0][0])
    positions = emit_positions(g, ids, start)
    stream = new_stream(g, emit_stack_embedding(g, model.target_stack, ids, positions), kind)
    self_masks = emit_attention_masks(g, kind, ids, causal=True, past_length=start)
    key_valid = _as_bool(g, source_mask)
    cross_masks = emit_attention_masks(g, kind, ids, key_valid)
    presents = [
        emit_decoder_block(g, block, stream, kind, self_masks, cross[i], cross_masks, past=past[i],
                           memory_is_projected=True, positions=positions)
        for i, block in enumerate(model.decoder_blocks)
    ]
    logits = emit_lm_logits(g, model, model.target_embedding, finish_stack(stream, model.decoder_final_norm))
    g.output(logits, "logits", "float32", ["batch", "decoder_sequence", model.target_vocab_size])
    for i, (key, value) in enumerate(presents):  # layer by layer, as optimum's exports
        g.output(key, f"present.{i}.decoder.key", "float32", cache_shape(model, "total_decoder_sequence"))
        g.output(value, f"present.{i}.decoder.value", "float32", cache_shape(model, "total_decoder_sequence"))
        if not with_past_inputs:  # the first step also returns the cross-attention keys/values
            g.output(cross[i][0], f"present.{i}.encoder.key", "float32", cache_shape(model, "encoder_sequence"))
            g.output(cross[i][1], f"present.{i}.encoder.value", "float32", cache_shape(model, "encoder_sequence"))


def _build_decoder(model, opset, kind, with_past):
    name = "decoder_with_past_model" if with_past else "decoder_model"
    g = GraphBuilder(f"{model.name}_{name}", opset)
    ids = _as_int32(g, g.input("input_ids", "int64", ["batch", "decoder_sequence"]))
    source_mask = g.input("encoder_attention_mask", "int64", ["batch", "encoder_sequence"])
    layers = range(len(model.decoder_blocks))
    if with_past:
        past, cross = [], []
        for i in layers:  # optimum pairs inputs with its cache by position: layer by layer
            past.append(tuple(g.input(f"past_key_values.{i}.decoder.{part}", "float32",
                                      cache_shape(model, "past_decoder_sequence")) for part in ("key", "value")))
            cross.append(tuple(g.input(f"past_key_values.{i}.encoder.{part}", "float32",
                                       cache_shape(model, "encoder_sequence")) for part in ("key", "value")))
        _emit_decoder_steps(g, model, kind, ids, source_mask, cross, past, with_past_inputs=True)
        return g.model()
    hidden = g.input("encoder_hidden_states", "float32",
                     ["batch", "encoder_sequence", model.get_config()["d_model"]])
    cross = [emit_cross_attention_cache(g, block, hidden) for block in model.decoder_blocks]
    _emit_decoder_steps(g, model, kind, ids, source_mask, cross, [_empty_past(g, model, ids) for _ in layers],
                        with_past_inputs=False)
    return g.model()


def build_seq2seq_graphs(model, opset=DEFAULT_OPSET, attention="fused"):
    """`{file_name: ModelProto}`: the three optimum seq2seq graphs of an `EncoderDecoderTransformer`."""
    if not isinstance(model, EncoderDecoderTransformer):
        raise TypeError(f"`model` must be an EncoderDecoderTransformer; received {type(model).__name__}.")
    check_supported(model, opset)
    kind = check_attention(attention, model)
    graphs = {
        ENCODER_FILE: _build_encoder(model, opset, kind),
        DECODER_FILE: _build_decoder(model, opset, kind, with_past=False),
        DECODER_WITH_PAST_FILE: _build_decoder(model, opset, kind, with_past=True),
    }
    # what export.decoding needs to drive the folder, as in the other generation graphs
    from export.decoding import GENERATION_METADATA_KEY
    from export.native.cache import generation_metadata

    metadata = {GENERATION_METADATA_KEY: json.dumps(generation_metadata(model, "encoder_decoder")),
                "keras_transformer.native_attention": kind}
    for proto in graphs.values():
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
    return graphs
