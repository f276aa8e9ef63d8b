"""BART <-> `EncoderDecoderTransformer` (per-stack learned positions, embedding LayerNorms,
unscaled embeddings, post-norm, exact GELU, tied output projection).

Hugging Face names (`model.` prefix optional): `shared` (the token embedding; the copies
`encoder.embed_tokens` / `decoder.embed_tokens` and `lm_head` must equal it),
`{encoder,decoder}.embed_positions` (`max_position_embeddings + 2` rows: BART's offset, kept as
`position_offset=2`), `{encoder,decoder}.layernorm_embedding`, `encoder.layers.{i}.{self_attn,
self_attn_layer_norm, fc1, fc2, final_layer_norm}`, `decoder.layers.{i}.` the same plus
`encoder_attn` and `encoder_attn_layer_norm`; `final_logits_bias` (BartForConditionalGeneration)
must be zero: our projection has no bias. Padding is `pad_token_id` (1 in BART's vocabulary).

keras-hub: `BartBackbone` (names in `_keras_hub_names`, our kernel layout already), whose
position tables have no offset rows (`position_offset=0`). Its decoder also masks padded
*target* positions; ours is causal only, so the two agree at every real target position
(right padding), which is all that generation and the loss read.
"""

import numpy as np

from keras_transformer.checkpoints.common import (
    HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, SAME, check_tied, keras_hub_block_names, require_options, to_hf, to_keras,
)
from keras_transformer.checkpoints.formats import NotThisArchitecture, check, field, model_weights, unsupported

MODEL_CLASS = "EncoderDecoderTransformer"
HF_MODEL_TYPES = ("bart",)
KERAS_HUB_CLASSES = ("BartBackbone",)

HF_POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate",
                "relu": "relu"}
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_approximate": "gelu_new", "relu": "relu"}


def _config(vocab_size, num_layers, d_model, num_heads, d_ff, max_length, dropout, position_offset,
            activation="gelu", pad_id=1, num_decoder_layers=None, scale_embeddings=False):
    return dict(
        vocab_size=vocab_size, num_encoder_layers=num_layers, num_decoder_layers=num_decoder_layers or num_layers,
        d_model=d_model, num_heads=num_heads, d_ff=d_ff, dropout=dropout, max_length=max_length,
        positional="learned", norm_first=False, activation=activation, tie_embeddings=True, pad_id=pad_id,
        layer_norm_epsilon=1e-5, scale_embeddings=scale_embeddings, embedding_norm=True, share_positions=False,
        position_offset=position_offset,
    )


def _prefix(tensors):
    return "model." if "model.shared.weight" in tensors else ""


def _same(hf_config, first, second, where):
    """`hf_config[first]`, which our model needs equal to `hf_config[second]` when that is set."""
    value = field(hf_config, first)
    if hf_config.get(second, value) != value:
        raise unsupported(where, second, hf_config[second], f"our stacks share it with {first}={value}")
    return value


def config_from_hf(hf_config, tensors=None):
    where = "config.json"
    activation = hf_config.get("activation_function", "gelu")
    if activation not in _ACTIVATIONS:
        raise unsupported(where, "activation_function", activation, f"supported: {sorted(_ACTIVATIONS)}")
    for name, ok in (("normalize_before", False), ("add_final_layer_norm", False), ("tie_word_embeddings", True)):
        if hf_config.get(name, ok) != ok:
            raise unsupported(where, name, hf_config[name], f"BART has {name}={ok}")
    vocab_size = field(hf_config, "vocab_size")
    pad = hf_config.get("pad_token_id", 1)
    return _config(
        vocab_size, field(hf_config, "encoder_layers"), field(hf_config, "d_model"),
        _same(hf_config, "encoder_attention_heads", "decoder_attention_heads", where),
        _same(hf_config, "encoder_ffn_dim", "decoder_ffn_dim", where), field(hf_config, "max_position_embeddings"),
        float(hf_config.get("dropout", 0.1)), HF_POSITION_OFFSET, _ACTIVATIONS[activation],
        pad if isinstance(pad, int) and 0 <= pad < vocab_size else 1,
        num_decoder_layers=hf_config.get("decoder_layers"),
        scale_embeddings=bool(hf_config.get("scale_embedding", False)),
    )


def _attention_names(hf, ours):
    names = []
    for hf_name, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
        names += [(f"{hf}.{hf_name}.weight", f"{ours}/{name}/kernel", HEADS_IN),
                  (f"{hf}.{hf_name}.bias", f"{ours}/{name}/bias", HEADS_BIAS)]
    return names + [(f"{hf}.out_proj.weight", f"{ours}/attention_output/kernel", HEADS_OUT),
                    (f"{hf}.out_proj.bias", f"{ours}/attention_output/bias", SAME)]


def _norm_names(hf, ours):
    return [(f"{hf}.weight", f"{ours}/gamma", SAME), (f"{hf}.bias", f"{ours}/beta", SAME)]


def _hf_names(config, p=""):
    """(HF tensor name, our weight path, layout) triples: the whole HF name map of `config`."""
    names = [(f"{p}shared.weight", "token_embedding/token_embedding/embeddings", SAME)]
    for stack, layers in (("encoder", config["num_encoder_layers"]), ("decoder", config["num_decoder_layers"])):
        names += [(f"{p}{stack}.embed_positions.weight", f"{stack}_position_encoding/position_embeddings", SAME)]
        names += _norm_names(f"{p}{stack}.layernorm_embedding", f"{stack}_embedding_norm")
        for i in range(layers):
            h, ours = f"{p}{stack}.layers.{i}.", f"{stack}_block_{i}/"
            names += _attention_names(f"{h}self_attn", f"{ours}self_attention")
            names += _norm_names(f"{h}self_attn_layer_norm", f"{ours}self_attention_norm")
            if stack == "decoder":
                names += _attention_names(f"{h}encoder_attn", f"{ours}cross_attention")
                names += _norm_names(f"{h}encoder_attn_layer_norm", f"{ours}cross_attention_norm")
            names += [(f"{h}fc1.weight", f"{ours}feed_forward/intermediate_dense/kernel", LINEAR),
                      (f"{h}fc1.bias", f"{ours}feed_forward/intermediate_dense/bias", SAME),
                      (f"{h}fc2.weight", f"{ours}feed_forward/output_dense/kernel", LINEAR),
                      (f"{h}fc2.bias", f"{ours}feed_forward/output_dense/bias", SAME)]
            names += _norm_names(f"{h}final_layer_norm", f"{ours}feed_forward_norm")
    return names


def weights_from_hf(tensors, config):
    p = _prefix(tensors)
    for hf_name, our_path, layout in _hf_names(config, p):
        yield our_path, to_keras(tensors, hf_name, layout, config["num_heads"])
    shared = tensors[f"{p}shared.weight"]
    for copy in (f"{p}encoder.embed_tokens.weight", f"{p}decoder.embed_tokens.weight", "lm_head.weight"):
        check_tied(tensors, copy, shared, f"{p}shared.weight")
    if "final_logits_bias" in tensors:
        check(not np.any(tensors["final_logits_bias"]),
              f"{tensors.describe('final_logits_bias')} is not zero: our tied output projection has no bias.")


def config_from_keras_hub(config, tensors=None):
    return _config(
        *(field(config, name, "config.json (keras-hub)") for name in (
            "vocabulary_size", "num_layers", "hidden_dim", "num_heads", "intermediate_dim", "max_sequence_length")),
        float(config.get("dropout", 0.1)), 0,
    )


def _keras_hub_names(num_layers):
    """(keras-hub tensor name, our weight path) pairs: the whole keras-hub name map."""
    names = [("token_embedding/0", "token_embedding/token_embedding/embeddings")]
    for stack in ("encoder", "decoder"):
        names += [(f"{stack}_position_embedding/0", f"{stack}_position_encoding/position_embeddings"),
                  (f"{stack}_embeddings_layer_norm/0", f"{stack}_embedding_norm/gamma"),
                  (f"{stack}_embeddings_layer_norm/1", f"{stack}_embedding_norm/beta")]
    for i in range(num_layers):
        names += keras_hub_block_names(f"transformer_encoder_layer_{i}/", f"encoder_block_{i}/", "self_attention_layer")
        names += keras_hub_block_names(f"transformer_decoder_layer_{i}/", f"decoder_block_{i}/", "self_attention",
                                       "cross_attention")
    return names


def weights_from_keras_hub(tensors, config):
    for kh_name, our_path in _keras_hub_names(config["num_encoder_layers"]):
        yield our_path, tensors[kh_name]


# -- the way back ----------------------------------------------------------------------------


def _check_bart(model):
    """Our config, or NotThisArchitecture naming the option BART lacks."""
    return require_options(model, "BART", dict(
        positional="learned", norm_first=False, normalization="layer_norm", use_bias=True, gated_feed_forward=False,
        tie_embeddings=True, embedding_norm=True, share_positions=False, target_vocab_size=None,
        layer_norm_epsilon=1e-5), _HF_ACTIVATIONS)


def _positions(weights, offset, wanted):
    """The position tables with `wanted` rows before position 0 instead of `offset` (the rows
    before position 0 are never read: dropped, or zeros)."""
    for stack in ("encoder", "decoder"):
        name = f"{stack}_position_encoding/position_embeddings"
        table = weights[name][offset:]
        weights[name] = np.concatenate([np.zeros((wanted, table.shape[1]), table.dtype), table])
    return weights


def hf_from_model(model):
    config = _check_bart(model)
    weights = _positions(model_weights(model), config["position_offset"], HF_POSITION_OFFSET)
    dropout = float(config["dropout"])
    heads, d_ff = config["num_heads"], config["d_ff"]
    hf_config = {
        "model_type": "bart", "architectures": ["BartForConditionalGeneration"],
        "vocab_size": config["vocab_size"], "d_model": config["d_model"],
        "encoder_layers": config["num_encoder_layers"], "decoder_layers": config["num_decoder_layers"],
        "num_hidden_layers": config["num_encoder_layers"],
        "encoder_attention_heads": heads, "decoder_attention_heads": heads,
        "encoder_ffn_dim": d_ff, "decoder_ffn_dim": d_ff, "max_position_embeddings": config["max_length"],
        "activation_function": _HF_ACTIVATIONS[config["activation"]], "dropout": dropout,
        "attention_dropout": 0.0, "activation_dropout": 0.0, "scale_embedding": config["scale_embeddings"],
        "normalize_before": False, "add_final_layer_norm": False, "tie_word_embeddings": True,
        "pad_token_id": config["pad_id"], "init_std": 0.02, "torch_dtype": "float32",
    }
    tensors = {hf: to_hf(weights[ours], layout) for hf, ours, layout in _hf_names(config, "model.")}
    tensors["final_logits_bias"] = np.zeros((1, config["vocab_size"]), "float32")
    return hf_config, tensors


def keras_hub_from_model(model):
    config = _check_bart(model)
    if (config["num_encoder_layers"] != config["num_decoder_layers"] or config["activation"] != "gelu"
            or config["scale_embeddings"]):
        raise NotThisArchitecture("keras-hub's BartBackbone has as many decoder as encoder layers, exact GELU "
                                  "and unscaled embeddings")
    weights = _positions(model_weights(model), config["position_offset"], 0)
    backbone_config = {
        "vocabulary_size": config["vocab_size"], "num_layers": config["num_encoder_layers"],
        "num_heads": config["num_heads"], "hidden_dim": config["d_model"], "intermediate_dim": config["d_ff"],
        "dropout": float(config["dropout"]), "max_sequence_length": config["max_length"],
    }
    return "BartBackbone", backbone_config, {kh: weights[ours] for kh, ours in _keras_hub_names(config["num_encoder_layers"])}
