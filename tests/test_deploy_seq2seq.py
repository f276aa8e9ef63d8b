"""`export.to_optimum` for an EncoderDecoderTransformer: optimum's seq2seq folder
(`encoder_model.onnx`, `decoder_model.onnx`, `decoder_with_past_model.onnx`), driven the way
optimum drives it, gives the Keras model's tokens; optimum-onnx's own ORTModelForSeq2SeqLM does
too (slow: its install brings torch and transformers)."""

import json
import os

import keras
import numpy as np
import onnx
import onnxruntime
import pytest

import export
from export.deploy_seq2seq import run_as_optimum
from export.native.seq2seq import SEQ2SEQ_FILES
from export.validate import ExportValidationError
from keras_transformer.models import EncoderDecoderTransformer

START, END, NEW = 1, 2, 6
SOURCES = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    # untied output projection: a random model does not just copy its input
    return EncoderDecoderTransformer(40, 2, 2, 16, 2, 32, dropout=0.0, pad_id=0, tie_embeddings=False)


def _padded(sources, pad_id=0):
    ids = np.full((len(sources), max(map(len, sources))), pad_id, np.int64)
    for row, source in enumerate(sources):
        ids[row, : len(source)] = source
    return ids, (ids != pad_id).astype(np.int64)


def _sessions(folder):
    return {name: onnxruntime.InferenceSession(os.fspath(folder / name), providers=["CPUExecutionProvider"])
            for name in SEQ2SEQ_FILES}


def test_the_folder_follows_optimums_seq2seq_names(model, tmp_path):
    written = export.to_optimum(model, tmp_path / "s2s", start_id=START, end_id=END)
    assert sorted(os.path.basename(p) for p in written) == sorted(
        ["config.json", "generation_config.json", *SEQ2SEQ_FILES])
    graphs = {name: onnx.load(tmp_path / "s2s" / name).graph for name in SEQ2SEQ_FILES}
    assert [i.name for i in graphs["encoder_model.onnx"].input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graphs["encoder_model.onnx"].output] == ["last_hidden_state"]
    assert [i.name for i in graphs["decoder_model.onnx"].input] == [
        "input_ids", "encoder_attention_mask", "encoder_hidden_states"]
    assert [o.name for o in graphs["decoder_model.onnx"].output] == [
        "logits", "present.0.decoder.key", "present.0.decoder.value", "present.0.encoder.key",
        "present.0.encoder.value", "present.1.decoder.key", "present.1.decoder.value", "present.1.encoder.key",
        "present.1.encoder.value"]
    # optimum pairs the cache with the inputs by position, layer by layer
    assert [i.name for i in graphs["decoder_with_past_model.onnx"].input] == [
        "input_ids", "encoder_attention_mask", *(f"past_key_values.{i}.{part}.{kv}" for i in range(2)
                                                 for part in ("decoder", "encoder") for kv in ("key", "value"))]
    config = json.loads((tmp_path / "s2s" / "config.json").read_text())
    assert (config["model_type"], config["decoder_start_token_id"], config["eos_token_id"]) == ("bart", START, END)
    assert (config["decoder_layers"], config["decoder_attention_heads"], config["d_model"]) == (2, 2, 16)


@pytest.mark.parametrize("attention", ["fused", "portable"])
def test_optimum_style_decoding_gives_the_keras_models_tokens(model, tmp_path, attention):
    export.to_optimum(model, tmp_path / "s2s", start_id=START, attention=attention)
    ids, mask = _padded(SOURCES)
    decoder_ids, logits = run_as_optimum(_sessions(tmp_path / "s2s"), ids, mask, START, NEW)
    expected, lengths = model.generate(SOURCES, max_length=NEW, start_id=START, end_id=END, allow_pad=True,
                                       return_lengths=True)
    for row, length in enumerate(lengths):  # Keras stops a row after its end id
        assert decoder_ids[row, 1:1 + length].tolist() == expected[row, :length].tolist()
    # each row decodes alone as in the batch (the source padding is masked)
    for row, source in enumerate(SOURCES):
        alone_ids, alone_logits = run_as_optimum(_sessions(tmp_path / "s2s"), *_padded([source]), START, NEW)
        assert alone_ids[0].tolist() == decoder_ids[row].tolist()
        np.testing.assert_allclose(alone_logits[0], logits[row], atol=1e-5, rtol=1e-5)


def test_int8_folder_is_validated_by_top1_agreement(model, tmp_path):
    written = export.to_optimum(model, tmp_path / "s2s8", precision="int8", start_id=START, min_top1=0.5)
    assert any(name.endswith("decoder_with_past_model.onnx") for name in written)
    with pytest.raises(ExportValidationError, match="min_top1"):
        export.to_optimum(model, tmp_path / "never", precision="int4", start_id=START, min_top1=1.0,
                          block_size=128)
    assert not (tmp_path / "never").exists()


def test_bad_arguments_are_named_and_nothing_is_written(model, tmp_path):
    with pytest.raises(ValueError, match="start_id.*received start_id=None"):
        export.to_optimum(model, tmp_path / "a")
    with pytest.raises(ValueError, match=r"end_id.*\[0, 40\).*received end_id=40"):
        export.to_optimum(model, tmp_path / "a", start_id=START, end_id=40)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_optimum_seq2seq_generates_the_keras_models_tokens(model, tmp_path):
    """optimum-onnx (`pip install '.[optimum]'`): ORTModelForSeq2SeqLM loads the folder as it is
    and its greedy tokens for a right-padded batch of sources equal Keras's."""
    torch = pytest.importorskip("torch")
    optimum_ort = pytest.importorskip("optimum.onnxruntime")
    export.to_optimum(model, tmp_path / "s2s", start_id=START, end_id=END)
    seq2seq = optimum_ort.ORTModelForSeq2SeqLM.from_pretrained(tmp_path / "s2s")
    ids, mask = _padded(SOURCES)
    out = seq2seq.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW,
                           do_sample=False, num_beams=1)
    expected, lengths = model.generate(SOURCES, max_length=NEW, start_id=START, end_id=END, allow_pad=True,
                                       return_lengths=True)
    assert out[:, 0].tolist() == [START] * len(SOURCES)
    for row, length in enumerate(lengths):
        assert out[row, 1:1 + length].tolist() == expected[row, :length].tolist()


def test_kt_export_writes_the_seq2seq_folder(model, tmp_path, capsys):
    from export import cli

    path = tmp_path / "translator.keras"
    model.save(path)
    assert cli.main([os.fspath(path), "--to", "optimum", "--out", os.fspath(tmp_path / "out")]) == cli.EXIT_USAGE
    assert "start_id" in capsys.readouterr().err
    assert cli.main([os.fspath(path), "--to", "optimum", "--out", os.fspath(tmp_path / "out"), "--start-id",
                     str(START), "--end-id", str(END)]) == cli.EXIT_OK
    assert sorted(os.listdir(tmp_path / "out" / "optimum")) == sorted(
        ["config.json", "generation_config.json", *SEQ2SEQ_FILES])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_our_runtime_generates_from_the_optimum_folder(model, tmp_path, num_beams):
    """export.decoding drives the same three graphs optimum loads: Keras's tokens, beams included."""
    from export.decoding import generate

    export.to_optimum(model, tmp_path / "s2s", start_id=START, end_id=END)
    expected = model.generate(SOURCES, max_length=NEW, start_id=START, end_id=END, num_beams=num_beams)
    got = generate(tmp_path / "s2s", SOURCES, max_length=NEW, start_id=START, end_id=END, num_beams=num_beams)
    np.testing.assert_array_equal(got, expected)
