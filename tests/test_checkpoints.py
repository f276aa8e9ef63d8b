"""Checkpoints (GPT-2 and the Llama family): keras-hub presets and Hugging Face directories, read
and written, against keras-hub as the independent reference (random small models, no download)."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

keras_hub = pytest.importorskip("keras_hub")

from keras_transformer import checkpoints, tokenizers  # noqa: E402
from keras_transformer.models import DecoderOnlyTransformer, EncoderOnlyTransformer  # noqa: E402

ATOL = 1e-4
VOCAB = 50

# name -> (keras-hub backbone class, constructor arguments)
ARCHITECTURES = {
    "gpt2": ("GPT2Backbone", dict(num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=64,
                                  max_sequence_length=32)),
    "llama": ("LlamaBackbone", dict(num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32,
                                    intermediate_dim=64)),
    "llama_tied": ("LlamaBackbone", dict(num_layers=1, num_query_heads=4, num_key_value_heads=2, hidden_dim=32,
                                         intermediate_dim=48, tie_word_embeddings=True, rope_max_wavelength=500)),
    "mistral": ("MistralBackbone", dict(num_layers=2, num_query_heads=4, num_key_value_heads=1, hidden_dim=32,
                                        intermediate_dim=64)),
    "qwen2": ("QwenBackbone", dict(num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32,
                                   intermediate_dim=64, rope_max_wavelength=1e6)),
}


def _ids_and_mask():
    rng = np.random.default_rng(7)
    ids = rng.integers(1, VOCAB, size=(3, 11)).astype("int32")
    mask = np.ones_like(ids, dtype=bool)
    mask[1, 7:] = False
    mask[2, 3:] = False
    return np.where(mask, ids, 0).astype("int32"), mask


def _keras_hub_logits(backbone, ids, mask):
    hidden = backbone({"token_ids": ids, "padding_mask": mask})
    return np.asarray(backbone.token_embedding(hidden, reverse=True))


def _max_difference(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask].max())


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> (keras-hub backbone, its preset directory, its reference logits)."""
    ids, mask = _ids_and_mask()
    rng = np.random.default_rng(0)
    made = {}
    for name, (class_name, kwargs) in ARCHITECTURES.items():
        backbone = getattr(keras_hub.models, class_name)(vocabulary_size=VOCAB, **kwargs)
        for weight in backbone.weights:  # keras-hub initialises norms to 1 and biases to 0
            weight.assign(rng.normal(0.0, 0.3, weight.shape).astype("float32"))
        directory = str(tmp_path_factory.mktemp(name) / "preset")
        backbone.save_to_preset(directory)
        made[name] = (backbone, directory, _keras_hub_logits(backbone, ids, mask))
    return made


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_keras_hub_preset_matches_keras_hub(sources, name):
    backbone, directory, reference = sources[name]
    ids, mask = _ids_and_mask()
    model = DecoderOnlyTransformer.from_preset(directory)
    assert _max_difference(model(ids), reference, mask) < ATOL
    config = model.get_config()
    assert config["tie_embeddings"] == (name in ("gpt2", "llama_tied", "qwen2"))
    assert config["qkv_bias"] == (True if name == "qwen2" else None)
    if name == "mistral":  # sliding window 512 (keras-hub's default): generation stays inside it
        assert config["max_length"] == 512


@pytest.mark.parametrize("name,task", [("gpt2", "GPT2CausalLM"), ("llama", "LlamaCausalLM")])
def test_greedy_generation_matches_keras_hub(sources, name, task):
    backbone, directory, _ = sources[name]
    causal_lm = getattr(keras_hub.models, task)(backbone=backbone, preprocessor=None)
    causal_lm.compile(sampler="greedy")
    prompts = [[5, 6, 7, 8], [9, 10]]
    ids = np.zeros((2, 12), "int32")
    mask = np.zeros((2, 12), bool)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)], mask[row, :len(prompt)] = prompt, True
    expected = np.asarray(causal_lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)["token_ids"])
    model = DecoderOnlyTransformer.from_preset(directory)
    ours = model.generate(prompts, max_new_tokens=8, temperature=0.0, allow_pad=True)
    np.testing.assert_array_equal(ours[0], expected[0, :12])
    np.testing.assert_array_equal(ours[1, :10], expected[1, :10])


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_writers_round_trip_through_keras_hub(sources, name, tmp_path):
    """Ours -> keras-hub preset and Hugging Face directory -> keras-hub's loaders: same logits;
    ours -> HF -> ours -> HF: identical tensors."""
    _, directory, reference = sources[name]
    ids, mask = _ids_and_mask()
    model = DecoderOnlyTransformer.from_preset(directory)
    model.save_to_preset(tmp_path / "kh")
    back = keras_hub.models.Backbone.from_preset(str(tmp_path / "kh"))
    assert _max_difference(_keras_hub_logits(back, ids, mask), reference, mask) < ATOL
    model.export_to_transformers(tmp_path / "hf")
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    from_hf = keras_hub.models.Backbone.from_preset(str(tmp_path / "hf"))
    assert _max_difference(_keras_hub_logits(from_hf, ids, mask), reference, mask) < ATOL
    again = DecoderOnlyTransformer.from_preset(str(tmp_path / "hf"))
    assert _max_difference(again(ids), reference, mask) < ATOL
    again.export_to_transformers(tmp_path / "hf2")
    first, second = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "qwen2"])
def test_keras_hub_export_to_transformers_loads(sources, name, tmp_path):
    """Hugging Face directories written by keras-hub's own exporter."""
    backbone, _, reference = sources[name]
    ids, mask = _ids_and_mask()
    if name == "llama":  # keras-hub exports Llama through its Llama3Backbone (the same network)
        llama3 = keras_hub.models.Llama3Backbone.from_config(backbone.get_config())
        llama3.set_weights(backbone.get_weights())
        backbone = llama3
    if name in ("llama", "mistral"):  # untied: the causal LM task writes the lm_head too
        task = getattr(keras_hub.models, type(backbone).__name__.replace("Backbone", "CausalLM"))
        task(backbone=backbone, preprocessor=None).export_to_transformers(str(tmp_path / "hf"))
    else:
        backbone.export_to_transformers(str(tmp_path / "hf"))
    model = DecoderOnlyTransformer.from_preset(str(tmp_path / "hf"))
    assert _max_difference(model(ids), reference, mask) < ATOL


def _write_hf(sources, name, directory):
    DecoderOnlyTransformer.from_preset(sources[name][1]).export_to_transformers(directory)
    return str(directory)


def test_sharded_and_bfloat16_checkpoints(sources, tmp_path):
    import ml_dtypes

    _, _, reference = sources["llama"]
    ids, mask = _ids_and_mask()
    source = _write_hf(sources, "llama", tmp_path / "one")
    tensors = load_file(os.path.join(source, "model.safetensors"))
    sharded = tmp_path / "sharded"
    shutil.copytree(source, sharded)
    os.remove(sharded / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for index, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), 1):
        file = f"model-0000{index}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, sharded / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert _max_difference(DecoderOnlyTransformer.from_preset(str(sharded))(ids), reference, mask) < ATOL
    # bfloat16 tensors are cast to the model's float32 (the difference is bfloat16 rounding).
    save_file({n: t.astype(ml_dtypes.bfloat16) for n, t in tensors.items()}, os.path.join(source, "model.safetensors"))
    model = DecoderOnlyTransformer.from_preset(source)
    assert model.weights[0].dtype == "float32"
    assert _max_difference(model(ids), reference, mask) < 0.5


# -- bad input ------------------------------------------------------------------------------


def _edit_tensors(directory, edit):
    file = os.path.join(directory, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def _edit_config(directory, **changes):
    file = os.path.join(directory, "config.json")
    config = json.load(open(file))
    config.update(changes)
    json.dump(config, open(file, "w"))


def test_bad_checkpoints_raise_clear_errors(sources, tmp_path):
    base = _write_hf(sources, "gpt2", tmp_path / "base")

    def variant(name):
        target = tmp_path / name
        shutil.copytree(base, target)
        return str(target)

    cases = []
    missing = variant("missing")
    _edit_tensors(missing, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    cases.append((missing, r"no tensor 'transformer\.h\.1\.mlp\.c_fc\.bias'"))
    unexpected = variant("unexpected")
    _edit_tensors(unexpected, lambda t: t.update({"transformer.h.0.extra.weight": np.zeros(3, "float32")}))
    cases.append((unexpected, r"unexpected tensor.*transformer\.h\.0\.extra\.weight"))
    shape = variant("shape")
    _edit_tensors(shape, lambda t: t.update({"transformer.ln_f.bias": np.zeros(17, "float32")}))
    cases.append((shape, r"'transformer\.ln_f\.bias'.*shape \(17,\).*expects \(16,\)"))
    layers = variant("layers")  # config: 3 layers, weights: 2
    _edit_config(layers, n_layer=3)
    cases.append((layers, r"no tensor 'transformer\.h\.2\."))
    width = variant("width")  # config contradicts every weight's shape
    _edit_config(width, n_embd=32)
    cases.append((width, r"shape.*config"))
    unknown = variant("unknown")
    _edit_config(unknown, model_type="gpt_neox")
    cases.append((unknown, r"unsupported model_type='gpt_neox'.*gpt2.*llama.*mistral.*qwen2"))
    no_field = variant("no_field")
    config = json.load(open(os.path.join(no_field, "config.json")))
    del config["n_head"]
    json.dump(config, open(os.path.join(no_field, "config.json"), "w"))
    cases.append((no_field, r"config\.json.*'n_head' is missing"))
    activation = variant("activation")
    _edit_config(activation, activation_function="swish")
    cases.append((activation, r"activation_function='swish' is not supported"))
    corrupt = variant("corrupt")
    with open(os.path.join(corrupt, "model.safetensors"), "r+b") as handle:
        handle.write(b"\xff" * 64)
    cases.append((corrupt, r"model\.safetensors: not a valid safetensors file"))
    truncated = variant("truncated")
    file = os.path.join(truncated, "model.safetensors")
    os.truncate(file, os.path.getsize(file) - 100)
    cases.append((truncated, r"model\.safetensors.*truncated"))
    torch_only = variant("torch_only")
    os.rename(os.path.join(torch_only, "model.safetensors"), os.path.join(torch_only, "pytorch_model.bin"))
    cases.append((torch_only, r"found pytorch_model\.bin: only safetensors"))
    cases.append((str(tmp_path / "nowhere"), r"No checkpoint directory"))
    for directory, message in cases:
        with pytest.raises(ValueError, match=message):
            DecoderOnlyTransformer.from_preset(directory)
    with pytest.raises(ValueError, match="holds a DecoderOnlyTransformer checkpoint, not a EncoderOnlyTransformer"):
        EncoderOnlyTransformer.from_preset(base)


def test_keras_hub_preset_bad_input(sources, tmp_path):
    directory = tmp_path / "preset"
    shutil.copytree(sources["llama"][1], directory)
    config = json.load(open(directory / "config.json"))
    config["config"]["num_layers"] = 3
    json.dump(config, open(directory / "config.json", "w"))
    with pytest.raises(ValueError, match=r"no tensor 'transformer_layer_2/"):
        DecoderOnlyTransformer.from_preset(str(directory))
    config["class_name"] = "BloomBackbone"
    json.dump(config, open(directory / "config.json", "w"))
    with pytest.raises(ValueError, match=r"unsupported keras-hub class 'BloomBackbone'.*GPT2Backbone"):
        DecoderOnlyTransformer.from_preset(str(directory))
    with open(directory / "model.weights.h5", "r+b") as handle:
        handle.write(b"\0" * 16)
    config["class_name"] = "LlamaBackbone"
    json.dump(config, open(directory / "config.json", "w"))
    with pytest.raises(ValueError, match=r"model\.weights\.h5: not a readable Keras weights file"):
        DecoderOnlyTransformer.from_preset(str(directory))


def test_writers_refuse_other_architectures(tmp_path):
    model = DecoderOnlyTransformer(VOCAB, 1, 16, 2, 32, positional="sinusoidal")
    with pytest.raises(ValueError, match="has no Hugging Face equivalent.*positional='learned'.*rotary"):
        model.export_to_transformers(tmp_path / "hf")
    assert not os.path.exists(tmp_path / "hf")


def test_unsupported_rope_scaling_names_the_field(sources, tmp_path):
    directory = _write_hf(sources, "llama", tmp_path / "hf")
    _edit_config(directory, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ValueError, match=r"rope_scaling\.rope_type='llama3' is not supported"):
        DecoderOnlyTransformer.from_preset(directory)


# -- tokenizers -----------------------------------------------------------------------------

TEXTS = ["Hello world, the quick brown fox.", "It's 2024!  Spaces   and\ttabs\n", "unknown wörds ünïcode <|endoftext|> x"]


@pytest.fixture(scope="module")
def bpe_vocabulary():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    trainer_tokenizer.train_from_iterator(["Hello world, the quick brown fox jumps over the lazy dog. It's 2024!"] * 20,
                                          trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    return model["vocab"], [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]


def test_tokenizers_match_keras_hub(bpe_vocabulary, tmp_path):
    vocab, merges = bpe_vocabulary
    reference = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)
    expected = [np.asarray(reference(text)).tolist() for text in TEXTS]
    # keras-hub's own preset assets
    reference.save_to_preset(str(tmp_path / "kh"))
    # GPT-2's vocab.json + merges.txt
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "gpt2" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # tokenizer.json written by our exporter
    model = DecoderOnlyTransformer(len(vocab), 1, 16, 2, 32, max_length=8, positional="learned", norm_first=True,
                                   activation="gelu_approximate", scale_embeddings=False, layer_norm_epsilon=1e-5)
    model.export_to_transformers(tmp_path / "hf", tokenizer=tokenizers.from_preset(tmp_path / "gpt2"))
    for source in ("kh", "gpt2", "hf"):
        tokenizer = tokenizers.from_preset(tmp_path / source)
        assert [tokenizer.encode(text).ids for text in TEXTS] == expected, source
        assert [tokenizer.decode(ids) for ids in expected[:2]] == TEXTS[:2]
    with pytest.raises(ValueError, match="has no tokenizer we read"):
        tokenizers.from_preset(tmp_path / "kh" / "assets")


def test_supported_lists():
    assert {"gpt2", "llama", "mistral", "qwen2"} <= set(checkpoints.supported_hf_model_types())
    assert {"GPT2Backbone", "LlamaBackbone", "MistralBackbone", "QwenBackbone"} <= set(
        checkpoints.supported_keras_hub_classes())


# -- export of loaded models ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_loaded_models_export_to_onnx(sources, name, tmp_path):
    export = pytest.importorskip("export")
    from export.native import save_generation_graphs
    from export import decoding

    model = DecoderOnlyTransformer.from_preset(sources[name][1])
    report = export.to_onnx(model, tmp_path / "lm.onnx", max_length=12, batch_sizes=(2,))
    assert report.method == "native" and report.validation.passed
    save_generation_graphs(model, tmp_path / "generation")
    prompts = [[5, 6, 7], [9]]
    expected = model.generate(prompts, max_new_tokens=5, temperature=0.0)
    np.testing.assert_array_equal(decoding.generate(tmp_path / "generation", prompts, max_new_tokens=5,
                                                    temperature=0.0), expected)


def test_peak_memory_reads_one_tensor_at_a_time(sources, tmp_path):
    """Loading reads tensors lazily: the converter sees a mapping, not a dict of arrays."""
    directory = _write_hf(sources, "gpt2", tmp_path / "hf")
    tensors = checkpoints.formats.read_hf_tensors(directory)
    with tensors:
        assert not isinstance(tensors, dict)
        assert tensors.shape("transformer.wte.weight") == (VOCAB, 16)
        assert tensors.unused() == sorted(tensors.keys())  # shape() reads nothing
    keras.backend.clear_session()
