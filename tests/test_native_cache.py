"""KV-cache generation graphs: prompt + step-by-step decoding equals the full-sequence graph."""

import numpy as np
import onnxruntime as ort
import pytest

from export.native import build, build_decoder_with_past, build_encoder_decoder_for_generation
from export.native import save_generation_graphs
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer
from tests._native_helpers import run_onnx

ATOL = 1e-4
VOCAB, D_MODEL, HEADS, LAYERS = 40, 16, 2, 2


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _empty_past(batch):
    shape = (batch, HEADS, 0, D_MODEL // HEADS)
    return {f"past_key_values.{i}.{part}": np.zeros(shape, "float32") for i in range(LAYERS) for part in ("key", "value")}


def _run_in_chunks(session, chunks, make_feeds, batch):
    """Feed the chunks one after the other, passing `present.*` back as `past_key_values.*`."""
    names = [o.name for o in session.get_outputs()]
    past, logits, position = _empty_past(batch), [], 0
    for chunk in chunks:
        outputs = dict(zip(names, session.run(names, {**make_feeds(chunk, position), **past})))
        logits.append(outputs["logits"])
        past = {name.replace("present", "past_key_values"): value
                for name, value in outputs.items() if name.startswith("present")}
        position += chunk.shape[1]
    assert past["past_key_values.0.key"].shape == (batch, HEADS, position, D_MODEL // HEADS)
    return np.concatenate(logits, axis=1)


@pytest.mark.parametrize("attention", ["fused", "portable"])
def test_decoder_with_past_matches_full_graph(attention):
    model = DecoderOnlyTransformer(VOCAB, LAYERS, D_MODEL, HEADS, 32, norm_first=True)
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(2, 9)).astype("int32")
    full = run_onnx(build(model, attention=attention), {"token_ids": ids})[0]
    session = _session(build_decoder_with_past(model, attention=attention))
    chunks = [ids[:, :4], ids[:, 4:5], ids[:, 5:6], ids[:, 6:]]  # prompt, two steps, a chunk

    def feeds(chunk, position):
        return {"token_ids": chunk, "attention_mask": np.ones((2, position + chunk.shape[1]), "int32")}

    np.testing.assert_allclose(_run_in_chunks(session, chunks, feeds, 2), full, atol=ATOL)


def test_decoder_with_past_attention_mask_hides_positions():
    """attention_mask 0 hides a position (a left-padded prompt): the fused operator and the
    plain MatMul/Softmax graph agree on the masked result, which differs from the unmasked one."""
    model = DecoderOnlyTransformer(VOCAB, LAYERS, D_MODEL, HEADS, 32)
    ids = np.random.default_rng(1).integers(1, VOCAB, size=(2, 4)).astype("int32")
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], "int32")
    results = {}
    for attention in ("fused", "portable"):
        session = _session(build_decoder_with_past(model, attention=attention))
        for name, feed_mask in (("masked", mask), ("plain", np.ones_like(mask))):
            feeds = {"token_ids": ids, "attention_mask": feed_mask, **_empty_past(2)}
            results[attention, name] = session.run(["logits"], feeds)[0][:, 1:]  # real query rows
    np.testing.assert_allclose(results["fused", "masked"], results["portable", "masked"], atol=ATOL)
    np.testing.assert_allclose(results["fused", "masked"][1], results["fused", "plain"][1], atol=ATOL)
    assert np.abs(results["fused", "masked"][0] - results["fused", "plain"][0]).max() > 1e-3


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
        save_generation_graphs(model, tmp_path / "broken", precision="int4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mt"]
