"""BERT and BART checkpoints against keras-hub, the independent reference implementation.

Each test starts from a small random keras-hub model saved with keras-hub's own
`save_to_preset`, loads it with our `from_preset(dir)` and compares outputs on random ids with
padding (tolerance 1e-4; the measured differences are ~1e-6). Hugging Face directories are
written by our `export_to_transformers` and read back by keras-hub's own Hugging Face loader,
so the Hugging Face name maps are checked by keras-hub's converters too. No weights are
downloaded.
"""

import json
import os
import shutil

import h5py
import numpy as np
import pytest

import export
from keras_transformer import checkpoints
from keras_transformer.models import EncoderDecoderTransformer, EncoderOnlyTransformer

keras_hub = pytest.importorskip("keras_hub")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

ATOL = 1e-4
V, LAYERS, D, HEADS, FF, MAX = 60, 2, 32, 4, 64, 24
BERT_PAD, BART_PAD = 0, 1  # [PAD] in BERT's vocabulary, <pad> in BART's


def _randomize(model, seed):
    """Weights large enough that every part shows in the outputs (LayerNorm gammas near 1)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = rng.normal(0.0, 0.2 if len(weight.shape) > 1 else 0.05, size=weight.shape)
        is_gamma = len(weight.shape) == 1 and "norm" in weight.path and weight.path.endswith(("gamma", "/0"))
        weight.assign((value + is_gamma).astype("float32"))


def _ids(batch, length, pad_id, seed):
    """Ids in [2, V) right-padded with `pad_id` in every row but the first."""
    ids = np.random.default_rng(seed).integers(2, V, size=(batch, length)).astype("int32")
    for row in range(1, batch):
        ids[row, length - 3 * row:] = pad_id
    return ids


def _max_diff(a, b):
    return float(np.abs(np.asarray(a, "float32") - np.asarray(b, "float32")).max())


def _bert_feeds(seed=0):
    ids = _ids(3, 12, BERT_PAD, seed)
    segments = (np.arange(12)[None, :] >= 5).astype("int32") * (ids != BERT_PAD)
    return ids, segments


def _bert_reference(backbone, ids, segments):
    out = backbone({"token_ids": ids, "segment_ids": segments, "padding_mask": (ids != BERT_PAD).astype("int32")})
    return np.asarray(out["sequence_output"]), np.asarray(out["pooled_output"])


def _bart_feeds(seed=0):
    return _ids(3, 12, BART_PAD, seed), _ids(3, 9, BART_PAD, seed + 1)


def _bart_reference_logits(backbone, source, target):
    out = backbone({"encoder_token_ids": source, "encoder_padding_mask": (source != BART_PAD).astype("int32"),
                    "decoder_token_ids": target, "decoder_padding_mask": (target != BART_PAD).astype("int32")})
    return np.asarray(backbone.token_embedding(out["decoder_sequence_output"], reverse=True))


def _saved_keras_hub(backbone_class, seed, directory):
    """`(backbone, preset path)`: a small random keras-hub backbone saved with its own `save_to_preset`."""
    backbone = backbone_class(vocabulary_size=V, num_layers=LAYERS, num_heads=HEADS, hidden_dim=D,
                              intermediate_dim=FF, max_sequence_length=MAX)
    _randomize(backbone, seed)
    backbone.save_to_preset(str(directory))
    return backbone, str(directory)


@pytest.fixture(scope="module")
def bert_preset(tmp_path_factory):
    return _saved_keras_hub(keras_hub.models.BertBackbone, 0, tmp_path_factory.mktemp("kh") / "bert")


@pytest.fixture(scope="module")
def bart_preset(tmp_path_factory):
    return _saved_keras_hub(keras_hub.models.BartBackbone, 1, tmp_path_factory.mktemp("kh") / "bart")


# -- BERT --------------------------------------------------------------------------------------------


def test_bert_keras_hub_preset_loads_exactly_and_writes_back(bert_preset, tmp_path):
    backbone, path = bert_preset
    model = EncoderOnlyTransformer.from_preset(path)
    config = model.get_config()
    assert (config["num_segments"], config["pooler"], config["head"], config["activation"]) == (2, True, None, "gelu_approximate")
    ids, segments = _bert_feeds()
    sequence, pooled = _bert_reference(backbone, ids, segments)
    out = model({"token_ids": ids, "segment_ids": segments})
    assert _max_diff(out["hidden_states"], sequence) < ATOL and _max_diff(out["pooled_output"], pooled) < ATOL
    # keras-hub loads what we write, and gives its own outputs back
    model.save_to_preset(str(tmp_path / "back"))
    again = keras_hub.models.BertBackbone.from_preset(str(tmp_path / "back"))
    assert _max_diff(_bert_reference(again, ids, segments)[0], sequence) < ATOL


def test_bert_hugging_face_directory_round_trip(bert_preset, tmp_path):
    backbone, path = bert_preset
    ids, segments = _bert_feeds(1)
    sequence, pooled = _bert_reference(backbone, ids, segments)
    EncoderOnlyTransformer.from_preset(path).export_to_transformers(str(tmp_path / "hf"))
    hf_config = json.load(open(tmp_path / "hf" / "config.json"))
    assert hf_config["model_type"] == "bert" and hf_config["architectures"] == ["BertModel"]
    # keras-hub's own Hugging Face converter reads our names
    assert _max_diff(_bert_reference(keras_hub.models.BertBackbone.from_preset(str(tmp_path / "hf")), ids, segments)[1],
                     pooled) < ATOL
    model = EncoderOnlyTransformer.from_preset(str(tmp_path / "hf"))
    out = model({"token_ids": ids, "segment_ids": segments})
    assert _max_diff(out["hidden_states"], sequence) < ATOL and _max_diff(out["pooled_output"], pooled) < ATOL


def _masked_lm_checkpoint(bert_preset, directory):
    """A BertForMaskedLM directory from the keras-hub backbone plus a random MLM head, and
    keras-hub's MaskedLMHead holding the same head (epsilon and GELU as the HF config says)."""
    backbone, path = bert_preset
    encoder = EncoderOnlyTransformer.from_preset(path)
    config = dict(encoder.get_config(), head="masked_lm", pooler=False, mlm_output_bias=True)
    model = EncoderOnlyTransformer.from_config(config)
    weights = {w.path: w for w in encoder.weights}
    for weight in model.weights:
        if weight.path in weights:
            weight.assign(weights[weight.path])
    rng = np.random.default_rng(5)
    for name in ("mlm_transform", "mlm_norm", "mlm_output_bias"):
        for weight in model.get_layer(name).weights:
            weight.assign(rng.normal(1.0 if weight.path.endswith("gamma") else 0.0, 0.2, size=weight.shape))
    model.export_to_transformers(directory)
    from keras_hub.src.utils.keras_utils import gelu_approximate

    head = keras_hub.layers.MaskedLMHead(token_embedding=backbone.token_embedding,
                                         intermediate_activation=gelu_approximate,
                                         layer_norm_epsilon=1e-12)
    head.build((None, None, D), (None, None))
    transform, norm = model.get_layer("mlm_transform"), model.get_layer("mlm_norm")
    head._intermediate_dense.set_weights([np.asarray(transform.kernel), np.asarray(transform.bias)])
    head._intermediate_layer_norm.set_weights([np.asarray(norm.gamma), np.asarray(norm.beta)])
    head._bias.assign(model.get_layer("mlm_output_bias").bias)
    return head


def test_bert_masked_lm_logits_equal_keras_hub_masked_lm_head(bert_preset, tmp_path):
    backbone, _ = bert_preset
    head = _masked_lm_checkpoint(bert_preset, str(tmp_path / "mlm"))
    names = set(safetensors_numpy.load_file(str(tmp_path / "mlm" / "model.safetensors")))
    assert {"bert.embeddings.word_embeddings.weight", "cls.predictions.bias"} <= names
    model = EncoderOnlyTransformer.from_preset(str(tmp_path / "mlm"))  # the head follows the checkpoint
    assert model.get_config()["head"] == "masked_lm"
    ids, segments = _bert_feeds(2)
    sequence, _ = _bert_reference(backbone, ids, segments)
    positions = np.tile(np.arange(ids.shape[1], dtype="int32"), (ids.shape[0], 1))
    expected = np.asarray(head(sequence, mask_positions=positions))
    assert _max_diff(model({"token_ids": ids, "segment_ids": segments}), expected) < ATOL
    # the encoder alone, from the same checkpoint: the MLM head's tensors are passed over by name
    encoder = EncoderOnlyTransformer.from_preset(str(tmp_path / "mlm"), head=None, pooler=False, mlm_output_bias=False)
    assert _max_diff(encoder({"token_ids": ids, "segment_ids": segments}), sequence) < ATOL


def test_bert_sequence_classifier_round_trips(bert_preset, tmp_path):
    _, path = bert_preset
    config = dict(EncoderOnlyTransformer.from_preset(path).get_config(), head="classification", num_classes=3)
    model = EncoderOnlyTransformer.from_config(config)
    _randomize(model, 7)
    model.export_to_transformers(str(tmp_path / "cls"))
    loaded = EncoderOnlyTransformer.from_preset(str(tmp_path / "cls"))
    assert (loaded.get_config()["head"], loaded.get_config()["num_classes"]) == ("classification", 3)
    ids, segments = _bert_feeds(3)
    feeds = {"token_ids": ids, "segment_ids": segments}
    np.testing.assert_array_equal(np.asarray(loaded(feeds)), np.asarray(model(feeds)))


def test_loaded_bert_exports_natively_and_validates(bert_preset, tmp_path):
    model = EncoderOnlyTransformer.from_preset(bert_preset[1])
    report = export.to_onnx(model, tmp_path / "bert.onnx", max_length=12, batch_sizes=(3,))
    assert report.method == "native" and report.validation.passed


# -- BART --------------------------------------------------------------------------------------------


def test_bart_keras_hub_preset_loads_exactly_and_writes_back(bart_preset, tmp_path):
    backbone, path = bart_preset
    model = EncoderDecoderTransformer.from_preset(path)
    config = model.get_config()
    assert (config["position_offset"], config["share_positions"], config["pad_id"]) == (0, False, BART_PAD)
    source, target = _bart_feeds()
    expected = _bart_reference_logits(backbone, source, target)
    real = target != BART_PAD  # keras-hub also masks padded target positions; ours is causal only
    assert _max_diff(np.asarray(model({"encoder_token_ids": source, "decoder_token_ids": target}))[real],
                     expected[real]) < ATOL
    model.save_to_preset(str(tmp_path / "back"))
    again = keras_hub.models.BartBackbone.from_preset(str(tmp_path / "back"))
    assert _max_diff(_bart_reference_logits(again, source, target), expected) < ATOL


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis")  # keras-hub's attention, one key
def test_bart_greedy_generation_equals_greedy_decoding_with_keras_hub(bart_preset):
    backbone, path = bart_preset
    model = EncoderDecoderTransformer.from_preset(path)
    source, _ = _bart_feeds(4)
    steps, start = 6, 2  # BART starts decoding with </s>
    tokens = model.generate(source, max_length=steps, start_id=start, end_id=V - 1, allow_pad=True)
    target = np.full((3, 1), start, "int32")
    for _ in range(steps):  # keras-hub's forward pass over the whole prefix, greedy
        logits = _bart_reference_logits(backbone, source, target)
        target = np.concatenate([target, logits[:, -1].argmax(-1).astype("int32")[:, None]], axis=1)
    expected = target[:, 1:]
    assert tokens.shape == expected.shape and len(np.unique(expected)) > 2
    np.testing.assert_array_equal(tokens, expected)


def test_bart_hugging_face_directory_round_trip_with_the_position_offset(bart_preset, tmp_path):
    backbone, path = bart_preset
    EncoderDecoderTransformer.from_preset(path).export_to_transformers(str(tmp_path / "hf"))
    tensors = safetensors_numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert tensors["model.encoder.embed_positions.weight"].shape == (MAX + 2, D)  # BART's two offset rows
    source, target = _bart_feeds(5)
    expected = _bart_reference_logits(backbone, source, target)
    from_hf = keras_hub.models.BartBackbone.from_preset(str(tmp_path / "hf"))  # keras-hub's HF converter
    assert _max_diff(_bart_reference_logits(from_hf, source, target), expected) < ATOL
    model = EncoderDecoderTransformer.from_preset(str(tmp_path / "hf"))
    assert model.get_config()["position_offset"] == 2
    logits = np.asarray(model({"encoder_token_ids": source, "decoder_token_ids": target}))
    real = target != BART_PAD
    assert _max_diff(logits[real], expected[real]) < ATOL


def test_loaded_bart_generation_graphs_give_keras_tokens(bart_preset, tmp_path):
    from export.decoding import generate
    from export.native import save_generation_graphs

    model = EncoderDecoderTransformer.from_preset(bart_preset[1])
    report = export.to_onnx(model, tmp_path / "bart.onnx", max_length=10, batch_sizes=(2,))
    assert report.method == "native" and report.validation.passed
    save_generation_graphs(model, tmp_path / "gen")
    source, _ = _bart_feeds(6)
    kwargs = dict(max_length=6, start_id=2, end_id=V - 1)
    np.testing.assert_array_equal(generate(str(tmp_path / "gen"), source, **kwargs), model.generate(source, **kwargs))


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_hf(bert_preset, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf") / "bert")
    EncoderOnlyTransformer.from_preset(bert_preset[1]).export_to_transformers(path)
    return path


@pytest.fixture(scope="module")
def bart_hf(bart_preset, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf") / "bart")
    EncoderDecoderTransformer.from_preset(bart_preset[1]).export_to_transformers(path)
    return path


def _edited_copy(source, target, edit_tensors=None, edit_config=None):
    shutil.copytree(source, target)
    if edit_tensors:
        file = os.path.join(target, "model.safetensors")
        tensors = dict(safetensors_numpy.load_file(file))
        edit_tensors(tensors)
        safetensors_numpy.save_file(tensors, file)
    if edit_config:
        with open(os.path.join(target, "config.json")) as handle:
            config = json.load(handle)
        edit_config(config)
        with open(os.path.join(target, "config.json"), "w") as handle:
            json.dump(config, handle)
    return target


BERT_BAD = [
    (lambda t: t.pop("encoder.layer.1.output.dense.bias"), None,
     r"has no tensor 'encoder.layer.1.output.dense.bias'"),
    (lambda t: t.update({"encoder.layer.0.attention.self.query.weight": np.zeros((D + HEADS, D), "float32")}), None,
     r"'encoder.layer.0.attention.self.query.weight' has shape \(32, 4, 9\)"),
    (lambda t: t.update({"encoder.layer.0.intermediate.dense.weight": np.zeros((FF, D, 1), "float32")}), None,
     r"'encoder.layer.0.intermediate.dense.weight'.*expected rank 2"),
    (lambda t: t.update({"encoder.layer.9.output.dense.bias": np.zeros(D, "float32")}), None,
     r"unexpected tensor.*encoder.layer.9.output.dense.bias"),
    (None, lambda c: c.update(hidden_act="swish"), r"hidden_act='swish' is not supported"),
    (None, lambda c: c.update(position_embedding_type="relative_key"), r"position_embedding_type='relative_key'"),
    (None, lambda c: c.update(num_hidden_layers=3), r"no tensor 'encoder.layer.2.attention.self.query.weight'"),
    (None, lambda c: c.pop("hidden_size"), r"required field 'hidden_size' is missing"),
]


@pytest.mark.parametrize("edit_tensors, edit_config, message", BERT_BAD)
def test_bad_bert_checkpoints_raise_clear_errors(bert_hf, tmp_path, edit_tensors, edit_config, message):
    path = _edited_copy(bert_hf, str(tmp_path / "bad"), edit_tensors, edit_config)
    with pytest.raises(ValueError, match=message):
        EncoderOnlyTransformer.from_preset(path)


BART_BAD = [
    (lambda t: t.update({"final_logits_bias": np.ones((1, V), "float32")}), None, "final_logits_bias.*is not zero"),
    (lambda t: t.update({"lm_head.weight": np.zeros((V, D), "float32")}), None, "lm_head.weight.*differs from model.shared"),
    (lambda t: t.update({"model.encoder.embed_positions.weight": np.zeros((MAX, D), "float32")}), None,
     r"'model.encoder.embed_positions.weight' has shape \(24, 32\).*expects \(26, 32\)"),
    (None, lambda c: c.update(normalize_before=True), "normalize_before=True is not supported"),
    (None, lambda c: c.update(decoder_ffn_dim=FF * 2), "decoder_ffn_dim=128 is not supported"),
]


@pytest.mark.parametrize("edit_tensors, edit_config, message", BART_BAD)
def test_bad_bart_checkpoints_raise_clear_errors(bart_hf, tmp_path, edit_tensors, edit_config, message):
    path = _edited_copy(bart_hf, str(tmp_path / "bad"), edit_tensors, edit_config)
    with pytest.raises(ValueError, match=message):
        EncoderDecoderTransformer.from_preset(path)


def test_bad_keras_hub_presets_raise_clear_errors(bert_preset, bart_preset, tmp_path):
    path = shutil.copytree(bert_preset[1], str(tmp_path / "missing"))
    with h5py.File(os.path.join(path, "model.weights.h5"), "r+") as handle:
        del handle["layers/dense/vars/1"]  # pooled_dense's bias
    with pytest.raises(ValueError, match=r"no tensor 'pooled_dense/1'"):
        EncoderOnlyTransformer.from_preset(path)
    with pytest.raises(ValueError, match="holds a EncoderDecoderTransformer checkpoint, not a EncoderOnlyTransformer"):
        EncoderOnlyTransformer.from_preset(bart_preset[1])
    with pytest.raises(ValueError, match=r"position_encoding/position_embeddings.*expects \(16, 32\)"):
        EncoderOnlyTransformer.from_preset(bert_preset[1], max_length=16)


def test_writers_refuse_models_that_are_not_bert_or_bart(tmp_path):
    plain = EncoderOnlyTransformer(V, 1, D, HEADS, FF)
    with pytest.raises(ValueError, match="BERT needs positional='learned'"):
        plain.export_to_transformers(str(tmp_path / "x"))
    paper = EncoderDecoderTransformer(V, 1, 1, D, HEADS, FF)
    with pytest.raises(ValueError, match="BART needs positional='learned'"):
        paper.save_to_preset(str(tmp_path / "y"))
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
    assert {"bert", "bart"} <= set(checkpoints.supported_hf_model_types())
    assert {"BertBackbone", "BartBackbone"} <= set(checkpoints.supported_keras_hub_classes())


# -- tokenizers -------------------------------------------------------------------------------------

WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "jump", "##s", "##ed",
             "over", "lazy", "dog", ".", ",", "!", "a", "##b", "##c", "un", "##able", "'", "s", "?", "caf", "##e"]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Unable, abc! fox's", "  jumped?? quickly  ", "Dog"]


def test_bert_tokenizers_give_keras_hub_ids(tmp_path):
    from keras_transformer import tokenizers

    reference = keras_hub.models.BertTokenizer(vocabulary=WORDPIECE, lowercase=True)
    reference.save_to_preset(str(tmp_path / "kh"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n", encoding="utf-8")
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    for path in (tmp_path / "kh", tmp_path / "hf"):
        tokenizer = tokenizers.from_preset(path)
        for text in TEXTS:
            assert tokenizer.encode(text, add_special_tokens=False).ids == np.asarray(reference(text)).tolist(), text
    # a pair with specials: the token ids and segment ids of keras-hub's BERT preprocessor
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(reference, sequence_length=32)
    packed = preprocessor(x=(np.array([TEXTS[0]]), np.array([TEXTS[1]])))
    encoding = tokenizers.from_preset(tmp_path / "hf").encode(TEXTS[0], TEXTS[1])
    length = len(encoding.ids)
    assert encoding.ids == np.asarray(packed["token_ids"])[0, :length].tolist()
    assert encoding.type_ids == np.asarray(packed["segment_ids"])[0, :length].tolist()
    assert not np.asarray(packed["padding_mask"])[0, length:].any()


def test_bad_bert_vocabularies_raise_clear_errors(tmp_path):
    from keras_transformer import tokenizers

    (tmp_path / "vocab.txt").write_text("[PAD]\nthe\nfox\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no unknown token; received unk_token='\\[UNK\\]'"):
        tokenizers.from_preset(tmp_path)
    (tmp_path / "vocab.txt").write_text("[UNK]\nthe\nfox\nthe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.txt:4: token 'the' already has id 1"):
        tokenizers.from_preset(tmp_path)
