"""The three models: graph, names, masks, tied embeddings, config and `.keras` round-trips."""

import keras
import numpy as np
import pytest

from keras_transformer.models import (
    DecoderOnlyTransformer,
    EncoderDecoderTransformer,
    EncoderOnlyTransformer,
)

TINY = dict(d_model=16, num_heads=2, d_ff=32, dropout=0.0)


def encoder_decoder(**overrides):
    return EncoderDecoderTransformer(**{"vocab_size": 20, "num_encoder_layers": 2, "num_decoder_layers": 2,
                                        **TINY, **overrides})


def decoder_only(**overrides):
    return DecoderOnlyTransformer(**{"vocab_size": 20, "num_layers": 2, **TINY, **overrides})


def encoder_only(**overrides):
    return EncoderOnlyTransformer(**{"vocab_size": 20, "num_layers": 2, **TINY, **overrides})


def seq2seq_inputs(batch=2, source=6, target=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "encoder_token_ids": rng.integers(3, 20, (batch, source)).astype("int32"),
        "decoder_token_ids": rng.integers(3, 20, (batch, target)).astype("int32"),
    }


def token_inputs(batch=2, length=5, seed=0):
    return {"token_ids": np.random.default_rng(seed).integers(3, 20, (batch, length)).astype("int32")}


# -- graph, shapes and names -----------------------------------------------------------------------


def test_encoder_decoder_shapes_and_layer_names():
    model = encoder_decoder(norm_first=True)
    assert model(seq2seq_inputs()).shape == (2, 4, 20)
    names = {layer.name for layer in model.layers}
    assert {"token_embedding", "encoder_block_0", "encoder_block_1", "decoder_block_0", "decoder_block_1",
            "encoder_final_norm", "decoder_final_norm", "logits"} <= names
    assert model.output.name.startswith("logits") or model.layers[-1].name == "logits"
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"


def test_decoder_only_and_encoder_only_names():
    gpt = decoder_only(norm_first=True, positional="learned", max_length=16)
    assert gpt(token_inputs()).shape == (2, 5, 20)
    assert {"token_embedding", "decoder_block_0", "final_norm", "logits"} <= {layer.name for layer in gpt.layers}
    encoder = encoder_only()
    assert encoder(token_inputs()).shape == (2, 5, 16)
    assert encoder.layers[-1].name == "hidden_states"


@pytest.mark.parametrize(
    "head, pooling, expected",
    [("classification", "cls", (2, 3)), ("classification", "mean", (2, 3)),
     ("token_classification", "cls", (2, 5, 3)), ("masked_lm", "cls", (2, 5, 20))],
)
def test_encoder_only_heads(head, pooling, expected):
    num_classes = None if head == "masked_lm" else 3
    model = encoder_only(head=head, num_classes=num_classes, pooling=pooling)
    assert tuple(model(token_inputs()).shape) == expected
    assert model.layers[-1].name == "logits"


# -- tied embeddings (paper 3.4) ---------------------------------------------------------------------


def test_shared_vocabulary_ties_source_target_and_projection():
    tied = encoder_decoder()
    untied = encoder_decoder(tie_embeddings=False)
    embeddings = tied.get_layer("token_embedding").embeddings
    assert sum(w is embeddings for w in tied.weights) == 1  # one matrix, used three times
    assert untied.count_params() - tied.count_params() == 20 * 16  # the extra pre-softmax matrix
    # logits == last decoder state @ E^T
    hidden = keras.Model(tied.inputs, tied.get_layer("decoder_block_1").output)
    inputs = seq2seq_inputs()
    expected = keras.ops.convert_to_numpy(hidden(inputs)) @ keras.ops.convert_to_numpy(embeddings).T
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tied(inputs)), expected, rtol=1e-5, atol=1e-5)


def test_separate_target_vocabulary():
    model = encoder_decoder(target_vocab_size=11)
    inputs = seq2seq_inputs()
    inputs["decoder_token_ids"] = inputs["decoder_token_ids"] % 11
    assert model(inputs).shape == (2, 4, 11)
    assert model.get_layer("decoder_token_embedding").embeddings.shape == (11, 16)


# -- masks ------------------------------------------------------------------------------------------


def test_source_padding_does_not_change_encoder_decoder_logits():
    model = encoder_decoder()
    inputs = seq2seq_inputs(batch=1)
    padded = dict(inputs, encoder_token_ids=np.pad(inputs["encoder_token_ids"], ((0, 0), (0, 3))))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(inputs)), keras.ops.convert_to_numpy(model(padded)), atol=1e-5)


def test_decoders_are_causal():
    model = decoder_only()
    inputs = token_inputs(batch=1)
    changed = {"token_ids": inputs["token_ids"].copy()}
    changed["token_ids"][0, -1] = (changed["token_ids"][0, -1] + 1) % 20
    before, after = keras.ops.convert_to_numpy(model(inputs)), keras.ops.convert_to_numpy(model(changed))
    np.testing.assert_allclose(before[:, :-1], after[:, :-1], atol=1e-5)
    assert not np.allclose(before[:, -1], after[:, -1])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_encoder_only_padding_does_not_change_pooled_logits(pooling):
    model = encoder_only(head="classification", num_classes=2, pooling=pooling)
    inputs = token_inputs(batch=1)
    padded = {"token_ids": np.pad(inputs["token_ids"], ((0, 0), (0, 4)))}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(inputs)), keras.ops.convert_to_numpy(model(padded)), atol=1e-5)


# -- config and saving -------------------------------------------------------------------------------

MODELS = [
    (lambda: encoder_decoder(norm_first=True, positional="learned", max_length=16, activation="gelu"), seq2seq_inputs),
    (lambda: encoder_decoder(target_vocab_size=20, tie_embeddings=False), seq2seq_inputs),
    (lambda: decoder_only(norm_first=True, positional="learned", max_length=16), token_inputs),
    (lambda: encoder_only(head="classification", num_classes=3, pooling="mean"), token_inputs),
    (lambda: encoder_only(head="masked_lm"), token_inputs),
]


@pytest.mark.parametrize("make, inputs", MODELS)
def test_config_round_trip_and_keras_file(make, inputs, tmp_path):
    model = make()
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(inputs())), keras.ops.convert_to_numpy(model(inputs())), atol=1e-6)

    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == config
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(inputs())), keras.ops.convert_to_numpy(model(inputs())))


def test_mixed_precision_keeps_float32_logits():
    model = decoder_only(dtype="mixed_float16")
    logits = model(token_inputs())
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert model.get_layer("decoder_block_0").compute_dtype == "float16"
    assert type(model).from_config(model.get_config()).get_config()["dtype"] == "mixed_float16"


# -- bad arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: encoder_decoder(d_model=15), "divisible"),
        (lambda: encoder_decoder(positional="learned"), "max_length"),
        (lambda: encoder_decoder(pad_id=20), "pad_id"),
        (lambda: decoder_only(num_layers=0), "num_layers"),
        (lambda: encoder_only(head="pooler"), "head"),
        (lambda: encoder_only(head="classification"), "num_classes"),
        (lambda: encoder_only(num_classes=3), "num_classes"),
        (lambda: encoder_only(pooling="max", head="classification", num_classes=2), "pooling"),
    ],
)
def test_bad_arguments_raise_early(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_single_input_models_take_a_plain_array_without_warnings():
    import warnings

    from keras_transformer.models import EncoderOnlyTransformer

    x = np.random.default_rng(0).integers(1, 30, (8, 5)).astype("int32")
    cases = [(DecoderOnlyTransformer(30, 1, 16, 2, 32), x),
             (EncoderOnlyTransformer(30, 1, 16, 2, 32, head="classification", num_classes=2), x[:, 0] % 2)]
    for model, labels in cases:
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Keras's "structure of `inputs` doesn't match" included
            # PyTorch's own Tensor.__array__ lacks numpy 2's `copy` keyword (torch 2.13): not ours.
            warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
            model.fit(x, labels, epochs=1, verbose=0, validation_split=0.25)
            from_array = model.predict(x, verbose=0)
            model.evaluate(x, labels, verbose=0)
        np.testing.assert_allclose(from_array, model.predict({"token_ids": x}, verbose=0), rtol=1e-6, atol=1e-6)
