"""LoRA and Keras quantization on our models: training, saving, and native ONNX export of the
merged / integer weights, validated against the Keras model; and the Llama-shaped configuration."""

import keras
import numpy as np
import pytest

import export
from export.native import build, build_decoder_with_past, save_generation_graphs, unsupported_reason
from export.decoding import generate as onnx_generate
from keras_transformer.models import DecoderOnlyTransformer, EncoderOnlyTransformer
from tests._native_helpers import run_onnx

VOCAB = 40


def _llama(**overrides):
    config = dict(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4, d_ff=48, num_key_value_heads=2,
                  positional="rotary", norm_first=True, normalization="rms_norm", use_bias=False,
                  gated_feed_forward=True, activation="silu", tie_embeddings=False, scale_embeddings=False,
                  dropout=0.0, layer_norm_epsilon=1e-5)
    config.update(overrides)
    return DecoderOnlyTransformer(**config)


def _gpt(**overrides):
    config = dict(vocab_size=VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, norm_first=True,
                  activation="gelu_approximate", scale_embeddings=False, max_length=32, positional="learned",
                  dropout=0.0)
    config.update(overrides)
    return DecoderOnlyTransformer(**config)


def _ids(batch=2, length=6, seed=0):
    ids = np.random.default_rng(seed).integers(1, VOCAB, size=(batch, length)).astype("int32")
    ids[1, -2:] = 0
    return ids


def _randomize_lora(model):
    rng = np.random.default_rng(3)
    for weight in model.trainable_weights:
        weight.assign(rng.normal(scale=0.2, size=weight.shape).astype("float32"))


@pytest.mark.parametrize("make", [_gpt, _llama], ids=["gpt", "llama"])
def test_native_export_of_modern_and_gpt2_shapes_matches_keras(make):
    model = make()
    ids = _ids()
    for attention in ("fused", "portable"):
        got = run_onnx(build(model, attention=attention), {"token_ids": ids})[0]
        np.testing.assert_allclose(got, keras.ops.convert_to_numpy(model({"token_ids": ids})), atol=1e-4, rtol=1e-4)


def test_llama_kv_cache_graphs_generate_the_keras_tokens(tmp_path):
    model = _llama()
    prompts = [[5, 6, 7, 8], [9, 10]]
    expected = model.generate(prompts, max_new_tokens=5, temperature=0.0)
    save_generation_graphs(model, tmp_path / "gen")
    np.testing.assert_array_equal(onnx_generate(tmp_path / "gen", prompts, max_new_tokens=5, temperature=0.0),
                                  expected)
    proto = build_decoder_with_past(model)
    past = [i for i in proto.graph.input if i.name == "past_key_values.0.key"][0]
    assert past.type.tensor_type.shape.dim[1].dim_value == 2  # the cache holds the 2 key/value heads


def test_lora_trains_only_adapters_and_exports_merged(tmp_path):
    model = _gpt()
    before = {w.path: w.numpy().copy() for w in model.weights}
    model.enable_lora(2)
    assert model.trainable_weights and all("lora" in w.path for w in model.trainable_weights)
    assert {w.path.rsplit("/", 2)[-2] for w in model.trainable_weights} == {"query", "value"}
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(32, 8)).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit({"token_ids": ids[:, :-1]}, ids[:, 1:], epochs=4, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for w in model.weights:
        if "lora" not in w.path:
            np.testing.assert_array_equal(w.numpy(), before[w.path], err_msg=w.path)
    path = tmp_path / "lora.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded({"token_ids": _ids()})),
                               keras.ops.convert_to_numpy(model({"token_ids": _ids()})), atol=1e-6)
    assert [w.path for w in reloaded.trainable_weights] == [w.path for w in model.trainable_weights]
    report = export.to_onnx(model, tmp_path / "lora.onnx", max_length=8, batch_sizes=(2,))
    assert report.method == "native" and report.validation.passed


def test_lora_bad_targets_name_the_choices():
    model = _gpt()
    with pytest.raises(ValueError, match="projection names: .*intermediate_dense"):
        model.enable_lora(2, target_names=["qeury"])
    with pytest.raises(ValueError, match="rank"):
        model.enable_lora(0)


@pytest.mark.parametrize("mode,tolerance", [("int8", 0.15), ("int4", 0.6)])
@pytest.mark.parametrize("make", [_gpt, _llama], ids=["gpt", "llama"])
def test_quantized_models_run_save_and_export_their_integers(tmp_path, make, mode, tolerance):
    model = make()
    ids = _ids()
    reference = keras.ops.convert_to_numpy(model({"token_ids": ids}))
    model.quantize(mode)
    quantized = keras.ops.convert_to_numpy(model({"token_ids": ids}))
    error = np.abs(quantized - reference).max() / np.abs(reference).max()
    assert 0 < error < tolerance, error  # quantization changed the logits, by a bounded amount
    assert unsupported_reason(model) is None
    proto = build(model)
    integer_weights = [t for t in proto.graph.initializer if t.data_type in (2, 3)]  # uint8/int8
    assert integer_weights
    np.testing.assert_allclose(run_onnx(proto, {"token_ids": ids})[0], quantized, atol=1e-4, rtol=1e-4)
    path = tmp_path / f"{mode}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded({"token_ids": ids})), quantized, atol=1e-6)


def test_encoder_only_rms_rotary_exports_natively():
    model = EncoderOnlyTransformer(VOCAB, 1, 16, 4, 32, num_key_value_heads=2, positional="rotary",
                                   norm_first=True, normalization="rms_norm", dropout=0.0)
    ids = _ids()
    np.testing.assert_allclose(run_onnx(build(model), {"token_ids": ids})[0],
                               keras.ops.convert_to_numpy(model({"token_ids": ids})),
                               atol=1e-4)


def test_subclass_overriding_compute_attention_is_traced_with_a_reason():
    from keras_transformer.layers import MultiHeadAttention

    class TemperedAttention(MultiHeadAttention):
        def _compute_attention(self, query, key, value, **kwargs):
            return super()._compute_attention(query * 0.5, key, value, **kwargs)

    model = _gpt()
    assert unsupported_reason(model) is None
    # As if a block subclass had built its self-attention from TemperedAttention.
    model.decoder_blocks[0].self_attention.__class__ = TemperedAttention
    assert "TemperedAttention overrides _compute_attention() of MultiHeadAttention" in unsupported_reason(model)


def test_model_constructors_reject_unknown_arguments():
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['scale_embedding'\]"):
        DecoderOnlyTransformer(VOCAB, 1, 16, 2, 32, scale_embedding=False)


@pytest.mark.parametrize("change", ["lora", "quantize"])
def test_generation_after_lora_or_quantize_uses_the_new_projections(change):
    """`generate` compiled before `enable_lora` / `quantize` is not reused afterwards (it would
    keep computing with the old kernels)."""
    model = _llama()
    prompt = [[3, 4, 5]]
    model.generate(prompt, max_new_tokens=4, temperature=0.0)  # compiles the cached step
    if change == "lora":
        model.enable_lora(2)
        _randomize_lora(model)
    else:
        model.quantize("int8")
    expected = model.generate(prompt, max_new_tokens=4, temperature=0.0, use_cache=False)
    fresh = DecoderOnlyTransformer.from_config(model.get_config())
    fresh.set_weights(model.get_weights())
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=4, temperature=0.0), expected)
    np.testing.assert_array_equal(fresh.generate(prompt, max_new_tokens=4, temperature=0.0), expected)
