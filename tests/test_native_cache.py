"""KV-cache generation graphs: prompt + step-by-step decoding equals the full-sequence graph."""

import keras
import numpy as np
import onnxruntime as ort
import pytest

from export.native import build, build_decoder_with_past, build_encoder_decoder_for_generation
from export.native import save_generation_graphs
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer
from tests._native_helpers import empty_past, greedy_padded, run_in_chunks, run_onnx

ATOL = 1e-4
VOCAB, D_MODEL, HEADS, LAYERS = 40, 16, 2, 2


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _empty_past(batch):
    return empty_past(batch, HEADS, D_MODEL // HEADS, LAYERS)


def _run_in_chunks(session, chunks, make_feeds, batch):
    logits, past = run_in_chunks(session, chunks, make_feeds, _empty_past(batch))
    position = sum(chunk.shape[1] for chunk in chunks)
    assert past["past_key_values.0.key"].shape == (batch, HEADS, position, D_MODEL // HEADS)
    return logits


@pytest.mark.parametrize("attention", ["fused", "portable"])
def test_decoder_with_past_matches_full_graph(attention):
    model = DecoderOnlyTransformer(VOCAB, LAYERS, D_MODEL, HEADS, 32, norm_first=True)
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(2, 9)).astype("int32")
    full = run_onnx(build(model, attention=attention), {"token_ids": ids})[0]
    session = _session(build_decoder_with_past(model, attention=attention))
    chunks = [ids[:, :4], ids[:, 4:5], ids[:, 5:6], ids[:, 6:]]  # prompt, two steps, a chunk

    def feeds(chunk, position):
        positions = np.broadcast_to(np.arange(position, position + chunk.shape[1]), chunk.shape)
        return {"input_ids": chunk.astype("int64"), "attention_mask": np.ones((2, position + chunk.shape[1]), "int64"),
                "position_ids": positions.astype("int64")}

    np.testing.assert_allclose(_run_in_chunks(session, chunks, feeds, 2), full, atol=ATOL)


def test_decoder_with_past_attention_mask_hides_positions():
    """attention_mask 0 hides a position (a left-padded prompt): the fused operator and the
    plain MatMul/Softmax graph agree on the masked result, which differs from the unmasked one."""
    model = DecoderOnlyTransformer(VOCAB, LAYERS, D_MODEL, HEADS, 32)
    ids = np.random.default_rng(1).integers(1, VOCAB, size=(2, 4)).astype("int32")
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], "int64")
    positions = np.array([[0, 1, 2, 3]] * 2, "int64")
    results = {}
    for attention in ("fused", "portable"):
        session = _session(build_decoder_with_past(model, attention=attention))
        for name, feed_mask in (("masked", mask), ("plain", np.ones_like(mask))):
            feeds = {"input_ids": ids.astype("int64"), "attention_mask": feed_mask, "position_ids": positions,
                     **_empty_past(2)}
            results[attention, name] = session.run(["logits"], feeds)[0][:, 1:]  # real query rows
    np.testing.assert_allclose(results["fused", "masked"], results["portable", "masked"], atol=ATOL)
    np.testing.assert_allclose(results["fused", "masked"][1], results["fused", "plain"][1], atol=ATOL)
    assert np.abs(results["fused", "masked"][0] - results["fused", "plain"][0]).max() > 1e-3


def _llama(vocab=VOCAB):
    return DecoderOnlyTransformer(vocab, LAYERS, D_MODEL, 4, 32, num_key_value_heads=2, positional="rotary",
                                  normalization="rms_norm", activation="silu", gated_feed_forward=True,
                                  use_bias=False, tie_embeddings=False, norm_first=True, max_length=64, dropout=0.0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("shape", ["learned_fused", "sinusoid_portable", "llama"])
def test_padded_batch_rows_get_their_own_tokens(shape, side):
    """The deployment runtimes' way of batching different-length prompts (pads hidden by
    `attention_mask`, positions from `position_ids`): every row gets the tokens and logits it
    gets alone, for learned, sinusoidal and rotary (grouped-query) positions."""
    keras.utils.set_random_seed(3)
    if shape == "llama":
        model, kv_heads, head_dim, attention = _llama(), 2, D_MODEL // 4, "portable"
    else:
        positional = "learned" if shape == "learned_fused" else "sinusoidal"
        model = DecoderOnlyTransformer(VOCAB, LAYERS, D_MODEL, HEADS, 32, norm_first=True, positional=positional,
                                       max_length=64)
        kv_heads, head_dim, attention = HEADS, D_MODEL // HEADS, shape.split("_")[1]
    session = _session(build_decoder_with_past(model, attention=attention))
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    kwargs = dict(kv_heads=kv_heads, head_dim=head_dim)
    tokens, logits = greedy_padded(session, prompts, 6, side, **kwargs)
    for row, prompt in enumerate(prompts):
        alone_tokens, alone_logits = greedy_padded(session, [prompt], 6, side, **kwargs)
        np.testing.assert_array_equal(tokens[row], alone_tokens[0])
        np.testing.assert_allclose(logits[row], alone_logits[0], atol=ATOL)


def test_padded_batch_without_position_ids_would_differ():
    """The test above can fail: positions taken from the cache index (pads counted) change a
    left-padded row's logits."""
    model = DecoderOnlyTransformer(VOCAB, LAYERS, D_MODEL, HEADS, 32, positional="learned", max_length=64)
    session = _session(build_decoder_with_past(model))
    ids = np.array([[0, 0, 5, 6]], "int64")
    mask = np.array([[0, 0, 1, 1]], "int64")
    run = lambda positions: session.run(["logits"], {  # noqa: E731
        "input_ids": ids, "attention_mask": mask, "position_ids": np.array([positions], "int64"), **_empty_past(1)})[0]
    assert np.abs(run([0, 0, 0, 1])[0, -1] - run([0, 1, 2, 3])[0, -1]).max() > 1e-3


@pytest.mark.parametrize("attention", ["fused", "portable"])
def test_encoder_decoder_generation_graphs_match_full_graph(attention):
    model = EncoderDecoderTransformer(VOCAB, 1, LAYERS, d_model=D_MODEL, num_heads=HEADS, d_ff=32)
    rng = np.random.default_rng(2)
    source = rng.integers(1, VOCAB, size=(2, 7)).astype("int32")
    source[1, 4:] = 0
    target = rng.integers(1, VOCAB, size=(2, 6)).astype("int32")
    full = run_onnx(build(model, attention=attention), {"encoder_token_ids": source, "decoder_token_ids": target})[0]
    encoder, decoder = (_session(p) for p in build_encoder_decoder_for_generation(model, attention=attention))
    encoder_names = [o.name for o in encoder.get_outputs()]
    encoded = dict(zip(encoder_names, encoder.run(encoder_names, {"encoder_token_ids": source})))
    assert encoded["cross_key_values.1.key"].shape == (2, HEADS, 7, D_MODEL // HEADS)
    np.testing.assert_array_equal(encoded["encoder_attention_mask"], (source != 0).astype("int32"))
    chunks = [target[:, :1], target[:, 1:3], target[:, 3:4], target[:, 4:]]

    def feeds(chunk, position):
        return {"decoder_token_ids": chunk, **encoded}

    np.testing.assert_allclose(_run_in_chunks(decoder, chunks, feeds, 2), full, atol=ATOL)


def test_save_generation_graphs_is_atomic(tmp_path):
    model = EncoderDecoderTransformer(VOCAB, 1, 1, d_model=D_MODEL, num_heads=HEADS, d_ff=32)
    written = save_generation_graphs(model, tmp_path / "mt")
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["decoder.onnx", "encoder.onnx"]
    with pytest.raises(FileExistsError):
        save_generation_graphs(model, tmp_path / "mt")
    with pytest.raises(ValueError, match="precision"):
        save_generation_graphs(model, tmp_path / "broken", precision="int2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mt"]
