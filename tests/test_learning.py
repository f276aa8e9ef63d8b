"""Proof that the models learn: small tasks trained with the paper's recipe, checked via generate.

Fixed seeds, tiny widths, tf.data pipelines and `steps_per_execution` keep each test short.
"""

import keras
import numpy as np
import pytest

from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer, EncoderOnlyTransformer
from keras_transformer.training import (
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    NoamSchedule,
    shift_right,
)

tf = pytest.importorskip("tensorflow")  # tf.data pipelines
pytestmark = pytest.mark.tensorflow

PAD, START, END, FIRST_DIGIT = 0, 1, 2, 3  # digits 0..9 are ids 3..12
VOCAB = 13


def compile_with_paper_recipe(model, d_model, warmup_steps, scale=2.0, label_smoothing=0.1):
    model.compile(
        optimizer=keras.optimizers.Adam(
            NoamSchedule(d_model, warmup_steps=warmup_steps, scale=scale), beta_1=0.9, beta_2=0.98, epsilon=1e-9
        ),
        loss=MaskedSparseCategoricalCrossentropy(label_smoothing=label_smoothing, pad_id=PAD),
        metrics=[MaskedAccuracy(pad_id=PAD)],
        steps_per_execution=25,
    )


def dataset(inputs, targets, batch_size=64):
    data = tf.data.Dataset.from_tensor_slices((inputs, targets))
    return data.shuffle(len(targets), seed=0).batch(batch_size, drop_remainder=True).prefetch(2)


def test_encoder_decoder_learns_to_reverse_digit_sequences():
    rng = np.random.default_rng(0)
    length = 5

    def examples(count):
        sources = rng.integers(FIRST_DIGIT, VOCAB, (count, length)).astype("int32")
        targets = np.concatenate([sources[:, ::-1], np.full((count, 1), END, "int32")], axis=1)
        return sources, targets

    sources, targets = examples(16000)
    model = EncoderDecoderTransformer(
        VOCAB, num_encoder_layers=2, num_decoder_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0
    )
    compile_with_paper_recipe(model, 32, warmup_steps=200)
    inputs = {"encoder_token_ids": sources, "decoder_token_ids": shift_right(targets, START)}
    model.fit(dataset(inputs, targets), epochs=3, verbose=0, shuffle=False)

    held_out, expected = examples(200)
    greedy = model.generate(held_out, max_length=length + 1, start_id=START, end_id=END)
    assert np.mean(np.all(greedy == expected, axis=1)) >= 0.95
    beam = model.generate(held_out[:50], max_length=length + 1, start_id=START, end_id=END, num_beams=4)
    assert np.mean(np.all(beam == expected[:50], axis=1)) >= 0.95


def test_decoder_only_learns_an_arithmetic_digit_pattern():
    rng = np.random.default_rng(1)
    length = 10

    def examples(count):  # digit_k = (first + k * stride) mod 10, stride in {1, 2, 3}
        first = rng.integers(0, 10, (count, 1))
        stride = rng.integers(1, 4, (count, 1))
        return ((first + stride * np.arange(length)) % 10 + FIRST_DIGIT).astype("int32")

    sequences = examples(12000)
    model = DecoderOnlyTransformer(
        VOCAB, num_layers=2, d_model=32, num_heads=2, d_ff=64, dropout=0.0, max_length=16,
        positional="learned", norm_first=True, activation="gelu",
    )
    compile_with_paper_recipe(model, 32, warmup_steps=100)
    model.fit(dataset({"token_ids": sequences[:, :-1]}, sequences[:, 1:]), epochs=2, verbose=0, shuffle=False)

    held_out = examples(100)
    prompt_lengths = rng.integers(2, 5, len(held_out))  # the stride needs two digits
    prompts = [row[:n].tolist() for row, n in zip(held_out, prompt_lengths)]
    generated = model.generate(prompts, max_new_tokens=4, temperature=0.0)
    correct = [generated[i, n:n + 4] == held_out[i, n:n + 4] for i, n in enumerate(prompt_lengths)]
    assert np.mean(correct) >= 0.95


def balanced_bracket_examples(rng, count, max_pairs=5):
    """`[CLS] ( ) ...` strings, half balanced; the others are shuffles of balanced strings, so
    bracket counts are equal and only the order tells the classes apart."""
    open_id, close_id = 3, 4
    tokens = np.full((count, 2 * max_pairs + 1), PAD, dtype="int32")
    labels = np.zeros(count, dtype="int32")
    for i in range(count):
        pairs = int(rng.integers(1, max_pairs + 1))
        while True:
            string = rng.permutation([open_id] * pairs + [close_id] * pairs)
            balanced = np.all(np.cumsum(np.where(string == open_id, 1, -1)) >= 0)
            if balanced == (i % 2 == 0):
                break
        tokens[i, 0], tokens[i, 1 : 2 * pairs + 1], labels[i] = START, string, int(balanced)
    return tokens, labels


def test_encoder_only_classifier_learns_balanced_brackets():
    rng = np.random.default_rng(2)
    tokens, labels = balanced_bracket_examples(rng, 8000)
    model = EncoderOnlyTransformer(
        8, num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0, max_length=16,
        positional="learned", head="classification", num_classes=2, pooling="mean", norm_first=True,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=25,
    )
    model.fit(dataset({"token_ids": tokens}, labels), epochs=3, verbose=0, shuffle=False)
    held_out, expected = balanced_bracket_examples(rng, 1000)
    predicted = np.argmax(model.predict({"token_ids": held_out}, verbose=0), axis=-1)
    assert np.mean(predicted == expected) >= 0.85  # chance is 0.5


@pytest.mark.slow
def test_encoder_decoder_learns_longer_reversal_with_the_paper_recipe():
    """The same task at length 8 with the paper's label smoothing and beam 4 / alpha 0.6."""
    rng = np.random.default_rng(3)
    length = 8
    sources = rng.integers(FIRST_DIGIT, VOCAB, (40000, length)).astype("int32")
    targets = np.concatenate([sources[:, ::-1], np.full((len(sources), 1), END, "int32")], axis=1)
    model = EncoderDecoderTransformer(
        VOCAB, num_encoder_layers=2, num_decoder_layers=2, d_model=64, num_heads=4, d_ff=128, dropout=0.1
    )
    compile_with_paper_recipe(model, 64, warmup_steps=400, scale=1.0)
    inputs = {"encoder_token_ids": sources, "decoder_token_ids": shift_right(targets, START)}
    model.fit(dataset(inputs, targets), epochs=4, verbose=0, shuffle=False)
    held_out = rng.integers(FIRST_DIGIT, VOCAB, (200, length)).astype("int32")
    beam = model.generate(held_out, max_length=length + 1, start_id=START, end_id=END, num_beams=4)
    assert np.mean(np.all(beam[:, :length] == held_out[:, ::-1], axis=1)) >= 0.95
