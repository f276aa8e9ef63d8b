"""Generation graphs with a key/value cache, and the function that writes them.

Decoder-only (`decoder_with_past.onnx`), in the convention of the deployment runtimes
(onnxruntime-genai, optimum's `ORTModelForCausalLM`, Hugging Face exports): int64 inputs
`input_ids (batch, sequence)`, `attention_mask (batch, past_sequence + sequence)` (1 = a real
token, 0 = padding) and `position_ids (batch, sequence)`, then `past_key_values.{i}.key` /
`.value` `(batch, kv_heads, past_sequence, head_dim)`; outputs `logits (batch, sequence, vocab)`
and `present.{i}.key` / `.value` (past + new positions). A zero-length past is allowed, so the
same graph runs the prompt and every later step.

Positions come from `position_ids`, not from the cache length, and `attention_mask` hides padded
keys, so a left-padded (or right-padded) batch gives every row the logits it gets alone, as long
as a row's positions count its real tokens only (the runtimes' `cumsum(attention_mask) - 1`).
Causality is by cache index (key `j` is visible to the query at index `past + t` iff
`j <= past + t`), which padding does not disturb.

Shared cache buffers: where every past tensor feeds `GroupQueryAttention` only (the fused form
with head widths that are a multiple of 8: `export.native.attention.shares_cache_buffer`), the
cache length comes from `attention_mask`'s width, so a past may also be a buffer as long as the
whole generation bound to the present output as well (the operator writes the new positions in
place). The generation metadata says so (`past_present_share_buffer`), and `export.decoding`
and onnxruntime-genai (`genai_config.json`) then decode without copying the cache every step.

Encoder-decoder: `encoder.onnx` maps `encoder_token_ids` to `encoder_attention_mask` and the
cross-attention keys/values `cross_key_values.{i}.key` / `.value` of every decoder block,
computed once per input; `decoder.onnx` takes `decoder_token_ids`, `encoder_attention_mask`, the
cross keys/values and the self-attention past, and returns `logits` and `present.*`.
"""

import json
import os

from export.decoding import GENERATION_METADATA_KEY
from export.native.blocks import emit_cross_attention_cache, emit_decoder_block
from export.native.graph import GraphBuilder
from export.native.layers import emit_attention_masks, emit_positions
from export.native.models import (
    DEFAULT_OPSET,
    check_attention,
    check_supported,
    emit_decoder_only_body,
    emit_encoder_stack,
    emit_lm_logits,
    emit_stack_embedding,
    finish_stack,
    new_stream,
)
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer

DECODER_ONLY_FILES = ("decoder_with_past.onnx",)
ENCODER_DECODER_FILES = ("encoder.onnx", "decoder.onnx")


def cache_shape(model, length_axis):
    """`(batch, kv_heads, length, head_dim)`: one layer's keys or values (`model.cache_spec`)."""
    spec = model.cache_spec
    return ["batch", spec.num_key_value_heads, length_axis, spec.head_dim]


def _past_inputs(g, model, num_layers):
    past = []
    for i in range(num_layers):
        key = g.input(f"past_key_values.{i}.key", "float32", cache_shape(model, "past_sequence"))
        value = g.input(f"past_key_values.{i}.value", "float32", cache_shape(model, "past_sequence"))
        past.append((key, value))
    return past


def _present_outputs(g, model, presents):
    for i, (key, value) in enumerate(presents):
        g.output(key, f"present.{i}.key", "float32", cache_shape(model, "total_sequence"))
        g.output(value, f"present.{i}.value", "float32", cache_shape(model, "total_sequence"))


def past_length(g, past_key):
    """int64 scalar: the number of cached positions (axis 2 of a past key)."""
    return g.op("Squeeze", g.op("Shape", past_key, start=2, end=3), g.constant([0]), name="past_length")


def shares_cache_buffers(proto):
    """True when every consumer of every `past_key_values.*` input of `proto` is a
    `GroupQueryAttention` node: then past and present may be one buffer (see the module docstring)."""
    past = {i.name for i in proto.graph.input if i.name.startswith("past_key_values.")}
    consumers = [node for node in proto.graph.node if past.intersection(node.input)]
    return bool(past) and all(node.op_type == "GroupQueryAttention" for node in consumers)


def mark_cache_sharing(proto):
    """Record `shares_cache_buffers(proto)` in `proto`'s generation metadata (in place, after
    any precision conversion, which may put nodes between the past inputs and the attention)."""
    for prop in proto.metadata_props:
        if prop.key == GENERATION_METADATA_KEY:
            metadata = json.loads(prop.value)
            metadata["past_present_share_buffer"] = shares_cache_buffers(proto)
            prop.value = json.dumps(metadata)
    return proto


def generation_metadata(model, family):
    """What `export.decoding` needs to drive the graphs, stored as JSON in the model metadata."""
    config = model.get_config()
    spec = model.cache_spec
    return {
        "family": family,
        "num_layers": spec.num_layers,
        "num_heads": model.num_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "vocab_size": model.vocab_size,
        "target_vocab_size": getattr(model, "target_vocab_size", model.vocab_size),
        "pad_id": model.pad_id,
        "max_length": config.get("max_length"),
    }


def build_decoder_with_past(model, opset=DEFAULT_OPSET, attention="fused", shared_cache=True):
    """The decoder-only KV-cache graph of a `DecoderOnlyTransformer` (see the module docstring).

    `shared_cache=False` keeps `MultiHeadAttention` for plain layers (a cache copied every step):
    onnxruntime's CUDA `GroupQueryAttention` takes float16/bfloat16 only, so a float32 graph meant
    for a GPU runs its attention there this way rather than on the CPU provider."""
    if not isinstance(model, DecoderOnlyTransformer):
        raise TypeError(f"`model` must be a DecoderOnlyTransformer; received {type(model).__name__}.")
    check_supported(model, opset)
    kind = check_attention(attention, model)
    if not isinstance(shared_cache, bool):
        raise ValueError(f"`shared_cache` must be True or False; received shared_cache={shared_cache!r}.")
    g = GraphBuilder(f"{model.name}_with_past", opset)
    g.shared_cache = shared_cache
    ids = g.input("input_ids", "int64", ["batch", "sequence"])
    mask = g.input("attention_mask", "int64", ["batch", "total_sequence"])
    positions = g.input("position_ids", "int64", ["batch", "sequence"])
    past = _past_inputs(g, model, len(model.decoder_blocks))
    key_valid = g.op("Cast", mask, to=9, name="key_valid")  # to bool
    # Only the portable form reads the past's length (its causal bias); the fused operators take
    # it from the mask, so that the past may be a shared buffer (see the module docstring).
    start = past_length(g, past[0][0]) if kind == "portable" else None
    x, presents = emit_decoder_only_body(g, model, ids, kind, past=past, start=start, key_valid=key_valid,
                                         positions=positions)
    g.output(emit_lm_logits(g, model, model.token_embedding, x), "logits", "float32",
             ["batch", "sequence", model.vocab_size])
    _present_outputs(g, model, presents)
    metadata = {GENERATION_METADATA_KEY: json.dumps(generation_metadata(model, "decoder_only")),
                "keras_transformer.native_attention": kind}
    return mark_cache_sharing(g.model(metadata=metadata))


def _build_encoder(model, opset, kind):
    g = GraphBuilder(f"{model.name}_encoder", opset)
    source = g.input("encoder_token_ids", "int32", ["batch", "encoder_sequence"])
    memory, key_valid = emit_encoder_stack(g, model, source, kind)
    g.output(g.op("Cast", key_valid, to=6), "encoder_attention_mask", "int32", ["batch", "encoder_sequence"])
    for i, block in enumerate(model.decoder_blocks):
        key, value = emit_cross_attention_cache(g, block, memory)
        g.output(key, f"cross_key_values.{i}.key", "float32", cache_shape(model, "encoder_sequence"))
        g.output(value, f"cross_key_values.{i}.value", "float32", cache_shape(model, "encoder_sequence"))
    return g


def _build_decoder(model, opset, kind):
    g = GraphBuilder(f"{model.name}_decoder", opset)
    target = g.input("decoder_token_ids", "int32", ["batch", "decoder_sequence"])
    source_mask = g.input("encoder_attention_mask", "int32", ["batch", "encoder_sequence"])
    cross = [
        tuple(g.input(f"cross_key_values.{i}.{part}", "float32", cache_shape(model, "encoder_sequence"))
              for part in ("key", "value"))
        for i in range(len(model.decoder_blocks))
    ]
    past = _past_inputs(g, model, len(model.decoder_blocks))
    start = past_length(g, past[0][0])
    positions = emit_positions(g, target, start)
    stream = new_stream(g, emit_stack_embedding(g, model.target_stack, target, positions), kind)
    self_masks = emit_attention_masks(g, kind, target, causal=True, past_length=start)
    cross_masks = emit_attention_masks(g, kind, target, g.op("Cast", source_mask, to=9))
    presents = [
        emit_decoder_block(g, block, stream, kind, self_masks, cross[i], cross_masks, past=past[i],
                           memory_is_projected=True, positions=positions)
        for i, block in enumerate(model.decoder_blocks)
    ]
    y = finish_stack(stream, model.decoder_final_norm)
    g.output(emit_lm_logits(g, model, model.target_embedding, y), "logits", "float32",
             ["batch", "decoder_sequence", model.target_vocab_size])
    _present_outputs(g, model, presents)
    return g


def build_encoder_decoder_for_generation(model, opset=DEFAULT_OPSET, attention="fused"):
    """`(encoder_proto, decoder_proto)` of an `EncoderDecoderTransformer` (see module docstring)."""
    if not isinstance(model, EncoderDecoderTransformer):
        raise TypeError(f"`model` must be an EncoderDecoderTransformer; received {type(model).__name__}.")
    check_supported(model, opset)
    kind = check_attention(attention, model)
    metadata = {GENERATION_METADATA_KEY: json.dumps(generation_metadata(model, "encoder_decoder")),
                "keras_transformer.native_attention": kind}
    return (_build_encoder(model, opset, kind).model(metadata=metadata),
            _build_decoder(model, opset, kind).model(metadata=metadata))


def build_generation_graphs(model, opset=DEFAULT_OPSET, attention="fused", shared_cache=True):
    """`{file_name: ModelProto}` of the generation graphs of a decoder-only or encoder-decoder model."""
    if isinstance(model, DecoderOnlyTransformer):
        return dict(zip(DECODER_ONLY_FILES, [build_decoder_with_past(model, opset, attention, shared_cache)]))
    if isinstance(model, EncoderDecoderTransformer):
        return dict(zip(ENCODER_DECODER_FILES, build_encoder_decoder_for_generation(model, opset, attention)))
    raise TypeError(
        "Generation graphs exist for DecoderOnlyTransformer and EncoderDecoderTransformer; received "
        f"{type(model).__name__}."
    )


def save_generation_graphs(model, directory, opset=DEFAULT_OPSET, attention="fused", precision=None,
                           overwrite=False, shared_cache=True):
    """Write the generation graphs of `model` into `directory`, atomically (all or nothing).

    Args:
        model: a `DecoderOnlyTransformer` or `EncoderDecoderTransformer`.
        directory: the folder to create (`decoder_with_past.onnx`, or `encoder.onnx` and
            `decoder.onnx`); `export.decoding.generate(directory, ...)` reads it.
        opset: default-domain opset (>= 17).
        attention: `"fused"` or `"portable"`.
        precision: None, `"fp16"`, `"int8"` or `"int4"` (see `export.precision.convert`).
        overwrite: replace an existing `directory`.
        shared_cache: a decoder-only cache whose buffer past and present may share (see
            `build_decoder_with_past`; False for float32 on a GPU).

    Returns:
        The list of files written.
    """
    from export import files

    graphs = build_generation_graphs(model, opset, attention, shared_cache)
    if precision is not None:
        from export.precision import convert

        graphs = {name: mark_cache_sharing(convert(proto, precision)) for name, proto in graphs.items()}
    directory = os.path.abspath(os.fspath(directory))
    with files.atomic_output([directory], overwrite=overwrite) as staging:
        os.makedirs(staging[directory])
        for name, proto in graphs.items():
            files.save_onnx(proto, os.path.join(staging[directory], name))
    return [os.path.join(directory, name) for name in graphs]
