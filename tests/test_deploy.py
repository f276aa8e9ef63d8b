"""Deployment folders (`export.to_genai` / `export.to_optimum`) in the real consumers:
onnxruntime-genai generates our tokens for a batch of prompts of different lengths, and so does
optimum-onnx's ORTModelForCausalLM (slow: its install brings torch and transformers)."""

import json
import os

import keras
import numpy as np
import onnx
import pytest

import export
from export.decoding import generate as onnx_generate
from export.validate import ExportValidationError
from keras_transformer.models import DecoderOnlyTransformer

og = pytest.importorskip("onnxruntime_genai")

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
NEW = 6


def _model(shape):
    keras.utils.set_random_seed(0)
    if shape == "llama":
        return DecoderOnlyTransformer.from_preset("llama_tiny")
    # untied output projection: the random model does not just repeat its last token
    return DecoderOnlyTransformer(61, 2, 32, 2, 64, dropout=0.0, max_length=64, positional="learned",
                                  norm_first=True, activation="gelu", tie_embeddings=False)


@pytest.fixture(scope="module")
def trained_decoder():
    """A tiny LM trained for a few seconds to map each token to a fixed next token: peaked,
    meaningful top-1 predictions (a random model's near-ties make top-1 agreement noise)."""
    keras.utils.set_random_seed(5)
    vocab = 32
    model = DecoderOnlyTransformer(vocab, 1, 32, 2, 64, dropout=0.0, max_length=64, positional="learned",
                                   tie_embeddings=True)
    tokens = np.random.default_rng(5).integers(1, vocab, size=(512, 13)).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit({"token_ids": tokens}, tokens % (vocab - 1) + 1, epochs=4, batch_size=64, verbose=0)
    return model


def genai_generate(folder, prompts, new_tokens, pad_id=0):
    """onnxruntime-genai's greedy tokens for `prompts` batched as genai batches them (right
    padding with the pad id; it masks trailing pads and counts positions over real tokens)."""
    model = og.Model(os.fspath(folder))
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=width + new_tokens, do_sample=False, batch_size=len(prompts))
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    rows = [[int(t) for t in generator.get_sequence(row)[width:]] for row in range(len(prompts))]
    return [row + [pad_id] * (new_tokens - len(row)) for row in rows]  # a lone row stops at its eos


def ours(folder, prompts, new_tokens, pad_id=0):
    """Our runtime on the same folder, with genai's stopping rule (the pad id is its eos)."""
    tokens, lengths = onnx_generate(folder, prompts, max_new_tokens=new_tokens, temperature=0.0, end_id=pad_id,
                                    allow_pad=True, return_lengths=True)
    return [row[len(p):n].tolist() + [pad_id] * (new_tokens - (n - len(p))) for row, p, n in zip(tokens, prompts, lengths)]


@pytest.mark.parametrize("shape", ["gpt", "llama"])
def test_genai_generates_our_tokens_for_a_batch_of_different_lengths(shape, tmp_path):
    model = _model(shape)
    written = export.to_genai(model, tmp_path / "genai")
    assert sorted(os.path.basename(p) for p in written) == [
        "config.json", "genai_config.json", "generation_config.json", "model.onnx"]
    config_path = tmp_path / "genai" / "genai_config.json"
    config = json.loads(config_path.read_text())
    assert config["model"]["type"] == "decoder" and config["search"]["past_present_share_buffer"] is True
    expected = ours(tmp_path / "genai", PROMPTS, NEW)
    for share_buffer in (False, True):  # genai's copying mode, then its shared cache (the folder's)
        config["search"]["past_present_share_buffer"] = share_buffer
        config_path.write_text(json.dumps(config))
        batch = genai_generate(tmp_path / "genai", PROMPTS, NEW)
        assert batch == expected, share_buffer
    for row, prompt in enumerate(PROMPTS):  # each row as it comes out alone
        assert genai_generate(tmp_path / "genai", [prompt], NEW)[0] == batch[row]
    assert len({tuple(t) for t in batch}) == len(PROMPTS)  # different rows, different tokens


def test_deployment_graph_inputs_follow_the_runtime_convention(tmp_path):
    model = _model("llama")
    export.to_optimum(model, tmp_path / "hf")
    graph = onnx.load(tmp_path / "hf" / "model.onnx").graph
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert {inputs[n] for n in ("input_ids", "attention_mask", "position_ids")} == {onnx.TensorProto.INT64}
    assert [o.name for o in graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["num_key_value_heads"], config["head_dim"], config["num_hidden_layers"]) == (2, 8, 2)


def test_tokenizer_files_load_in_genai(tmp_path):
    """The byte-level BPE tokenizer of the language-model example travels with the folder, and
    genai's own tokenizer encodes and decodes like the Hugging Face one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the cat sat on the mat", "a dog ran to the cat"] * 20, trainer=trainer)
    model = DecoderOnlyTransformer(tokenizer.get_vocab_size(), 1, 16, 2, 32, max_length=32, dropout=0.0)
    export.to_genai(model, tmp_path / "genai", tokenizer=tokenizer, end_id=tokenizer.token_to_id("<eos>"))
    genai_tokenizer = og.Tokenizer(og.Model(os.fspath(tmp_path / "genai")))
    text = "the dog sat on a cat"
    assert list(genai_tokenizer.encode(text)) == tokenizer.encode(text).ids
    assert genai_tokenizer.decode(tokenizer.encode(text).ids) == text
    config = json.loads((tmp_path / "genai" / "genai_config.json").read_text())
    assert config["model"]["eos_token_id"] == 2


def test_int4_folder_runs_in_genai(trained_decoder, tmp_path):
    model = trained_decoder
    export.to_genai(model, tmp_path / "int4", precision="int4", min_top1=0.9)
    ops = {node.op_type for node in onnx.load(tmp_path / "int4" / "model.onnx").graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "MatMul" not in ops
    prompts = [[3, 4, 5, 6, 7], [9, 10]]
    assert genai_generate(tmp_path / "int4", prompts, 4) == ours(tmp_path / "int4", prompts, 4)


def test_int4_gate_refuses_and_writes_nothing(tmp_path):
    """A random model's near-tied logits flip under 4-bit weights: a gate of 100% refuses."""
    with pytest.raises(ExportValidationError, match="min_top1"):
        export.to_genai(_model("gpt"), tmp_path / "int4", precision="int4", block_size=128, min_top1=1.0)
    assert not (tmp_path / "int4").exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(precision="int3"), r"precision.*int3"),
    (dict(min_top1=1.5), r"min_top1.*1\.5"),
    (dict(end_id=61), r"end_id.*61"),
    (dict(max_length=65), r"max_length.*64"),
    (dict(tokenizer="/no/such/tokenizer.json"), r"tokenizer.*no/such"),
    (dict(precision="int4", block_size=24), r"block_size.*24"),
])
def test_bad_arguments_are_named(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        export.to_genai(_model("gpt"), tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_kt_export_to_genai(trained_decoder, tmp_path, capsys):
    from export import cli

    model_path = os.fspath(tmp_path / "lm.keras")
    trained_decoder.save(model_path)
    code = cli.main([model_path, "--to", "genai", "--out", os.fspath(tmp_path / "out"), "--precision", "int4",
                     "--min-top1", "0.9", "--end-id", "1"])
    assert code == cli.EXIT_OK, capsys.readouterr()
    folder = tmp_path / "out" / "genai"
    assert json.loads((folder / "genai_config.json").read_text())["model"]["eos_token_id"] == 1
    assert len(genai_generate(folder, [[3, 4, 5], [6]], 3, pad_id=0)) == 2
    assert json.loads((folder / "genai_config.json").read_text())["search"]["past_present_share_buffer"] is True
    code = cli.main([model_path, "--to", "genai", "--out", os.fspath(tmp_path / "copied"), "--no-shared-cache"])
    assert code == cli.EXIT_OK, capsys.readouterr()
    copied = tmp_path / "copied" / "genai"
    assert json.loads((copied / "genai_config.json").read_text())["search"]["past_present_share_buffer"] is False
    assert genai_generate(copied, [[3, 4, 5], [6]], 3) == ours(copied, [[3, 4, 5], [6]], 3)
    code = cli.main([model_path, "--to", "genai", "--out", os.fspath(tmp_path / "out2"), "--precision", "int4",
                     "--min-top1", "2"])
    assert code == cli.EXIT_USAGE and "min_top1" in capsys.readouterr().err


@pytest.mark.slow
def test_optimum_generates_our_tokens_for_a_left_padded_batch(tmp_path):
    """optimum-onnx (`pip install '.[optimum]'`; torch + transformers, ~1 GB): its
    ORTModelForCausalLM loads the folder and generates our tokens for a left-padded batch."""
    torch = pytest.importorskip("torch")
    optimum_ort = pytest.importorskip("optimum.onnxruntime")
    model = _model("llama")
    export.to_optimum(model, tmp_path / "hf")
    lm = optimum_ort.ORTModelForCausalLM.from_pretrained(tmp_path / "hf")
    width = max(len(p) for p in PROMPTS)
    ids = torch.zeros((len(PROMPTS), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(PROMPTS):
        ids[row, width - len(prompt):], mask[row, width - len(prompt):] = torch.tensor(prompt), 1
    out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                      eos_token_id=None)
    expected = onnx_generate(tmp_path / "hf", PROMPTS, max_new_tokens=NEW, temperature=0.0, allow_pad=True)
    for row, prompt in enumerate(PROMPTS):
        assert out[row, width:].tolist() == expected[row, len(prompt):len(prompt) + NEW].tolist()
