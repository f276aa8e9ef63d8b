"""keras_transformer.visualize: captured attention equals the layer's own probabilities; PNGs."""

import keras
import numpy as np
import pytest

from keras_transformer import visualize
from keras_transformer.layers import DecoderBlock, EncoderBlock, MultiHeadAttention, TokenAndPositionEmbedding

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_SIGNATURE


@pytest.fixture
def seq2seq():
    """A tiny encoder-decoder graph built from our layers, with a padded source."""
    source = keras.Input((None,), dtype="int32")
    target = keras.Input((None,), dtype="int32")
    embed = TokenAndPositionEmbedding(20, 16, mask_zero=True)
    encoded = EncoderBlock(2, 32, dropout=0.0, name="encoder")(embed(source))
    decoded = DecoderBlock(2, 32, dropout=0.0, name="decoder")(embed(target), encoded)
    model = keras.Model([source, target], decoded)
    inputs = [np.array([[5, 6, 7, 0, 0], [3, 4, 5, 6, 7]]), np.array([[1, 2, 3], [4, 5, 6]])]
    return model, inputs


def test_attention_layers_finds_every_attention_with_its_path(seq2seq):
    model, _ = seq2seq
    paths = [path for path, _ in visualize.attention_layers(model)]
    assert paths == ["encoder/self_attention", "decoder/self_attention", "decoder/cross_attention"]


def test_captured_scores_are_the_layers_probabilities():
    layer = MultiHeadAttention(num_heads=2)
    query = keras.random.normal((2, 4, 16), seed=1)
    value = keras.random.normal((2, 6, 16), seed=2)
    mask = np.ones((2, 4, 6), dtype=bool)
    mask[1, :, 3:] = False
    _, expected = layer(query, value, attention_mask=mask, return_attention_scores=True)

    (captured,) = visualize.capture_attention(
        lambda _: layer(query, value, attention_mask=mask), None, [layer]
    )
    np.testing.assert_allclose(captured, keras.ops.convert_to_numpy(expected), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(captured.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(captured[1, :, :, 3:], 0.0, atol=1e-6)


def test_capture_leaves_the_model_outputs_and_layer_unchanged(seq2seq):
    model, inputs = seq2seq
    before = keras.ops.convert_to_numpy(model(inputs))
    layers = [layer for _, layer in visualize.attention_layers(model)]
    scores = visualize.capture_attention(model, inputs, layers)
    assert [s.shape for s in scores] == [(2, 2, 5, 5), (2, 2, 3, 3), (2, 2, 3, 5)]
    for s in scores:
        np.testing.assert_allclose(s.sum(axis=-1), 1.0, atol=1e-5)
    # Source padding is never attended; decoder self-attention is causal.
    np.testing.assert_allclose(scores[2][0, :, :, 3:], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.triu(scores[1][0, 0], k=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(inputs)), before, rtol=1e-6)
    assert "call" not in vars(layers[0])  # the recording hook was removed


def test_attention_layers_pairs_are_accepted_as_they_are(seq2seq):
    model, inputs = seq2seq
    pairs = visualize.attention_layers(model)
    from_pairs = visualize.capture_attention(model, inputs, pairs)
    from_layers = visualize.capture_attention(model, inputs, [layer for _, layer in pairs])
    assert len(from_pairs) == len(pairs)
    for a, b in zip(from_pairs, from_layers):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_capture_rejects_foreign_layers_and_layers_that_did_not_run(seq2seq):
    model, inputs = seq2seq
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        visualize.capture_attention(model, inputs, [keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="did not run"):
        visualize.capture_attention(model, inputs, [MultiHeadAttention(num_heads=2)])


def test_plot_attention_writes_png_and_checks_labels(tmp_path):
    scores = np.full((2, 3, 4), 0.25, dtype="float32")
    path = visualize.plot_attention(scores, list("abcd"), list("xyz"), str(tmp_path / "sub" / "a.png"))
    assert _is_png(path)
    with pytest.raises(ValueError, match="key_labels"):
        visualize.plot_attention(scores, list("abc"), list("xyz"), str(tmp_path / "b.png"))
    with pytest.raises(ValueError, match="scores"):
        visualize.plot_attention(np.zeros((1, 2, 3, 4)), path=str(tmp_path / "c.png"))


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("heads, query_length, key_length", [(4, 3, 4), (2, 10, 31), (1, 2, 2), (5, 4, 6)])
def test_attention_figure_is_readable(heads, query_length, key_length):
    plt = visualize._pyplot()
    scores = np.random.default_rng(0).dirichlet(np.ones(key_length), (heads, query_length)).astype("float32")
    fig = visualize.attention_figure(scores, list("abcdefghijklmnopqrstuvwxyz0123456789")[:key_length],
                                     list("xyzuvwpqrs")[:query_length], title="a long figure title " * 3,
                                     key_title="source", query_title="output")
    try:
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        panels = [axis for axis in fig.axes if axis.get_label() != "<colorbar>"]
        assert len(panels) == 1 + (heads if heads > 1 else 0)  # no empty grid slot
        for axis in panels:
            assert axis.has_data()
            assert axis.get_xlabel() == "source" and axis.get_ylabel() == "output"
            assert all(label.get_rotation() == 0 for label in axis.get_xticklabels())  # characters upright
        suptitle = fig._suptitle.get_window_extent(renderer)
        assert not any(_overlap(suptitle, axis.title.get_window_extent(renderer)) for axis in panels)
    finally:
        plt.close(fig)


def test_training_curves_from_a_real_history(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = np.random.rand(8, 3).astype("float32"), np.array([0, 1] * 4)
    history = model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0)
    assert _is_png(visualize.plot_training_curves(history, str(tmp_path / "curves.png")))
    fig = visualize.training_curves_figure(history, title="curves")
    try:
        assert sorted(axis.get_ylabel() for axis in fig.axes) == ["accuracy", "loss"]
    finally:
        visualize._pyplot().close(fig)
    with pytest.raises(ValueError, match="history"):
        visualize.plot_training_curves({}, str(tmp_path / "empty.png"))


def test_confusion_matrix_and_bars(tmp_path):
    assert _is_png(visualize.plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b", "c"],
                                                   str(tmp_path / "cm.png")))
    with pytest.raises(ValueError, match="square"):
        visualize.plot_confusion_matrix(np.zeros((2, 3)), ["a", "b"], str(tmp_path / "bad.png"))
    assert _is_png(visualize.plot_bars({"ours": 3.0, "peer": 2.0}, str(tmp_path / "bars.png")))
