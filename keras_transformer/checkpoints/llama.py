"""Llama, Mistral, Qwen2 <-> `DecoderOnlyTransformer` (rotary, RMSNorm, gated SiLU, GQA).

Hugging Face names (`model.` prefix optional): `embed_tokens`, `layers.{i}.input_layernorm`,
`layers.{i}.self_attn.{q,k,v,o}_proj` (`(out, in)` kernels; Qwen2: q/k/v biases),
`layers.{i}.post_attention_layernorm`, `layers.{i}.mlp.{gate,up,down}_proj`, `norm`, and
`lm_head` unless `tie_word_embeddings`. keras-hub: `LlamaBackbone` / `Llama3Backbone`,
`MistralBackbone`, `QwenBackbone` (names in `_keras_hub_names`; our kernel layout already).

Mistral's (and Qwen2's optional) sliding-window attention is not modelled: such a checkpoint
loads with `max_length` capped at the window, inside which attention is identical (`generate`
then refuses longer sequences; a full forward pass over more tokens than the window differs
from the source).

The way back writes the most general equivalent: `LlamaForCausalLM` / `LlamaBackbone`, or
`Qwen2ForCausalLM` / `QwenBackbone` when the query/key/value projections have biases.
"""

import numpy as np

from keras_transformer.checkpoints.formats import NotThisArchitecture, check, field, model_weights, unsupported

MODEL_CLASS = "DecoderOnlyTransformer"
HF_MODEL_TYPES = ("llama", "mistral", "qwen2")
KERAS_HUB_CLASSES = ("LlamaBackbone", "Llama3Backbone", "MistralBackbone", "QwenBackbone")

_DEFAULT_MAX_LENGTH = 2048  # written as max_position_embeddings when the model has no bound


def _config(vocab_size, num_layers, d_model, num_heads, num_key_value_heads, d_ff, max_length,
            rotary_max_wavelength, rotary_scaling_factor, epsilon, tie_embeddings, qkv_bias,
            dropout=0.0, pad_id=0):
    return dict(
        vocab_size=vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
        num_key_value_heads=num_key_value_heads, d_ff=d_ff, dropout=dropout, max_length=max_length,
        positional="rotary", rotary_max_wavelength=float(rotary_max_wavelength),
        rotary_scaling_factor=float(rotary_scaling_factor), norm_first=True,
        normalization="rms_norm", use_bias=False, qkv_bias=qkv_bias, gated_feed_forward=True,
        activation="silu", tie_embeddings=tie_embeddings, pad_id=pad_id, scale_embeddings=False,
        layer_norm_epsilon=float(epsilon),
    )


def _cap(max_length, window):
    if window is None:
        return max_length
    return window if max_length is None else min(max_length, window)


def _rope(hf_config, where):
    """(theta, linear scaling factor) from `rope_theta` + `rope_scaling`, or the newer
    `rope_parameters`; other rope types (llama3, yarn, dynamic, ...) are refused."""
    parameters = hf_config.get("rope_parameters") or {}
    theta = hf_config.get("rope_theta", parameters.get("rope_theta", 10000.0))
    scaling = hf_config.get("rope_scaling") or {}
    if parameters.get("rope_type") not in (None, "default"):
        scaling = parameters
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return theta, 1.0
    if kind == "linear":
        return theta, float(scaling["factor"])
    raise unsupported(where, "rope_scaling.rope_type", kind, "supported: default, linear")


def config_from_hf(hf_config, tensors=None):
    where = "config.json"
    model_type = hf_config["model_type"]
    if hf_config.get("hidden_act", "silu") != "silu":
        raise unsupported(where, "hidden_act", hf_config["hidden_act"], "Llama-family models use silu")
    d_model, heads = field(hf_config, "hidden_size"), field(hf_config, "num_attention_heads")
    if hf_config.get("head_dim") not in (None, d_model // heads):
        raise unsupported(where, "head_dim", hf_config["head_dim"], f"our heads are hidden_size / "
                          f"num_attention_heads = {d_model // heads} wide")
    if hf_config.get("mlp_bias"):
        raise unsupported(where, "mlp_bias", True, "the feed-forward has no biases")
    attention_bias = bool(hf_config.get("attention_bias", False))
    if model_type == "qwen2":
        qkv_bias = True
    elif attention_bias:
        raise unsupported(where, "attention_bias", True, "only Qwen2's query/key/value biases are supported")
    else:
        qkv_bias = None
    window = None
    if model_type == "mistral" or hf_config.get("use_sliding_window"):
        window = hf_config.get("sliding_window")
    theta, factor = _rope(hf_config, where)
    vocab_size = field(hf_config, "vocab_size")
    pad = hf_config.get("pad_token_id")
    return _config(
        vocab_size, field(hf_config, "num_hidden_layers"), d_model, heads,
        hf_config.get("num_key_value_heads") or heads, field(hf_config, "intermediate_size"),
        _cap(hf_config.get("max_position_embeddings"), window), theta, factor,
        hf_config.get("rms_norm_eps", 1e-6),
        bool(hf_config.get("tie_word_embeddings", False)), qkv_bias,
        dropout=float(hf_config.get("attention_dropout", 0.0) or 0.0),
        pad_id=pad if isinstance(pad, int) and 0 <= pad < vocab_size else 0,
    )


def _transposed(tensors, name, shape):
    """An HF `(out, in)` Linear kernel as our `shape` (its transpose, reshaped)."""
    array = tensors[name]
    check(array.ndim == 2 and array.size == int(np.prod(shape)),
          f"{tensors.describe(name)}: shape {array.shape} does not fit the config ({shape}): the config "
          "contradicts the weights.")
    return np.ascontiguousarray(array.T).reshape(shape)


def weights_from_hf(tensors, config):
    p = "model." if "model.embed_tokens.weight" in tensors else ""
    tensors.ignore(rf"{p}layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # a buffer in old files
    d, heads = config["d_model"], config["num_heads"]
    kv_heads, head_dim, d_ff = config["num_key_value_heads"], d // heads, config["d_ff"]
    yield "token_embedding/token_embedding/embeddings", tensors[f"{p}embed_tokens.weight"]
    for i in range(config["num_layers"]):
        h, ours = f"{p}layers.{i}.", f"decoder_block_{i}/"
        attention = f"{ours}self_attention/"
        yield f"{ours}self_attention_norm/scale", tensors[f"{h}input_layernorm.weight"]
        yield f"{ours}feed_forward_norm/scale", tensors[f"{h}post_attention_layernorm.weight"]
        for hf_name, name, n in (("q_proj", "query", heads), ("k_proj", "key", kv_heads),
                                 ("v_proj", "value", kv_heads)):
            yield f"{attention}{name}/kernel", _transposed(tensors, f"{h}self_attn.{hf_name}.weight", (d, n, head_dim))
            if config.get("qkv_bias"):
                yield f"{attention}{name}/bias", tensors[f"{h}self_attn.{hf_name}.bias"].reshape(n, head_dim)
        yield f"{attention}attention_output/kernel", _transposed(tensors, f"{h}self_attn.o_proj.weight",
                                                                 (heads, head_dim, d))
        for hf_name, name, shape in (("gate_proj", "gate_dense", (d, d_ff)), ("up_proj", "intermediate_dense", (d, d_ff)),
                                     ("down_proj", "output_dense", (d_ff, d))):
            yield f"{ours}feed_forward/{name}/kernel", _transposed(tensors, f"{h}mlp.{hf_name}.weight", shape)
    yield "final_norm/scale", tensors[f"{p}norm.weight"]
    if not config["tie_embeddings"]:
        if "lm_head.weight" not in tensors:
            raise ValueError(f"{tensors.path}: the checkpoint has no tensor 'lm_head.weight' (the output "
                             "projection; config.json says tie_word_embeddings=false): a base model "
                             "without its language-model head cannot be loaded as a language model.")
        yield "lm_head/kernel", _transposed(tensors, "lm_head.weight", (d, config["vocab_size"]))
    elif "lm_head.weight" in tensors:  # a tied head some writers save: it must be the embedding
        check(np.array_equal(tensors["lm_head.weight"], tensors[f"{p}embed_tokens.weight"]),
              f"{tensors.describe('lm_head.weight')} differs from the token embedding, but the config "
              "sets tie_word_embeddings=true.")


def config_from_keras_hub(config, tensors):
    where = "config.json (keras-hub)"
    for name in ("rope_frequency_adjustment_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                 "rope_pretraining_sequence_length"):
        if config.get(name) is not None:
            raise unsupported(where, name, config[name], "Llama 3.1 rope scaling is not modelled")
    window = None
    if "sliding_window" in config:  # MistralBackbone
        window = config["sliding_window"]
    elif config.get("use_sliding_window_attention"):
        window = config.get("sliding_window_size")
    qwen = "use_sliding_window_attention" in config
    return _config(
        *(field(config, name, where) for name in ("vocabulary_size", "num_layers", "hidden_dim",
                                                  "num_query_heads", "num_key_value_heads",
                                                  "intermediate_dim")),
        _cap(None, window), config.get("rope_max_wavelength", 10000),
        config.get("rope_position_scaling_factor", config.get("rope_scaling_factor", 1.0)),
        config.get("layer_norm_epsilon", 1e-6),
        # keras-hub 0.32's LlamaBackbone does not save `tie_word_embeddings`: its weights say it.
        bool(config.get("tie_word_embeddings", "token_embedding/1" not in tensors)), True if qwen else None,
        dropout=float(config.get("dropout", 0.0)),
    )


def _keras_hub_names(config):
    """(keras-hub tensor name, our weight path) pairs: the whole name map."""
    names = [("token_embedding/0", "token_embedding/token_embedding/embeddings"),
             ("sequence_output_layernorm/0", "final_norm/scale")]
    if not config["tie_embeddings"]:
        names.append(("token_embedding/1", "lm_head/kernel"))
    for i in range(config["num_layers"]):
        kh, ours = f"transformer_layer_{i}/", f"decoder_block_{i}/"
        names += [(f"{kh}self_attention_layernorm/0", f"{ours}self_attention_norm/scale"),
                  (f"{kh}feedforward_layernorm/0", f"{ours}feed_forward_norm/scale"),
                  (f"{kh}self_attention/attention_output/0", f"{ours}self_attention/attention_output/kernel")]
        for name in ("query", "key", "value"):
            names.append((f"{kh}self_attention/{name}/0", f"{ours}self_attention/{name}/kernel"))
            if config.get("qkv_bias"):
                names.append((f"{kh}self_attention/{name}/1", f"{ours}self_attention/{name}/bias"))
        for kh_dense, our_dense in (("feedforward_gate_dense", "gate_dense"),
                                    ("feedforward_intermediate_dense", "intermediate_dense"),
                                    ("feedforward_output_dense", "output_dense")):
            names.append((f"{kh}{kh_dense}/0", f"{ours}feed_forward/{our_dense}/kernel"))
    return names


def weights_from_keras_hub(tensors, config):
    for kh_name, our_path in _keras_hub_names(config):
        yield our_path, tensors[kh_name]


# -- the way back ----------------------------------------------------------------------------


def _check_llama(model):
    config = model.get_config()
    wanted = dict(positional="rotary", norm_first=True, normalization="rms_norm", use_bias=False,
                  gated_feed_forward=True, activation="silu", scale_embeddings=False)
    for name, value in wanted.items():
        if config.get(name) != value:
            raise NotThisArchitecture(f"the Llama family needs {name}={value!r}, the model has {config.get(name)!r}")
    config["num_key_value_heads"] = config.get("num_key_value_heads") or config["num_heads"]
    return config


def hf_from_model(model):
    config = _check_llama(model)
    weights = model_weights(model)
    d, heads, kv_heads = config["d_model"], config["num_heads"], config["num_key_value_heads"]
    head_dim, qwen = d // heads, bool(config.get("qkv_bias"))
    hf_config = {
        "model_type": "qwen2" if qwen else "llama",
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "vocab_size": config["vocab_size"], "hidden_size": d, "intermediate_size": config["d_ff"],
        "num_hidden_layers": config["num_layers"], "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "hidden_act": "silu",
        "max_position_embeddings": config["max_length"] or _DEFAULT_MAX_LENGTH,
        "rms_norm_eps": config["layer_norm_epsilon"], "rope_theta": config["rotary_max_wavelength"],
        "rope_scaling": None if config["rotary_scaling_factor"] == 1.0 else {
            "rope_type": "linear", "factor": config["rotary_scaling_factor"]},
        "tie_word_embeddings": bool(config["tie_embeddings"]), "attention_dropout": float(config["dropout"]),
        "pad_token_id": config["pad_id"], "torch_dtype": "float32", "use_cache": True,
    }
    if qwen:
        hf_config.update(use_sliding_window=False, sliding_window=None)
    else:
        hf_config.update(attention_bias=False, mlp_bias=False)
    p = "model."
    tensors = {f"{p}embed_tokens.weight": weights["token_embedding/token_embedding/embeddings"],
               f"{p}norm.weight": weights["final_norm/scale"]}
    if not config["tie_embeddings"]:
        tensors["lm_head.weight"] = weights["lm_head/kernel"].T
    for i in range(config["num_layers"]):
        h, ours = f"{p}layers.{i}.", f"decoder_block_{i}/"
        attention = f"{ours}self_attention/"
        tensors[f"{h}input_layernorm.weight"] = weights[f"{ours}self_attention_norm/scale"]
        tensors[f"{h}post_attention_layernorm.weight"] = weights[f"{ours}feed_forward_norm/scale"]
        for hf_name, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            tensors[f"{h}self_attn.{hf_name}.weight"] = weights[f"{attention}{name}/kernel"].reshape(d, -1).T
            if qwen:
                tensors[f"{h}self_attn.{hf_name}.bias"] = weights[f"{attention}{name}/bias"].reshape(-1)
        tensors[f"{h}self_attn.o_proj.weight"] = weights[f"{attention}attention_output/kernel"].reshape(
            heads * head_dim, d).T
        for hf_name, name in (("gate_proj", "gate_dense"), ("up_proj", "intermediate_dense"),
                              ("down_proj", "output_dense")):
            tensors[f"{h}mlp.{hf_name}.weight"] = weights[f"{ours}feed_forward/{name}/kernel"].T
    return hf_config, tensors


def keras_hub_from_model(model):
    config = _check_llama(model)
    weights = model_weights(model)
    common = {
        "vocabulary_size": config["vocab_size"], "num_layers": config["num_layers"],
        "num_query_heads": config["num_heads"], "num_key_value_heads": config["num_key_value_heads"],
        "hidden_dim": config["d_model"], "intermediate_dim": config["d_ff"],
        "rope_max_wavelength": config["rotary_max_wavelength"],
        "layer_norm_epsilon": config["layer_norm_epsilon"], "dropout": float(config["dropout"]),
        "tie_word_embeddings": bool(config["tie_embeddings"]),
    }
    tensors = {kh: weights[ours] for kh, ours in _keras_hub_names(config)}
    if config.get("qkv_bias"):
        backbone = "QwenBackbone"
        common["rope_scaling_factor"] = config["rotary_scaling_factor"]
    else:
        backbone = "LlamaBackbone"
        common["rope_position_scaling_factor"] = config["rotary_scaling_factor"]
        if config["tie_embeddings"]:
            # keras-hub 0.32's LlamaBackbone does not save `tie_word_embeddings`, so it cannot
            # reload a tied preset: write the tied head as an explicit (equal) output matrix.
            common["tie_word_embeddings"] = False
            tensors["token_embedding/1"] = tensors["token_embedding/0"].T
    return backbone, common, tensors
