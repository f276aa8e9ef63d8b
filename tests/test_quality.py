"""`export.quality`: held-out perplexity of an exported graph equals Keras's Perplexity metric,
and the gate of a lower precision says what to change."""

import keras
import numpy as np
import pytest

import export
from export import native
from export.quality import check_perplexity, perplexity
from keras_transformer.models import DecoderOnlyTransformer
from keras_transformer.training import Perplexity


@pytest.fixture(scope="module")
def model_and_blocks():
    keras.utils.set_random_seed(11)
    model = DecoderOnlyTransformer(48, 2, 32, 2, 64, dropout=0.0, max_length=32, positional="learned",
                                   tie_embeddings=False)
    blocks = np.random.default_rng(11).integers(1, 48, size=(20, 13)).astype("int32")
    blocks[3, 9:] = 0  # padded targets are not counted
    return model, blocks


def test_perplexity_of_the_graph_equals_keras_perplexity_metric(model_and_blocks, tmp_path):
    model, blocks = model_and_blocks
    native.save_generation_graphs(model, tmp_path / "gen")
    metric = Perplexity(pad_id=0)
    metric.update_state(blocks[:, 1:], model({"token_ids": blocks[:, :-1]}))
    expected = float(metric.result())
    assert perplexity(tmp_path / "gen", blocks, batch_size=6) == pytest.approx(expected, rel=1e-5)
    assert expected > 20  # a random model: near the vocabulary size, so the comparison means something


def test_int4_perplexity_is_close_and_the_gate_names_the_threshold(model_and_blocks, tmp_path):
    model, blocks = model_and_blocks
    native.save_generation_graphs(model, tmp_path / "gen")
    export.to_genai(model, tmp_path / "int4", precision="int4", min_top1=0.0)
    fp32, int4 = perplexity(tmp_path / "gen", blocks), perplexity(tmp_path / "int4", blocks)
    assert int4 != fp32 and abs(int4 / fp32 - 1) < 0.2
    assert check_perplexity(int4, fp32, max_increase=0.2) == pytest.approx(int4 / fp32 - 1)
    with pytest.raises(ValueError, match="max-perplexity-increase"):
        check_perplexity(fp32 * 1.1, fp32, max_increase=0.05)


def test_bad_input_is_named(model_and_blocks, tmp_path):
    _, blocks = model_and_blocks
    with pytest.raises(ValueError, match="received path="):
        perplexity(tmp_path / "missing", blocks)
    with pytest.raises(ValueError, match=r"blocks.*shape \(13,\)"):
        perplexity(tmp_path, blocks[0])
    with pytest.raises(ValueError, match="max_increase=-1"):
        check_perplexity(2.0, 1.0, max_increase=-1)


def test_validation_prompts_replace_the_random_ones_and_are_checked(model_and_blocks, tmp_path):
    from export.deploy import validate_generation
    from export.native.cache import build_decoder_with_past

    model, blocks = model_and_blocks
    prompts = [list(blocks[0, :5]), list(blocks[1, :9])]
    table = validate_generation(model, build_decoder_with_past(model), prompts=prompts)
    assert table.passed and [row.case for row in table.rows] == [
        "left-padded batch, prompt of 5", "left-padded batch, prompt of 9"]
    with pytest.raises(ValueError, match=r"validation_prompts.*other than the pad id 0"):
        export.to_genai(model, tmp_path / "g", validation_prompts=[[3, 0, 4]])
    with pytest.raises(ValueError, match=r"validation_prompts.*1 to 28 tokens"):
        export.to_genai(model, tmp_path / "g", validation_prompts=[list(range(1, 31))])
    assert not (tmp_path / "g").exists()
