"""BERT and BART shapes of our models: segment embeddings, embedding norms, pooler, MLM output
bias, per-stack position tables with an offset, unscaled embeddings; config, saving, and native
ONNX export (full and KV-cache graphs) of each. Numerical identity with keras-hub's BertBackbone
and BartBackbone is tested with the checkpoint converters (tests/test_checkpoints_bert_bart.py)."""

import keras
import numpy as np
import onnxruntime as ort
import pytest

import export
from export.native import build, build_encoder_decoder_for_generation
from keras_transformer.layers import PositionalEncoding
from keras_transformer.models import EncoderDecoderTransformer, EncoderOnlyTransformer
from tests._native_helpers import run_onnx

ATOL = 1e-4
VOCAB, D, HEADS, FF, MAX = 40, 16, 2, 32, 24


def bert(**overrides):
    config = dict(vocab_size=VOCAB, num_layers=2, d_model=D, num_heads=HEADS, d_ff=FF, dropout=0.0,
                  max_length=MAX, positional="learned", activation="gelu", scale_embeddings=False,
                  layer_norm_epsilon=1e-12, num_segments=2, embedding_norm=True, pooler=True)
    config.update(overrides)
    return EncoderOnlyTransformer(**config)


def bart(**overrides):
    config = dict(vocab_size=VOCAB, num_encoder_layers=2, num_decoder_layers=2, d_model=D, num_heads=HEADS,
                  d_ff=FF, dropout=0.0, max_length=MAX, positional="learned", activation="gelu",
                  layer_norm_epsilon=1e-5, scale_embeddings=False, embedding_norm=True, share_positions=False,
                  position_offset=2)
    config.update(overrides)
    return EncoderDecoderTransformer(**config)


def randomize(model, seed=0):
    """Weights large enough that outputs (and greedy tokens) depend on every part."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = rng.normal(0.0, 0.3 if len(weight.shape) > 1 else 0.05, size=weight.shape)
        weight.assign((value + (weight.path.endswith("gamma"))).astype("float32"))
    return model


def token_ids(batch, length, seed=0):
    """Ids in [1, VOCAB) right-padded with 0 in every row but the first."""
    ids = np.random.default_rng(seed).integers(1, VOCAB, size=(batch, length)).astype("int32")
    for row in range(1, batch):
        ids[row, max(1, length - 2 * row):] = 0
    return ids


def bert_inputs(batch=3, length=9, seed=0):
    ids = token_ids(batch, length, seed)
    segments = (np.arange(length)[None, :] >= length // 2).astype("int32") * (ids != 0)
    return {"token_ids": ids, "segment_ids": segments}


def bart_inputs(batch=3, source=9, target=6, seed=0):
    return {"encoder_token_ids": token_ids(batch, source, seed), "decoder_token_ids": token_ids(batch, target, seed + 1)}


# -- BERT ---------------------------------------------------------------------------------------------


def test_bert_shape_inputs_outputs_and_pooler():
    model = randomize(bert())
    assert sorted(model.input) == ["segment_ids", "token_ids"]
    assert model.get_layer("token_embedding").dropout == 0.0  # dropout moves after the norm
    assert model.get_layer("embedding_dropout").rate == 0.0
    feeds = bert_inputs()
    outputs = model(feeds)
    hidden, pooled = keras.ops.convert_to_numpy(outputs["hidden_states"]), keras.ops.convert_to_numpy(outputs["pooled_output"])
    assert hidden.shape == (3, 9, D) and pooled.shape == (3, D)
    pooler = model.get_layer("pooler")
    expected = np.tanh(hidden[:, 0] @ keras.ops.convert_to_numpy(pooler.kernel) + keras.ops.convert_to_numpy(pooler.bias))
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    # the segment ids take part; padding does not change the real positions
    other = dict(feeds, segment_ids=1 - feeds["segment_ids"])
    assert np.abs(keras.ops.convert_to_numpy(model(other)["hidden_states"]) - hidden).max() > 1e-2
    short = {name: value[:1, :5] for name, value in feeds.items()}
    padded = {name: np.pad(value, ((0, 0), (0, 3))) for name, value in short.items()}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(padded)["pooled_output"]),
                               keras.ops.convert_to_numpy(model(short)["pooled_output"]), atol=1e-5)


def test_bert_embedding_is_layer_normalized_sum_of_tokens_positions_segments():
    model = randomize(bert(num_layers=1))
    feeds = bert_inputs(batch=1, length=5)
    tokens = keras.ops.convert_to_numpy(model.token_embedding.token_embedding.embeddings)[feeds["token_ids"][0]]
    positions = keras.ops.convert_to_numpy(model.token_embedding.position_encoding.position_embeddings)[:5]
    segments = keras.ops.convert_to_numpy(model.segment_embedding.embeddings)[feeds["segment_ids"][0]]
    total = tokens + positions + segments
    norm = model.embedding_norm
    expected = (total - total.mean(-1, keepdims=True)) / np.sqrt(total.var(-1, keepdims=True) + 1e-12)
    expected = expected * keras.ops.convert_to_numpy(norm.gamma) + keras.ops.convert_to_numpy(norm.beta)
    probe = keras.Model(model.input, model.get_layer("embedding_dropout").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probe(feeds))[0], expected, atol=1e-4)


def test_mlm_output_bias_is_added_to_the_tied_projection():
    model = randomize(bert(head="masked_lm", pooler=False, mlm_output_bias=True))
    bias = keras.ops.convert_to_numpy(model.get_layer("mlm_output_bias").bias)
    feeds = bert_inputs()
    with_bias = keras.ops.convert_to_numpy(model(feeds))
    model.get_layer("mlm_output_bias").bias.assign(np.zeros_like(bias))
    np.testing.assert_allclose(with_bias, keras.ops.convert_to_numpy(model(feeds)) + bias, atol=1e-5)
    assert with_bias.shape == (3, 9, VOCAB)


def test_classification_through_the_pooler():
    model = randomize(bert(head="classification", num_classes=3))
    feeds = bert_inputs()
    pooled = keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("pooler").output)(feeds))
    classifier = model.get_layer("classifier")
    expected = pooled @ keras.ops.convert_to_numpy(classifier.kernel) + keras.ops.convert_to_numpy(classifier.bias)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(feeds)), expected, atol=1e-5)


def test_defaults_keep_the_plain_encoder():
    model = EncoderOnlyTransformer(VOCAB, 1, D, HEADS, FF)
    assert list(model.input) == ["token_ids"]
    names = {layer.name for layer in model.layers}
    assert not names & {"segment_embedding", "embedding_norm", "embedding_dropout", "pooler"}


# -- BART ---------------------------------------------------------------------------------------------


def test_position_offset_reads_the_rows_after_the_offset():
    layer = PositionalEncoding("learned", max_length=6, offset=2)
    x = np.zeros((1, 3, 4), "float32")
    out = keras.ops.convert_to_numpy(layer(x, start_index=1))
    table = keras.ops.convert_to_numpy(layer.position_embeddings)
    assert table.shape == (8, 4)
    np.testing.assert_array_equal(out[0], table[3:6])
    with pytest.raises(ValueError, match="6 positions"):
        layer(np.zeros((1, 7, 4), "float32"))
    assert PositionalEncoding.from_config(layer.get_config()).offset == 2


def test_bart_shape_has_per_stack_positions_and_embedding_norms():
    model = bart()
    paths = sorted(w.path for w in model.weights if "position" in w.path or "embedding_norm" in w.path)
    assert paths == ["decoder_embedding_norm/beta", "decoder_embedding_norm/gamma",
                     "decoder_position_encoding/position_embeddings", "encoder_embedding_norm/beta",
                     "encoder_embedding_norm/gamma", "encoder_position_encoding/position_embeddings"]
    assert model.get_layer("encoder_position_encoding").position_embeddings.shape == (MAX + 2, D)
    assert model.token_embedding.position_encoding is None and not model.token_embedding.scale
    randomize(model)
    feeds = bart_inputs()
    logits = keras.ops.convert_to_numpy(model(feeds))
    # each stack reads its own table: changing the decoder's leaves the encoder's output alone
    caches, _ = model.encode(feeds["encoder_token_ids"])
    table = model.get_layer("decoder_position_encoding").position_embeddings
    table.assign(keras.ops.convert_to_numpy(table)[::-1])  # another table (a constant shift would vanish in the norm)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.encode(feeds["encoder_token_ids"])[0][0]), keras.ops.convert_to_numpy(caches[0]))
    assert np.abs(keras.ops.convert_to_numpy(model(feeds)) - logits).max() > 1e-3  # float noise is ~1e-7


def test_bart_cached_generation_equals_full_recompute():
    model = randomize(bart(), seed=3)
    source = token_ids(3, 8, seed=5)
    cached = model.generate(source, max_length=6, start_id=1, end_id=2)
    full = model.generate(source, max_length=6, start_id=1, end_id=2, use_cache=False)
    np.testing.assert_array_equal(cached, full)
    assert len(np.unique(cached)) > 2  # not a degenerate constant sequence


# -- config, saving, bad arguments --------------------------------------------------------------------


@pytest.mark.parametrize("make, inputs", [
    (lambda: bert(), bert_inputs),
    (lambda: bert(head="masked_lm", pooler=False, mlm_output_bias=True), bert_inputs),
    (lambda: bart(), bart_inputs),
])
def test_config_round_trip_and_keras_file(make, inputs, tmp_path):
    model = randomize(make())
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == config
    expected, got = model(inputs()), loaded(inputs())
    for key in (expected if isinstance(expected, dict) else [None]):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got[key] if key else got), keras.ops.convert_to_numpy(expected[key] if key else expected))


@pytest.mark.parametrize("make, message", [
    (lambda: bert(head="masked_lm"), "pooler=True with head='masked_lm'"),
    (lambda: bert(head="classification", num_classes=2, pooling="mean"), "pooling='mean'"),
    (lambda: bert(mlm_output_bias=True), "mlm_output_bias=True with head=None"),
    (lambda: bert(num_segments=0), "num_segments=0"),
    (lambda: bart(position_offset=-1), "offset=-1"),
    (lambda: bart(positional="sinusoidal"), "share_positions=False with positional='sinusoidal'"),
    (lambda: bart(share_positions=True, positional="sinusoidal", position_offset=2), "offset=2"),
    (lambda: bart(scale_embedding=False), "scale_embedding"),
])
def test_bad_arguments_raise_early(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make()


# -- native ONNX ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, dict(head="masked_lm", pooler=False, mlm_output_bias=True),
                                       dict(head="classification", num_classes=3)])
def test_bert_native_onnx_matches_keras(overrides):
    model = randomize(bert(**overrides))
    proto = build(model)
    assert [i.name for i in proto.graph.input] == ["token_ids", "segment_ids"]
    for batch, length in [(1, 1), (3, 9)]:
        feeds = bert_inputs(batch, length)
        expected = model(feeds)
        expected = [expected["hidden_states"], expected["pooled_output"]] if isinstance(expected, dict) else [expected]
        got = run_onnx(proto, feeds)
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, keras.ops.convert_to_numpy(e), atol=ATOL, rtol=ATOL)


def test_bart_native_onnx_full_and_generation_graphs_match_keras(tmp_path):
    model = randomize(bart(), seed=1)
    feeds = bart_inputs()
    full = run_onnx(build(model, attention="portable"), feeds)[0]
    np.testing.assert_allclose(full, keras.ops.convert_to_numpy(model(feeds)), atol=ATOL, rtol=ATOL)
    encoder, decoder = (ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
                        for p in build_encoder_decoder_for_generation(model))
    names = [o.name for o in encoder.get_outputs()]
    encoded = dict(zip(names, encoder.run(names, {"encoder_token_ids": feeds["encoder_token_ids"]})))
    target = feeds["decoder_token_ids"]
    head_dim = D // HEADS
    past = {f"past_key_values.{i}.{part}": np.zeros((3, HEADS, 0, head_dim), "float32")
            for i in range(2) for part in ("key", "value")}
    out_names = [o.name for o in decoder.get_outputs()]
    steps = []
    for chunk in (target[:, :2], target[:, 2:3], target[:, 3:]):  # positions past the offset rows
        outputs = dict(zip(out_names, decoder.run(out_names, {"decoder_token_ids": chunk, **encoded, **past})))
        steps.append(outputs["logits"])
        past = {k.replace("present", "past_key_values"): v for k, v in outputs.items() if k.startswith("present")}
    real = target != 0  # full-sequence and cached graphs agree at every real target position
    np.testing.assert_allclose(np.concatenate(steps, axis=1)[real], full[real], atol=ATOL, rtol=ATOL)


def test_to_onnx_validates_bert_with_segment_ids(tmp_path):
    model = randomize(bert())
    report = export.to_onnx(model, tmp_path / "bert.onnx", max_length=8, batch_sizes=(2,))
    assert report.method == "native" and report.validation.passed
    session = ort.InferenceSession(str(tmp_path / "bert.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["hidden_states", "pooled_output"]
    # the sweep draws segment ids from [0, 2) and token ids from the whole vocabulary
    from export.signatures import model_signature
    from export.validate import model_sweep

    feeds = model_sweep(model, model_signature(model).inputs, 8, batch_sizes=(3,))[-1].feeds
    assert set(np.unique(feeds["segment_ids"])) == {0, 1} and feeds["token_ids"].max() > 2
