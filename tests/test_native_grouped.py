"""The fused form of Llama-shaped attention (`com.microsoft.GroupQueryAttention`): full graphs equal
Keras, cache graphs equal the full graph and Keras's `generate`, padded batches (left and right)
give every row its own tokens, and the metadata names the form written."""

import keras
import numpy as np
import onnxruntime as ort
import pytest

from export import to_onnx
from export.decoding import OnnxGenerator
from export.native import build, build_decoder_with_past, build_encoder_decoder_for_generation
from export.native import save_generation_graphs
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer, EncoderOnlyTransformer
from tests._native_helpers import empty_past, greedy_padded, run_in_chunks, run_onnx

ATOL = 1e-4
VOCAB, D_MODEL, HEADS, LAYERS = 40, 32, 4, 2  # head width 8: GroupQueryAttention's CPU minimum
HEAD_DIM = D_MODEL // HEADS
# (num_key_value_heads, rotary, scale): GQA, MQA, rotary alone, GQA alone, custom scales
CONFIGS = [(2, True, None), (1, True, 0.3), (4, True, None), (2, False, None), (2, True, 0.2)]
ATTENTION_OPS = {"GroupQueryAttention", "RotaryEmbedding", "MultiHeadAttention", "Attention"}


def _llama(kv_heads=2, rotary=True, scale=None, d_model=D_MODEL, seed=0):
    keras.utils.set_random_seed(seed)
    model = DecoderOnlyTransformer(
        VOCAB, LAYERS, d_model, HEADS, 48, num_key_value_heads=kv_heads,
        positional="rotary" if rotary else "learned", normalization="rms_norm", activation="silu",
        gated_feed_forward=True, use_bias=False, tie_embeddings=False, norm_first=True, max_length=64,
        dropout=0.0,
    )
    model(np.ones((1, 2), "int32"))
    if scale is not None:  # the block options have no scale: set it on every attention layer
        for block in model.decoder_blocks:
            block.self_attention.scale = scale
    return model


def _ops(proto):
    return {node.op_type for node in proto.graph.node} & ATTENTION_OPS


def _form(proto):
    return {p.key: p.value for p in proto.metadata_props}["keras_transformer.native_attention"]


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _empty_past(batch, kv_heads):
    return empty_past(batch, kv_heads, HEAD_DIM, LAYERS)


@pytest.mark.parametrize("kv_heads,rotary,scale", CONFIGS)
def test_full_graph_is_group_query_attention_and_equals_keras(kv_heads, rotary, scale):
    model = _llama(kv_heads, rotary, scale)
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(3, 11)).astype("int32")
    expected = keras.ops.convert_to_numpy(model(ids))
    proto = build(model, attention="fused")
    assert _form(proto) == "fused"
    assert _ops(proto) == ({"GroupQueryAttention", "RotaryEmbedding"} if rotary else {"GroupQueryAttention"})
    np.testing.assert_allclose(run_onnx(proto, {"token_ids": ids})[0], expected, atol=ATOL)
    portable = build(model, attention="portable")
    assert _form(portable) == "portable" and not _ops(portable)


def test_plain_attention_with_a_custom_scale_stays_one_attention_operator():
    model = _llama(kv_heads=HEADS, rotary=False, scale=0.2)
    ids = np.random.default_rng(1).integers(1, VOCAB, size=(2, 7)).astype("int32")
    proto = build(model)
    assert _ops(proto) == {"Attention"}
    np.testing.assert_allclose(run_onnx(proto, {"token_ids": ids})[0], keras.ops.convert_to_numpy(model(ids)), atol=ATOL)
    cache_graph = build_decoder_with_past(model)
    session = _session(cache_graph)
    # the cache graph's attention is GroupQueryAttention (its cache can be a shared buffer), scale kept
    scales = [a.f for n in cache_graph.graph.node if n.op_type == "GroupQueryAttention" for a in n.attribute
              if a.name == "scale"]
    assert scales == [pytest.approx(0.2)] * 2 and "MultiHeadAttention" not in _ops(cache_graph)
    logits, _ = run_in_chunks(session, [ids[:, :3], ids[:, 3:4], ids[:, 4:]], _feeds, _empty_past(2, HEADS))
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(model(ids)), atol=ATOL)


def _feeds(chunk, position):
    batch, length = chunk.shape
    positions = np.broadcast_to(np.arange(position, position + length), chunk.shape).astype("int64")
    return {"input_ids": chunk.astype("int64"), "attention_mask": np.ones((batch, position + length), "int64"),
            "position_ids": positions}


@pytest.mark.parametrize("kv_heads,rotary,scale", CONFIGS)
def test_cache_graph_chunks_equal_keras(kv_heads, rotary, scale):
    """Prompt, single steps and a multi-token chunk after a past (batch of 2: needs
    `query_seqlens`) give the full pass's logits."""
    model = _llama(kv_heads, rotary, scale)
    ids = np.random.default_rng(2).integers(1, VOCAB, size=(2, 9)).astype("int32")
    proto = build_decoder_with_past(model)
    assert _form(proto) == "fused" and "GroupQueryAttention" in _ops(proto)
    chunks = [ids[:, :4], ids[:, 4:5], ids[:, 5:6], ids[:, 6:]]
    logits, past = run_in_chunks(_session(proto), chunks, _feeds, _empty_past(2, kv_heads))
    assert past["past_key_values.1.value"].shape == (2, kv_heads, 9, HEAD_DIM)
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(model(ids)), atol=ATOL)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_padded_batches_give_every_row_its_own_tokens(kv_heads, side):
    """Padding hidden by `attention_mask` (the deployment runtimes' left or right padding),
    positions from `position_ids`: each row equals the row alone, and the fused graph equals
    the portable one."""
    model = _llama(kv_heads, seed=3)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    sessions = {kind: _session(build_decoder_with_past(model, attention=kind)) for kind in ("fused", "portable")}
    tokens, logits = greedy_padded(sessions["fused"], prompts, 6, side, kv_heads, HEAD_DIM, LAYERS)
    portable_tokens, portable_logits = greedy_padded(sessions["portable"], prompts, 6, side, kv_heads, HEAD_DIM, LAYERS)
    np.testing.assert_array_equal(tokens, portable_tokens)
    np.testing.assert_allclose(logits, portable_logits, atol=ATOL)
    for row, prompt in enumerate(prompts):
        alone_tokens, alone_logits = greedy_padded(sessions["fused"], [prompt], 6, side, kv_heads, HEAD_DIM, LAYERS)
        np.testing.assert_array_equal(tokens[row], alone_tokens[0])
        np.testing.assert_allclose(logits[row], alone_logits[0], atol=ATOL)


@pytest.mark.parametrize("kv_heads,rotary,scale", [(2, True, None), (1, True, 0.3)])
def test_generation_tokens_equal_keras_generate(tmp_path, kv_heads, rotary, scale):
    model = _llama(kv_heads, rotary, scale, seed=4)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]  # different lengths
    save_generation_graphs(model, tmp_path / "lm")
    got = OnnxGenerator(tmp_path / "lm").generate(prompts, max_new_tokens=8, temperature=0.0)
    np.testing.assert_array_equal(got, model.generate(prompts, max_new_tokens=8, temperature=0.0))


def test_to_onnx_validates_the_fused_graph_against_keras(tmp_path):
    model = _llama(kv_heads=1, scale=0.25)
    to_onnx(model, tmp_path / "lm.onnx", method="native")
    import onnx

    proto = onnx.load(str(tmp_path / "lm.onnx"))
    assert _form(proto) == "fused" and "GroupQueryAttention" in _ops(proto)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_bidirectional_encoder_uses_group_query_attention_without_causality(kv_heads):
    keras.utils.set_random_seed(5)
    model = EncoderOnlyTransformer(VOCAB, 2, d_model=D_MODEL, num_heads=HEADS, d_ff=32, positional="rotary",
                                   num_key_value_heads=kv_heads)
    ids = np.random.default_rng(5).integers(1, VOCAB, size=(2, 7)).astype("int32")
    ids[1, 4:] = 0  # padded keys: the attention_bias
    proto = build(model)
    causal = {attribute.i for node in proto.graph.node if node.op_type == "GroupQueryAttention"
              for attribute in node.attribute if attribute.name == "causal"}
    assert _form(proto) == "fused" and causal == {0}
    np.testing.assert_allclose(run_onnx(proto, {"token_ids": ids})[0], keras.ops.convert_to_numpy(model(ids)), atol=ATOL)


@pytest.mark.parametrize("kv_heads,form", [(HEADS, "fused"), (2, "portable")])
def test_encoder_decoder_grouped_cross_attention_is_portable(kv_heads, form):
    """Rotary self-attention is GroupQueryAttention and cross-attention MultiHeadAttention;
    grouped-query cross-attention has no fused operator, so that model is written portable."""
    keras.utils.set_random_seed(6)
    model = EncoderDecoderTransformer(VOCAB, 1, LAYERS, d_model=D_MODEL, num_heads=HEADS, d_ff=32,
                                      positional="rotary", num_key_value_heads=kv_heads)
    rng = np.random.default_rng(6)
    source = rng.integers(1, VOCAB, size=(2, 7)).astype("int32")
    source[1, 4:] = 0
    target = rng.integers(1, VOCAB, size=(2, 6)).astype("int32")
    expected = keras.ops.convert_to_numpy(model({"encoder_token_ids": source, "decoder_token_ids": target}))
    proto = build(model)
    assert _form(proto) == form
    fused_ops = {"GroupQueryAttention", "RotaryEmbedding", "MultiHeadAttention"}
    assert _ops(proto) == (fused_ops if form == "fused" else set())
    np.testing.assert_allclose(run_onnx(proto, {"encoder_token_ids": source, "decoder_token_ids": target})[0],
                               expected, atol=ATOL)
    encoder, decoder = (_session(p) for p in build_encoder_decoder_for_generation(model))
    names = [o.name for o in encoder.get_outputs()]
    encoded = dict(zip(names, encoder.run(names, {"encoder_token_ids": source})))
    chunks = [target[:, :1], target[:, 1:3], target[:, 3:4], target[:, 4:]]
    logits, _ = run_in_chunks(decoder, chunks, lambda chunk, _: {"decoder_token_ids": chunk, **encoded},
                              _empty_past(2, kv_heads))
    np.testing.assert_allclose(logits, expected, atol=ATOL)


def test_head_width_not_a_multiple_of_8_is_written_portable():
    """GroupQueryAttention's CPU kernel rejects head widths that are not multiples of 8."""
    model = _llama(d_model=16)  # 4 heads of width 4
    ids = np.random.default_rng(7).integers(1, VOCAB, size=(2, 5)).astype("int32")
    proto = build(model, attention="fused")
    assert _form(proto) == "portable" and not _ops(proto)
    np.testing.assert_allclose(run_onnx(proto, {"token_ids": ids})[0], keras.ops.convert_to_numpy(model(ids)), atol=ATOL)


def test_rotary_inside_the_operator_for_head_width_16():
    """Positions the same for every row (a Range) and head width 16: `do_rotary` on packed Q/K/V
    in the full graph and the encoder-decoder's decoder; the decoder-only cache graph, fed
    per-row `position_ids`, keeps the separate RotaryEmbedding."""
    model = _llama(d_model=64)
    ids = np.random.default_rng(8).integers(1, VOCAB, size=(2, 9)).astype("int32")
    expected = keras.ops.convert_to_numpy(model(ids))
    proto = build(model)
    rotary = {a.i for n in proto.graph.node if n.op_type == "GroupQueryAttention" for a in n.attribute
              if a.name == "do_rotary"}
    assert rotary == {1} and "RotaryEmbedding" not in _ops(proto)
    np.testing.assert_allclose(run_onnx(proto, {"token_ids": ids})[0], expected, atol=ATOL)
    cached = build_decoder_with_past(model)
    assert "RotaryEmbedding" in _ops(cached)
    logits, _ = run_in_chunks(_session(cached), [ids[:, :4], ids[:, 4:5], ids[:, 5:]], _feeds,
                              empty_past(2, 2, 16, LAYERS))
    np.testing.assert_allclose(logits, expected, atol=ATOL)
    keras.utils.set_random_seed(9)
    seq2seq = EncoderDecoderTransformer(VOCAB, 1, LAYERS, d_model=64, num_heads=HEADS, d_ff=32, positional="rotary")
    source, target = ids[:, :7], ids[:, 2:8]
    expected = keras.ops.convert_to_numpy(seq2seq({"encoder_token_ids": source, "decoder_token_ids": target}))
    encoder, decoder = (_session(p) for p in build_encoder_decoder_for_generation(seq2seq))
    names = [o.name for o in encoder.get_outputs()]
    encoded = dict(zip(names, encoder.run(names, {"encoder_token_ids": source})))
    logits, _ = run_in_chunks(decoder, [target[:, :1], target[:, 1:3], target[:, 3:]],
                              lambda chunk, _: {"decoder_token_ids": chunk, **encoded}, empty_past(2, HEADS, 16, LAYERS))
    np.testing.assert_allclose(logits, expected, atol=ATOL)


def test_int4_cache_graph_of_an_rms_norm_model_is_valid():
    """The int4 quantizer raises the opset to 21; the RMS norm's ReduceMean (opset 17: `axes`
    attribute) is rewritten with an `axes` input, so onnxruntime loads the graph."""
    from export.precision import convert

    model = _llama()
    proto = convert(build_decoder_with_past(model), "int4")
    assert "MatMulNBits" in {node.op_type for node in proto.graph.node}
    ids = np.random.default_rng(10).integers(1, VOCAB, size=(2, 6)).astype("int32")
    logits, _ = run_in_chunks(_session(proto), [ids[:, :4], ids[:, 4:]], _feeds, _empty_past(2, 2))
    assert np.isfinite(logits).all() and logits.shape == (2, 6, VOCAB)
