"""The zoo: names, from_preset, overrides, and parameter counts against the published figures."""

import numpy as np
import pytest

from keras_transformer import presets
from keras_transformer.models import (
    DecoderOnlyTransformer,
    EncoderDecoderTransformer,
    EncoderOnlyTransformer,
)


def test_list_has_the_issue_presets_and_filters_by_class():
    names = presets.list()
    assert names == sorted(names)
    assert {"transformer_base", "transformer_big", "bert_tiny", "bert_mini", "bert_small", "bert_base",
            "gpt2_small", "gpt2_medium", "transformer_tiny", "encoder_tiny", "gpt_tiny"} <= set(names)
    assert presets.list(DecoderOnlyTransformer) == [
        "gpt2_medium", "gpt2_small", "gpt_tiny", "llama_tiny", "qwen2_0_5b", "smollm_135m"]
    assert presets.list("EncoderDecoderTransformer") == presets.list(EncoderDecoderTransformer)
    assert set(presets.list(EncoderOnlyTransformer)).isdisjoint(presets.list(DecoderOnlyTransformer))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="transformer_huge") as error:
        EncoderDecoderTransformer.from_preset("transformer_huge")
    assert "transformer_base" in str(error.value) and "transformer_tiny" in str(error.value)
    with pytest.raises(ValueError, match="Known presets: .*gpt2_small"):
        presets.get_config("gpt3")


def test_preset_of_another_model_class_is_refused():
    with pytest.raises(ValueError, match="gpt2_small.*DecoderOnlyTransformer.*EncoderOnlyTransformer"):
        EncoderOnlyTransformer.from_preset("gpt2_small")


def test_from_preset_builds_records_the_name_and_applies_overrides():
    model = DecoderOnlyTransformer.from_preset("gpt_tiny", dropout=0.0, vocab_size=40)
    assert model.preset_name == "gpt_tiny"
    config = model.get_config()
    assert config["preset_name"] == "gpt_tiny" and config["vocab_size"] == 40 and config["dropout"] == 0.0
    assert config["norm_first"] and config["positional"] == "learned"
    clone = DecoderOnlyTransformer.from_config(config)
    assert clone.preset_name == "gpt_tiny"
    assert model({"token_ids": np.array([[1, 2, 3]])}).shape == (1, 3, 40)
    assert presets.build("transformer_tiny").preset_name == "transformer_tiny"
    # the registry itself is not modified by overrides
    assert presets.get_config("gpt_tiny")["vocab_size"] == 64


@pytest.mark.parametrize("name", ["transformer_tiny", "encoder_tiny", "gpt_tiny", "bert_tiny"])
def test_count_parameters_equals_the_built_model(name):
    assert presets.count_parameters(name) == presets.build(name).count_params()


@pytest.mark.parametrize(
    "name, tolerance",
    # The paper rounds (Table 3: 65M, 213M); our exact counts are 63.1M and 214.2M.
    [("transformer_base", 0.05), ("transformer_big", 0.01), ("gpt2_small", 0.005), ("gpt2_medium", 0.005)],
)
def test_parameter_counts_match_the_published_figures(name, tolerance):
    published = presets.published_parameters(name)
    assert published is not None
    count = presets.count_parameters(name)
    assert abs(count - published) / published <= tolerance, (name, count, published)


@pytest.mark.parametrize("name", ["gpt2_small", "gpt2_medium", "smollm_135m", "qwen2_0_5b"])
def test_checkpoint_shaped_presets_count_exactly_the_published_parameters(name):
    """The sizes of the real checkpoints (GPT-2 small/medium, SmolLM-135M, Qwen2-0.5B) exactly."""
    assert presets.count_parameters(name) == presets.published_parameters(name)


def test_gpt2_small_count_equals_the_architecture_formula():
    # token + position tables, 12 x (attention 4 d^2 + 4 d, FFN 8 d^2 + 5 d, 2 LayerNorms 4 d), final LN
    vocab, d, layers = 50257, 768, 12
    expected = vocab * d + 1024 * d + layers * (12 * d * d + 13 * d) + 2 * d
    assert presets.count_parameters("gpt2_small") == expected


@pytest.mark.parametrize("name", ["bert_base_en_uncased", "bart_base_en"])
def test_checkpoint_shaped_presets_have_exactly_the_published_count(name):
    assert presets.count_parameters(name) == presets.published_parameters(name)


def test_bert_and_bart_base_counts_equal_the_architecture_formulas():
    d, ff = 768, 3072
    attention, norm, ffn = 4 * (d * d + d), 2 * d, 2 * d * ff + ff + d
    # tokens + 512 positions + 2 segments + embedding LN; 12 x (attention, FFN, 2 LNs); pooler
    bert = 30522 * d + 512 * d + 2 * d + norm + 12 * (attention + ffn + 2 * norm) + d * d + d
    assert presets.count_parameters("bert_base_en_uncased") == bert == 109_482_240
    # shared tokens; per stack (1024 + 2) positions and an embedding LN; 6 encoder and 6 decoder layers
    bart = 50265 * d + 2 * (1026 * d + norm) + 6 * (attention + ffn + 2 * norm) + 6 * (2 * attention + ffn + 3 * norm)
    assert presets.count_parameters("bart_base_en") == bart == 139_420_416


def test_count_parameters_allocates_nothing_that_a_later_scope_initialises():
    from keras.src.backend.common import global_state

    presets.count_parameters("transformer_base")
    assert not global_state.get_global_attribute("uninitialized_variables", [])
