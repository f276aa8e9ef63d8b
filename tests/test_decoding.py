"""Generation in onnxruntime (export.decoding) against the Keras models' `generate`."""

import subprocess
import sys

import numpy as np
import pytest

from export.decoding import OnnxGenerator, generate
from export.native import save_generation_graphs
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer

VOCAB = 40
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]  # a batch of different lengths
SOURCES = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(7)
    model = DecoderOnlyTransformer(VOCAB, 2, 16, 2, 32, norm_first=True, dropout=0.0)
    folder = tmp_path_factory.mktemp("lm") / "graphs"
    save_generation_graphs(model, folder)
    return model, OnnxGenerator(folder)


@pytest.fixture(scope="module")
def translation_model(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(8)
    model = EncoderDecoderTransformer(VOCAB, 1, 2, d_model=16, num_heads=2, d_ff=32, dropout=0.0)
    folder = tmp_path_factory.mktemp("mt") / "graphs"
    save_generation_graphs(model, folder)
    return model, folder


def test_greedy_tokens_equal_keras_for_batched_prompts(language_model):
    model, generator = language_model
    expected = model.generate(PROMPTS, max_new_tokens=12, temperature=0.0)
    got = generator.generate(PROMPTS, max_new_tokens=12, temperature=0.0)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32


def test_end_token_stops_rows_like_keras(language_model):
    model, generator = language_model
    free = generator.generate(PROMPTS, max_new_tokens=6, temperature=0.0)
    end_id = int(free[0, 6])  # the second token generated for the first prompt
    expected = model.generate(PROMPTS, max_new_tokens=6, temperature=0.0, end_id=end_id)
    got = generator.generate(PROMPTS, max_new_tokens=6, temperature=0.0, end_id=end_id)
    np.testing.assert_array_equal(got, expected)
    assert (got[0, 7:] == 0).all()  # padded after the end token


def test_seeded_sampling_equals_keras_and_is_reproducible(language_model):
    model, generator = language_model
    arguments = dict(max_new_tokens=8, temperature=0.9, top_k=12, top_p=0.9, seed=3)
    got = generator.generate(PROMPTS, **arguments)
    np.testing.assert_array_equal(got, model.generate(PROMPTS, **arguments))
    np.testing.assert_array_equal(got, generator.generate(PROMPTS, **arguments))
    assert not np.array_equal(got, generator.generate(PROMPTS, **dict(arguments, seed=4)))


def test_single_prompt_and_bad_arguments(language_model):
    _, generator = language_model
    tokens = generator.generate([3, 4], max_new_tokens=3, temperature=0.0)
    assert tokens.shape == (5,)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate([3, 4], max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt_token_ids"):
        generator.generate([[3, VOCAB + 5]], max_new_tokens=2)


def test_translation_bad_source_names_encoder_token_ids(translation_model):
    _, folder = translation_model
    with pytest.raises(ValueError, match=rf"encoder_token_ids.*received {VOCAB + 1}"):
        generate(folder, [[3, VOCAB + 1]], max_length=3, start_id=1, end_id=2)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_translation_greedy_and_beam_search_equal_keras(translation_model, num_beams):
    model, folder = translation_model
    expected = model.generate(SOURCES, max_length=7, start_id=1, end_id=2, num_beams=num_beams)
    got = generate(folder, SOURCES, max_length=7, start_id=1, end_id=2, num_beams=num_beams)
    np.testing.assert_array_equal(got, expected)


def test_generation_runs_without_tensorflow_or_keras(translation_model, tmp_path):
    _, folder = translation_model
    script = (
        "import sys\n"
        "from export.runtime import generate\n"
        f"tokens = generate({str(folder)!r}, [[5, 6, 7]], max_length=4, start_id=1, end_id=2, num_beams=2)\n"
        "assert tokens.ndim == 2, tokens\n"
        "loaded = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert 'keras_transformer.search' in sys.modules  # the loop shared with Keras, numpy only\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])})
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("precision,threads", [(None, 0), ("int8", 1), ("int4", 0)])
def test_int8_graphs_decode_on_one_thread_by_default(tmp_path, precision, threads):
    import keras

    keras.utils.set_random_seed(9)
    model = DecoderOnlyTransformer(64, 1, 32, 2, 64, dropout=0.0)
    save_generation_graphs(model, tmp_path / "graphs", precision=precision)
    generator = OnnxGenerator(tmp_path / "graphs")
    assert generator.decoder.session.get_session_options().intra_op_num_threads == threads
    pinned = OnnxGenerator(tmp_path / "graphs", intra_op_num_threads=2)
    assert pinned.decoder.session.get_session_options().intra_op_num_threads == 2
    prompts = [[5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(generator.generate(prompts, max_new_tokens=5, temperature=0.0),
                                  pinned.generate(prompts, max_new_tokens=5, temperature=0.0))


def test_left_padded_greedy_equals_the_teacher_forced_loop(language_model):
    """Greedy decoding prefills the whole batch left-padded; the shared loop teacher-forces the
    longer prompts. Same tokens and lengths, with an end id, suppressed ids, and a right-padded
    buffer wider than its longest prompt."""
    from export.decoding import DecoderOnlyStepper, greedy_left_padded
    from keras_transformer import search

    _, generator = language_model
    buffer = np.zeros((3, 8), np.int32)
    for row, prompt in enumerate(PROMPTS):
        buffer[row, :len(prompt)] = prompt
    prompts, lengths, _ = search.prepare_prompts(buffer, VOCAB, 0)
    free = generator.generate(PROMPTS, max_new_tokens=8, temperature=0.0)
    end_id = int(free[1, 4])  # a token the second row emits
    suppress = search.suppressed_ids(VOCAB, 0, end_id, suppress_ids=[int(free[0, 6])])
    expected = search.decode(DecoderOnlyStepper(generator.decoder), prompts, lengths, 8, search.TokenChooser(0.0),
                             end_id, 0, suppress=suppress, return_lengths=True)
    got = greedy_left_padded(generator.decoder, prompts, lengths, 8, end_id, 0, suppress)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[1][1] < len(PROMPTS[1]) + 8  # the end id stopped a row early
    assert int(free[0, 6]) not in got[0][0, len(PROMPTS[0]):]
