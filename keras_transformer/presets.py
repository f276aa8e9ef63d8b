"""The model zoo: architectures by name. Nothing is downloaded; presets carry no weights.

Example:
>>> from keras_transformer import presets
>>> presets.list("DecoderOnlyTransformer")
['gpt2_medium', 'gpt2_small', 'gpt_tiny', 'llama_tiny', 'qwen2_0_5b', 'smollm_135m']
>>> model = DecoderOnlyTransformer.from_preset("gpt_tiny", dropout=0.0)
>>> presets.count_parameters("gpt2_small")
124439808
"""

import copy
import math

from keras_transformer import models

__all__ = ["PRESETS", "build", "count_parameters", "get_config", "list", "published_parameters"]


def _bert(num_layers, d_model, num_heads):
    return dict(
        vocab_size=30522, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
        d_ff=4 * d_model, dropout=0.1, max_length=512, positional="learned", activation="gelu",
        scale_embeddings=False, layer_norm_epsilon=1e-12,
    )


def _gpt2(num_layers, d_model, num_heads):
    return dict(
        vocab_size=50257, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
        d_ff=4 * d_model, dropout=0.1, max_length=1024, positional="learned", norm_first=True,
        activation="gelu_approximate", tie_embeddings=True, scale_embeddings=False,
        layer_norm_epsilon=1e-5,
    )


def _llama(vocab_size, num_layers, d_model, num_heads, num_key_value_heads, d_ff, max_length,
           rotary_max_wavelength=10000.0, tie_embeddings=False, layer_norm_epsilon=1e-5, qkv_bias=None):
    """Llama/Mistral/Qwen2 shape: pre-RMSNorm, rotary, gated SiLU feed-forward, GQA, no biases."""
    return dict(
        vocab_size=vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
        num_key_value_heads=num_key_value_heads, d_ff=d_ff, dropout=0.0, max_length=max_length,
        positional="rotary", rotary_max_wavelength=rotary_max_wavelength, norm_first=True,
        normalization="rms_norm", use_bias=False, gated_feed_forward=True, activation="silu",
        tie_embeddings=tie_embeddings, scale_embeddings=False, layer_norm_epsilon=layer_norm_epsilon,
        qkv_bias=qkv_bias,
    )


# name -> model class name, constructor config, description, published parameter count (when
# our architecture is the published one).
PRESETS = {
    "transformer_base": dict(
        model="EncoderDecoderTransformer",
        config=dict(vocab_size=37000, num_encoder_layers=6, num_decoder_layers=6, d_model=512,
                    num_heads=8, d_ff=2048, dropout=0.1),
        description="Vaswani et al. 2017, Table 3 'base', shared 37k BPE vocabulary.",
        published_parameters=65_000_000,
    ),
    "transformer_big": dict(
        model="EncoderDecoderTransformer",
        config=dict(vocab_size=37000, num_encoder_layers=6, num_decoder_layers=6, d_model=1024,
                    num_heads=16, d_ff=4096, dropout=0.3),
        description="Vaswani et al. 2017, Table 3 'big', shared 37k BPE vocabulary.",
        published_parameters=213_000_000,
    ),
    "transformer_tiny": dict(
        model="EncoderDecoderTransformer",
        config=dict(vocab_size=64, num_encoder_layers=2, num_decoder_layers=2, d_model=32,
                    num_heads=2, d_ff=64, dropout=0.1),
        description="A 2+2-layer, width-32 encoder-decoder for tests and examples.",
    ),
    "bart_base_en": dict(
        model="EncoderDecoderTransformer",
        config=dict(vocab_size=50265, num_encoder_layers=6, num_decoder_layers=6, d_model=768, num_heads=12,
                    d_ff=3072, dropout=0.1, max_length=1024, positional="learned", activation="gelu",
                    layer_norm_epsilon=1e-5, scale_embeddings=False, embedding_norm=True, share_positions=False,
                    position_offset=2, pad_id=1),
        description="BART base shape, Hugging Face facebook/bart-base's BartModel: 6+6 layers, width 768, "
                    "per-stack learned positions (with BART's 2 offset rows), embedding LayerNorms.",
        published_parameters=139_420_416,
    ),
    "bert_tiny": dict(model="EncoderOnlyTransformer", config=_bert(2, 128, 2),
                      description="BERT-style encoder, 2 layers, width 128, 2 heads."),
    "bert_mini": dict(model="EncoderOnlyTransformer", config=_bert(4, 256, 4),
                      description="BERT-style encoder, 4 layers, width 256, 4 heads."),
    "bert_small": dict(model="EncoderOnlyTransformer", config=_bert(4, 512, 8),
                       description="BERT-style encoder, 4 layers, width 512, 8 heads."),
    "bert_base": dict(model="EncoderOnlyTransformer", config=_bert(12, 768, 12),
                      description="BERT-style encoder, 12 layers, width 768, 12 heads."),
    "bert_base_en_uncased": dict(
        model="EncoderOnlyTransformer",
        config=dict(_bert(12, 768, 12), num_segments=2, embedding_norm=True, pooler=True),
        description="BERT base (uncased) shape, Hugging Face bert-base-uncased's BertModel: 12 layers, "
                    "width 768, segment embeddings, embedding LayerNorm, tanh pooler.",
        published_parameters=109_482_240,
    ),
    "encoder_tiny": dict(
        model="EncoderOnlyTransformer",
        config=dict(vocab_size=64, num_layers=2, d_model=32, num_heads=2, d_ff=64, dropout=0.1,
                    max_length=128, positional="learned", activation="gelu"),
        description="A 2-layer, width-32 encoder for tests and examples.",
    ),
    "gpt2_small": dict(model="DecoderOnlyTransformer", config=_gpt2(12, 768, 12),
                       description="GPT-2 small (gpt2_base_en): 12 layers, width 768, context 1024.",
                       published_parameters=124_439_808),  # the Hugging Face checkpoint's count
    "gpt2_medium": dict(model="DecoderOnlyTransformer", config=_gpt2(24, 1024, 16),
                        description="GPT-2 medium (gpt2_medium_en): 24 layers, width 1024, context 1024.",
                        published_parameters=354_823_168),  # the Hugging Face checkpoint's count
    "gpt_tiny": dict(
        model="DecoderOnlyTransformer",
        config=dict(vocab_size=64, num_layers=2, d_model=32, num_heads=2, d_ff=128, dropout=0.1,
                    max_length=128, positional="learned", norm_first=True, activation="gelu",
                    scale_embeddings=False, layer_norm_epsilon=1e-5),
        description="A 2-layer, width-32 GPT-2-style decoder for tests and examples.",
    ),
    "llama_tiny": dict(
        model="DecoderOnlyTransformer",
        config=_llama(64, 2, 32, 4, 2, 64, 128),
        description="A 2-layer, width-32 Llama-style decoder (4 query / 2 key-value heads).",
    ),
    "smollm_135m": dict(
        model="DecoderOnlyTransformer",
        config=_llama(49152, 30, 576, 9, 3, 1536, 2048, tie_embeddings=True),
        description="SmolLM-135M shape (Llama architecture): 30 layers, width 576, 9 query / 3 "
                    "key-value heads, tied embeddings, context 2048.",
        published_parameters=134_515_008,
    ),
    "qwen2_0_5b": dict(
        model="DecoderOnlyTransformer",
        config=_llama(151936, 24, 896, 14, 2, 4864, 32768, rotary_max_wavelength=1e6, tie_embeddings=True,
                      layer_norm_epsilon=1e-6, qkv_bias=True),
        description="Qwen2-0.5B shape: 24 layers, width 896, 14 query / 2 key-value heads, query/key/"
                    "value biases, tied embeddings, rotary theta 1e6, context 32768.",
        published_parameters=494_032_768,
    ),
}


def _class_name(model_class):
    if model_class is None or isinstance(model_class, str):
        return model_class
    return model_class.__name__


def list(model_class=None):  # noqa: A001 - the public name the issue asks for
    """Sorted preset names, optionally only those of `model_class` (a class or its name)."""
    wanted = _class_name(model_class)
    return sorted(name for name, preset in PRESETS.items() if wanted in (None, preset["model"]))


def get_config(name, model_class=None):
    """A copy of the constructor config of preset `name`.

    Raises:
        ValueError: unknown name (the message lists the known ones), or a preset of another
            model class than `model_class`.
    """
    known = list(model_class)
    if name not in PRESETS:
        raise ValueError(f"Unknown preset name={name!r}. Known presets: {', '.join(known or list())}.")
    preset = PRESETS[name]
    wanted = _class_name(model_class)
    if wanted is not None and preset["model"] != wanted:
        raise ValueError(
            f"Preset {name!r} is a {preset['model']}, not a {wanted}. Presets for {wanted}: "
            f"{', '.join(known)}."
        )
    return copy.deepcopy(preset["config"])


def build(name, **overrides):
    """Build preset `name` with its own model class (`<Model>.from_preset(name, **overrides)`)."""
    get_config(name)  # validates the name
    model_class = getattr(models, PRESETS[name]["model"])
    return model_class.from_preset(name, **overrides)


def count_parameters(name, **overrides):
    """Parameter count of preset `name` without allocating its weights.

    The real model is built inside a Keras `StatelessScope` that leaves variables
    uninitialised (shapes only), so counting `gpt2_medium` takes about a second and no memory.
    """
    try:
        from keras.src.backend.common import global_state
        from keras.src.backend.common.stateless_scope import StatelessScope
    except ImportError:  # pragma: no cover - another Keras layout: build for real
        return build(name, **overrides).count_params()
    pending = global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True)
    already_pending = len(pending)
    try:
        with StatelessScope(initialize_variables=False):
            model = build(name, **overrides)
            return sum(math.prod(weight.shape) for weight in model.weights)
    finally:
        # Forget our never-initialised variables so no later scope initialises them.
        del pending[already_pending:]


def published_parameters(name):
    """The published parameter count for `name` (paper, GPT-2 release, Hugging Face model), or None."""
    get_config(name)
    return PRESETS[name].get("published_parameters")

