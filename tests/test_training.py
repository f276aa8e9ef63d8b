"""Training recipe: Noam schedule, smoothed masked loss, masked accuracy, perplexity, fit()."""

import keras
import numpy as np
import pytest

from keras_transformer.models import DecoderOnlyTransformer
from keras_transformer.training import (
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    NoamSchedule,
    Perplexity,
    paper_optimizer,
    shift_right,
)


def numpy_log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def batch(seed=0, vocab=7):
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, vocab, (3, 5))
    labels[0, 3:] = 0
    labels[2, 1:] = 0
    logits = rng.normal(size=(3, 5, vocab)).astype("float32") * 2
    return labels, logits


# -- Noam schedule -----------------------------------------------------------------------------------


def test_noam_schedule_matches_equation_3():
    schedule = NoamSchedule(d_model=512, warmup_steps=4000)
    iterations = np.array([0, 1, 99, 3999, 4000, 20000])
    steps = iterations + 1.0
    expected = 512**-0.5 * np.minimum(steps**-0.5, steps * 4000**-1.5)
    got = np.array([float(schedule(i)) for i in iterations])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.argmax([float(schedule(i)) for i in range(3990, 4010)]) == 9  # peak at step 4000


def test_noam_schedule_serializes_inside_adam():
    optimizer = paper_optimizer(d_model=64, warmup_steps=10)
    assert (optimizer.beta_2, optimizer.epsilon) == (0.98, 1e-9)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored.learning_rate, NoamSchedule) or isinstance(restored._learning_rate, NoamSchedule)
    assert restored._learning_rate.get_config() == {"d_model": 64, "warmup_steps": 10, "scale": 1.0}
    with pytest.raises(ValueError, match="warmup_steps"):
        NoamSchedule(64, warmup_steps=0)


# -- loss and metrics against numpy ---------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_matches_numpy_and_ignores_padding(smoothing):
    labels, logits = batch()
    log_probs = numpy_log_softmax(logits.astype(np.float64))
    vocab = logits.shape[-1]
    target = np.eye(vocab)[labels] * (1 - smoothing) + smoothing / vocab
    per_token = -(target * log_probs).sum(-1)
    mask = labels != 0
    expected = per_token[mask].mean()
    loss = MaskedSparseCategoricalCrossentropy(label_smoothing=smoothing, pad_id=0)
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
    # per-token sample weights multiply; the mean stays over real tokens
    weights = np.random.default_rng(1).uniform(0.5, 2.0, labels.shape)
    weighted = (per_token * weights)[mask].sum() / mask.sum()
    np.testing.assert_allclose(float(loss(labels, logits, sample_weight=weights)), weighted, rtol=1e-5)


def test_loss_without_smoothing_equals_keras_ignore_class():
    labels, logits = batch(seed=3)
    ours = MaskedSparseCategoricalCrossentropy(label_smoothing=0.0, pad_id=0)(labels, logits)
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)(labels, logits)
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-5)


def test_metrics_match_numpy_over_several_batches():
    accuracy, perplexity = MaskedAccuracy(pad_id=0), Perplexity(pad_id=0)
    correct = tokens = nll = 0.0
    for seed in (0, 1):
        labels, logits = batch(seed)
        accuracy.update_state(labels, logits)
        perplexity.update_state(labels, logits)
        mask = labels != 0
        correct += (logits.argmax(-1) == labels)[mask].sum()
        tokens += mask.sum()
        nll += -np.take_along_axis(numpy_log_softmax(logits.astype(np.float64)), labels[..., None], -1)[..., 0][mask].sum()
    np.testing.assert_allclose(float(accuracy.result()), correct / tokens, rtol=1e-6)
    np.testing.assert_allclose(float(perplexity.result()), np.exp(nll / tokens), rtol=1e-5)
    accuracy.reset_state()
    assert float(accuracy.result()) == 0.0


def test_objects_round_trip_through_keras_serialization():
    for obj in (MaskedSparseCategoricalCrossentropy(0.2, pad_id=3), MaskedAccuracy(pad_id=3), Perplexity(pad_id=3)):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(restored) is type(obj) and restored.pad_id == 3


def test_shift_right():
    target = np.array([[5, 6, 2, 0], [7, 2, 0, 0]])
    np.testing.assert_array_equal(shift_right(target, start_id=1), [[1, 5, 6, 2], [1, 7, 2, 0]])


# -- compile / fit with tf.data, and the saved compiled model -------------------------------------------


@pytest.mark.tensorflow
def test_fit_with_tf_data_reduces_the_loss_and_saves(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    starts = rng.integers(1, 10, (256, 1))
    sequences = (starts + np.arange(9)) % 10 + 1  # count upwards: a learnable next-token pattern
    sequences[::2, 6:] = 0  # right padding in half of the rows
    dataset = tf.data.Dataset.from_tensor_slices(({"token_ids": sequences[:, :-1]}, sequences[:, 1:])).batch(32)
    model = DecoderOnlyTransformer(vocab_size=12, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.0)
    model.compile(
        optimizer=keras.optimizers.Adam(NoamSchedule(16, warmup_steps=20, scale=2.0), beta_2=0.98, epsilon=1e-9),
        loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
        metrics=[MaskedAccuracy(), Perplexity()],
    )
    history = model.fit(dataset, epochs=4, verbose=0, shuffle=False).history  # a tf.data pipeline
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert history["perplexity"][-1] < history["perplexity"][0]
    path = str(tmp_path / "trained.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, MaskedSparseCategoricalCrossentropy)
    np.testing.assert_allclose(
        loaded.evaluate(dataset, verbose=0), model.evaluate(dataset, verbose=0), rtol=1e-5
    )
