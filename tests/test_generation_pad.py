"""Generation never emits `pad_id` unless asked, can suppress more ids, and returns the lengths;
Keras `generate` and onnxruntime generation (`export.decoding`) share the loop and agree."""

import numpy as np
import pytest

from export.decoding import OnnxGenerator
from export.native import save_generation_graphs
from keras_transformer import search
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer

VOCAB, PAD = 40, 0
PROMPTS = [[5, 6, 7, 8], [9, 10]]


def _prefer_pad(model):
    """Weights under which every position's top logit is `pad_id`: the last block's final
    LayerNorm outputs its beta `b` everywhere (gamma 0), and the tied embedding row of the pad is
    a large multiple of `b`; the other rows stay random, so a runner-up always exists."""
    direction = np.random.default_rng(0).normal(size=16).astype("float32")
    for weight in model.weights:
        if weight.path.endswith("decoder_block_0/feed_forward_norm/gamma"):
            weight.assign(np.zeros(16, "float32"))
        elif weight.path.endswith("decoder_block_0/feed_forward_norm/beta"):
            weight.assign(direction)
        elif weight.path.endswith("token_embedding/embeddings"):
            table = np.asarray(weight)
            table[PAD] = 20.0 * direction / np.linalg.norm(direction)
            weight.assign(table)
    return model


@pytest.fixture(scope="module")
def pad_loving_lm(tmp_path_factory):
    model = _prefer_pad(DecoderOnlyTransformer(VOCAB, 1, 16, 2, 32, dropout=0.0, pad_id=PAD))
    folder = tmp_path_factory.mktemp("pad_lm") / "graphs"
    save_generation_graphs(model, folder)
    return model, OnnxGenerator(folder)


@pytest.fixture(scope="module")
def pad_loving_translator(tmp_path_factory):
    model = _prefer_pad(EncoderDecoderTransformer(VOCAB, 1, 1, d_model=16, num_heads=2, d_ff=32, dropout=0.0,
                                                  pad_id=PAD))
    folder = tmp_path_factory.mktemp("pad_mt") / "graphs"
    save_generation_graphs(model, folder)
    return model, OnnxGenerator(folder)


def test_the_model_really_prefers_pad(pad_loving_lm):
    model, generator = pad_loving_lm
    for run in (model.generate, generator.generate):
        tokens = run(PROMPTS, max_new_tokens=4, temperature=0.0, allow_pad=True)
        assert (tokens[0, 4:] == PAD).all()  # asked for: the pad comes out (indistinguishable)


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, top_k=5, seed=1)])
def test_decoder_only_never_emits_pad_and_returns_lengths(pad_loving_lm, sampling):
    model, generator = pad_loving_lm
    results = [run(PROMPTS, max_new_tokens=5, return_lengths=True, **sampling)
               for run in (model.generate, generator.generate)]
    (tokens, lengths), (onnx_tokens, onnx_lengths) = results
    np.testing.assert_array_equal(onnx_tokens, tokens)
    np.testing.assert_array_equal(onnx_lengths, lengths)
    assert lengths.tolist() == [4 + 5, 2 + 5]
    for row, length in zip(tokens, lengths):
        assert (row[:length] != PAD).all() and (row[length:] == PAD).all()


def test_suppress_ids_and_end_id(pad_loving_lm):
    model, generator = pad_loving_lm
    free = model.generate(PROMPTS, max_new_tokens=3, temperature=0.0)
    banned = int(free[0, 4])
    end_id = int(free[1, 2])  # the first new token of the second row
    for run in (model.generate, generator.generate):
        tokens = run(PROMPTS, max_new_tokens=3, temperature=0.0, suppress_ids=[banned])
        assert banned not in tokens[0, 4:] and PAD not in tokens[0]
        tokens, lengths = run(PROMPTS, max_new_tokens=3, temperature=0.0, end_id=end_id, return_lengths=True)
        assert lengths[1] == 3 and tokens[1, 2] == end_id and (tokens[1, 3:] == PAD).all()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_translation_never_emits_pad_in_keras_and_onnxruntime(pad_loving_translator, num_beams):
    model, generator = pad_loving_translator
    sources = [[5, 6, 7], [8, 9, 10, 11]]
    arguments = dict(max_length=6, start_id=1, end_id=2, num_beams=num_beams, return_lengths=True)
    tokens, lengths = model.generate(sources, **arguments)
    onnx_tokens, onnx_lengths = generator.generate(sources, **arguments)
    np.testing.assert_array_equal(onnx_tokens, tokens)
    np.testing.assert_array_equal(onnx_lengths, lengths)
    for row, length in zip(tokens, lengths):
        assert 1 <= length <= 6 and (row[:length] != PAD).all() and (row[length:] == PAD).all()
    padded = model.generate(sources, max_length=6, start_id=1, end_id=2, num_beams=num_beams, allow_pad=True)
    assert (padded == PAD).any()  # the same model does emit the pad when allowed


def test_single_prompt_returns_a_scalar_length(pad_loving_lm):
    model, _ = pad_loving_lm
    tokens, length = model.generate([5, 6], max_new_tokens=3, temperature=0.0, return_lengths=True)
    assert tokens.shape == (5,) and int(length) == 5


def test_bad_suppress_ids_are_named():
    with pytest.raises(ValueError, match=r"suppress_ids.*received suppress_ids=40"):
        search.suppressed_ids(VOCAB, PAD, end_id=2, suppress_ids=[40])
    with pytest.raises(ValueError, match="must not contain end_id=2"):
        search.suppressed_ids(VOCAB, PAD, end_id=2, suppress_ids=[2])
    with pytest.raises(ValueError, match="must leave some"):
        search.suppressed_ids(3, PAD, end_id=None, suppress_ids=[1, 2])
    assert search.suppressed_ids(VOCAB, PAD, end_id=PAD).tolist() == []  # pad doubles as the end: allowed
    assert search.suppressed_ids(VOCAB, PAD, suppress_ids=7).tolist() == [0, 7]
