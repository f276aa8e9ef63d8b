"""Generation: KV cache == full recompute, batching, no retracing, end_id, sampling, beam search."""

import itertools
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_transformer import saving, training
from keras_transformer.generation import gnmt_length_penalty
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer

PROMPTS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12], [13]]


def language_model(**overrides):
    config = dict(vocab_size=20, num_layers=2, d_model=16, num_heads=2, d_ff=32, dropout=0.0)
    return DecoderOnlyTransformer(**{**config, **overrides})


def translation_model(**overrides):
    config = dict(vocab_size=12, num_encoder_layers=1, num_decoder_layers=2, d_model=16, num_heads=2,
                  d_ff=32, dropout=0.0)
    return EncoderDecoderTransformer(**{**config, **overrides})


def last_logits(model, tokens):
    """The logits of the last position, with `pad_id`'s at -inf (generation never chooses it)."""
    logits = keras.ops.convert_to_numpy(model({"token_ids": np.asarray([tokens], dtype="int32")}))[0, -1]
    logits[model.pad_id] = -np.inf
    return logits


@pytest.fixture(scope="module")
def gpt():
    return language_model(norm_first=True, positional="learned", max_length=24)


# -- the cache is exact --------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [dict(norm_first=True, positional="learned", max_length=24), dict()])
def test_greedy_with_cache_equals_without_cache(overrides):
    model = language_model(**overrides)
    cached = model.generate(PROMPTS, max_new_tokens=6, temperature=0.0)
    recomputed = model.generate(PROMPTS, max_new_tokens=6, temperature=0.0, use_cache=False)
    np.testing.assert_array_equal(cached, recomputed)


def test_batched_prompts_of_different_lengths_equal_one_by_one(gpt):
    batched = gpt.generate(PROMPTS, max_new_tokens=5, temperature=0.0)
    assert batched.shape == (4, 10)
    for row, prompt in zip(batched, PROMPTS):
        alone = gpt.generate(prompt, max_new_tokens=5, temperature=0.0)
        assert alone.shape == (len(prompt) + 5,)
        np.testing.assert_array_equal(row[: len(alone)], alone)
        assert (row[len(alone):] == gpt.pad_id).all()


def test_greedy_tokens_are_the_argmax_of_a_full_forward(gpt):
    tokens = gpt.generate([3, 4, 5], max_new_tokens=4, temperature=0.0)
    for position in range(3, 7):
        assert tokens[position] == np.argmax(last_logits(gpt, tokens[:position]))


def test_right_padded_array_prompts_equal_list_prompts(gpt):
    padded = np.zeros((len(PROMPTS), 5), dtype="int32")
    for i, prompt in enumerate(PROMPTS):
        padded[i, : len(prompt)] = prompt
    np.testing.assert_array_equal(
        gpt.generate(padded, 3, temperature=0.0), gpt.generate(PROMPTS, 3, temperature=0.0)
    )


@pytest.mark.tensorflow  # one tf.function signature of dynamic shapes; JAX: tests/test_backends.py
def test_step_functions_are_traced_once_per_model():
    model = language_model()
    model.generate(PROMPTS, max_new_tokens=3, temperature=0.0)
    model.generate([[1, 2, 3, 4, 5, 6, 7, 8]], max_new_tokens=7, temperature=0.0)  # new batch and lengths
    model.generate([[5]] * 3, max_new_tokens=2, top_k=3, seed=0)
    assert model.generation_trace_counts == {"cached_step": 1}
    seq2seq = translation_model()
    seq2seq.generate([[3, 4, 5]], max_length=4, start_id=1, end_id=2)
    seq2seq.generate([[3, 4, 5, 6, 7], [8, 9]], max_length=6, start_id=1, end_id=2, num_beams=3)
    assert seq2seq.generation_trace_counts == {"encode": 1, "cached_step": 1}


def test_generation_stops_at_end_id_and_pads_finished_rows(gpt):
    free = gpt.generate(PROMPTS, max_new_tokens=6, temperature=0.0)
    end_id = int(free[1, len(PROMPTS[1]) + 1])  # the second new token of row 1
    stopped = gpt.generate(PROMPTS, max_new_tokens=6, temperature=0.0, end_id=end_id)
    for row, prompt, reference in zip(stopped, PROMPTS, free):
        new = list(reference[len(prompt): len(prompt) + 6])
        cut = new.index(end_id) + 1 if end_id in new else 6
        np.testing.assert_array_equal(row[len(prompt): len(prompt) + cut], new[:cut])
        assert (row[len(prompt) + cut:] == gpt.pad_id).all()


def test_mixed_precision_generation_runs_with_float16_caches():
    model = language_model(dtype="mixed_float16")
    tokens = model.generate(PROMPTS, max_new_tokens=3, temperature=0.0)
    assert tokens.shape == (4, 8) and tokens.min() >= 0 and tokens.max() < 20
    assert keras.backend.standardize_dtype(model.initial_cache(1, 4)[0].dtype) == "float16"
    seq2seq = translation_model(dtype="mixed_float16")
    assert seq2seq.generate([[3, 4], [5]], 3, start_id=1, end_id=2, num_beams=2).shape[0] == 2


# -- sampling ------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_and_respects_top_k(gpt):
    first = gpt.generate(PROMPTS, 6, temperature=1.5, top_k=3, seed=7)
    np.testing.assert_array_equal(first, gpt.generate(PROMPTS, 6, temperature=1.5, top_k=3, seed=7))
    for row, prompt in zip(first, PROMPTS):
        for position in range(len(prompt), len(prompt) + 6):
            top3 = np.argsort(-last_logits(gpt, row[:position]))[:3]
            assert row[position] in top3


def test_top_k_1_and_tiny_top_p_are_greedy(gpt):
    greedy = gpt.generate(PROMPTS, 4, temperature=0.0)
    np.testing.assert_array_equal(gpt.generate(PROMPTS, 4, top_k=1, seed=1), greedy)
    np.testing.assert_array_equal(gpt.generate(PROMPTS, 4, top_p=1e-6, seed=2), greedy)


# -- encoder-decoder: greedy and beam search --------------------------------------------------------------


@pytest.mark.parametrize("num_beams", [1, 3])
def test_seq2seq_cache_equals_recompute(num_beams):
    model = translation_model(norm_first=num_beams == 3)
    sources = [[3, 4, 5, 6, 7], [8, 9]]
    cached = model.generate(sources, 6, start_id=1, end_id=2, num_beams=num_beams)
    recomputed = model.generate(sources, 6, start_id=1, end_id=2, num_beams=num_beams, use_cache=False)
    np.testing.assert_array_equal(cached, recomputed)
    single = model.generate(sources[1], 6, start_id=1, end_id=2, num_beams=num_beams)
    np.testing.assert_array_equal(single, cached[1][: len(single)])


def sequence_log_probs(model, source, start_id):
    """Log-probabilities of every next token for every 3-token target prefix (exhaustive)."""
    vocab = model.target_vocab_size
    targets = np.array(list(itertools.product(range(vocab), repeat=3)), dtype="int32")
    decoder_inputs = np.concatenate([np.full((len(targets), 1), start_id, "int32"), targets[:, :2]], 1)
    logits = keras.ops.convert_to_numpy(model({"encoder_token_ids": np.repeat([source], len(targets), 0).astype("int32"),
                                               "decoder_token_ids": decoder_inputs}))
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return targets, np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def test_beam_search_finds_the_best_length_penalised_sequence():
    model = translation_model(vocab_size=6)
    source, start_id, end_id, alpha = [3, 4, 5], 1, 2, 0.6
    targets, token_log_probs = sequence_log_probs(model, source, start_id)
    best_score, best = -np.inf, None
    for target, scores in zip(targets, token_log_probs):
        ends = np.flatnonzero(target == end_id)
        length = int(ends[0]) + 1 if ends.size else 3  # stop at end_id, or at max_length
        score = scores[:length].sum() / gnmt_length_penalty(length, alpha)
        if score > best_score:
            best_score, best = score, list(target[:length])
    found = model.generate(source, 3, start_id, end_id, num_beams=36, length_penalty=alpha)
    assert list(found[found != model.pad_id]) == [t for t in best if t != model.pad_id]


# -- bad input --------------------------------------------------------------------------------------------


def test_bad_generation_input_is_refused_on_the_host(gpt):
    with pytest.raises(ValueError, match=r"prompt_token_ids.*\[0, vocab_size=20\).*received 25"):
        gpt.generate([[3, 25]], 2)
    with pytest.raises(ValueError, match="received -1"):
        gpt.generate([[3, -1]], 2)
    with pytest.raises(ValueError, match="max_length=24"):
        gpt.generate([[3] * 20], max_new_tokens=5)
    with pytest.raises(ValueError, match="at least one token"):
        gpt.generate([[3], []], 2)
    with pytest.raises(ValueError, match=r"token ids \(integers, or floats with whole values\); received 3.5"):
        gpt.generate([[3.5, 2.0]], 2)
    with pytest.raises(ValueError, match="end_id"):
        gpt.generate([[3]], 2, end_id=20)
    with pytest.raises(ValueError, match="temperature"):
        gpt.generate([[3]], 2, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        gpt.generate([[3]], 0)
    seq2seq = translation_model()
    with pytest.raises(ValueError, match=r"encoder_token_ids.*received 12"):
        seq2seq.generate([[3, 12]], 4, start_id=1, end_id=2)
    with pytest.raises(ValueError, match="start_id"):
        seq2seq.generate([[3]], 4, start_id=99, end_id=2)


# -- the shared numpy loop and the lazy package --------------------------------------------------------

FRESH_PROCESS = """
import sys
import numpy as np
import keras_transformer
from keras_transformer import search

# The shared loop runs any stepper, here a numpy bigram table, without Keras or TensorFlow.
bigram = np.random.default_rng(0).normal(size=(20, 20))

class Bigram:
    def reset(self, batch, total_length):
        pass

    def step(self, new_tokens, index):
        return bigram[new_tokens[:, -1]]

    def reorder(self, rows):
        pass

prompts, lengths, _ = search.prepare_prompts([[3, 4], [5]], vocab_size=20, pad_id=0)
tokens = search.decode(Bigram(), prompts, lengths, 4, search.TokenChooser(temperature=0.0), None, 0)
for row, length in zip(tokens, lengths):
    for position in range(length, length + 4):
        assert row[position] == np.argmax(bigram[row[position - 1]]), (tokens, position)
loaded = [name for name in ("tensorflow", "keras") if name in sys.modules]
assert not loaded, loaded

# load_model registers the library's classes itself (no other keras_transformer import needed).
from keras_transformer.saving import load_model
model = load_model(sys.argv[1])
import keras
np.save(sys.argv[2], keras.ops.convert_to_numpy(model({"token_ids": np.array([[3, 4, 5]], "int32")})))
from keras_transformer import (DecoderOnlyTransformer, EncoderDecoderTransformer, EncoderOnlyTransformer,
                               __version__, callbacks, generation, layers, models, presets, saving, training)
assert isinstance(model, DecoderOnlyTransformer), type(model)
assert isinstance(model.loss, training.MaskedSparseCategoricalCrossentropy), model.loss
assert keras_transformer.layers.DecoderBlock is layers.DecoderBlock
assert generation.decode is search.decode
"""


def test_shared_loop_imports_without_keras_and_a_saved_model_loads_in_a_fresh_process(tmp_path):
    model = language_model()
    model.compile(optimizer=training.paper_optimizer(16, warmup_steps=10),
                  loss=training.MaskedSparseCategoricalCrossentropy(pad_id=0))
    saving.save_model(model, tmp_path / "lm.keras")
    root = pathlib.Path(__file__).parents[1]
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "lm.keras"), str(tmp_path / "logits.npy")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = keras.ops.convert_to_numpy(model({"token_ids": np.array([[3, 4, 5]], "int32")}))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=1e-5, atol=1e-5)


def test_package_attributes_load_lazily_and_unknown_names_fail():
    import keras_transformer

    assert {"layers", "models", "search", "DecoderOnlyTransformer"} <= set(dir(keras_transformer))
    assert keras_transformer.EncoderOnlyTransformer is keras_transformer.models.EncoderOnlyTransformer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        keras_transformer.nope  # noqa: B018
