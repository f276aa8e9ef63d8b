"""GPT-2 <-> `DecoderOnlyTransformer` (learned positions, pre-LayerNorm, tanh GELU, tied head).

Hugging Face names (`transformer.` prefix optional): `wte`, `wpe`, `h.{i}.ln_1`,
`h.{i}.attn.c_attn` (fused q|k|v, Conv1D `(in, out)` layout), `h.{i}.attn.c_proj`, `h.{i}.ln_2`,
`h.{i}.mlp.c_fc`, `h.{i}.mlp.c_proj`, `ln_f`. keras-hub `GPT2Backbone` names: see
`_keras_hub_names`; its kernels already have our `EinsumDense` layout.
"""

import numpy as np

from keras_transformer.checkpoints.common import keras_hub_block_names
from keras_transformer.checkpoints.formats import NotThisArchitecture, check, field, unsupported

MODEL_CLASS = "DecoderOnlyTransformer"
HF_MODEL_TYPES = ("gpt2",)
KERAS_HUB_CLASSES = ("GPT2Backbone",)

# HF activation_function -> ours. gelu_new / gelu_fast / gelu_pytorch_tanh are all the tanh form.
_ACTIVATIONS = {"gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate",
                "gelu_fast": "gelu_approximate", "gelu": "gelu", "relu": "relu"}


def _config(vocab_size, num_layers, d_model, num_heads, d_ff, max_length, dropout,
            activation="gelu_approximate", layer_norm_epsilon=1e-5, pad_id=0):
    return dict(
        vocab_size=vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
        d_ff=d_ff, dropout=dropout, max_length=max_length, positional="learned", norm_first=True,
        activation=activation, tie_embeddings=True, pad_id=pad_id, scale_embeddings=False,
        layer_norm_epsilon=layer_norm_epsilon,
    )


def _pad_id(hf_config, vocab_size):
    """GPT-2 has no padding token: the pad (or end) token when the config names one in range."""
    for field in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = hf_config.get(field)
        if isinstance(value, int) and 0 <= value < vocab_size:
            return value
    return 0


def config_from_hf(hf_config, tensors=None):
    where = "config.json"
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise unsupported(where, "activation_function", activation, f"supported: {sorted(_ACTIVATIONS)}")
    for name, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                     ("add_cross_attention", False)):
        if hf_config.get(name, ok) != ok:
            raise unsupported(where, name, hf_config[name], f"our GPT-2 needs {ok}")
    if not hf_config.get("tie_word_embeddings", True):
        raise unsupported(where, "tie_word_embeddings", False, "GPT-2 ties its output projection")
    d_model, vocab_size = field(hf_config, "n_embd"), field(hf_config, "vocab_size")
    return _config(
        vocab_size, field(hf_config, "n_layer"), d_model, field(hf_config, "n_head"),
        hf_config.get("n_inner") or 4 * d_model, field(hf_config, "n_positions"),
        float(hf_config.get("resid_pdrop", 0.1)), _ACTIVATIONS[activation],
        float(hf_config.get("layer_norm_epsilon", 1e-5)), _pad_id(hf_config, vocab_size),
    )


def weights_from_hf(tensors, config):
    p = "transformer." if "transformer.wte.weight" in tensors else ""
    tensors.ignore(rf"{p}h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers
    d, heads = config["d_model"], config["num_heads"]
    head_dim = d // heads
    yield "token_embedding/token_embedding/embeddings", tensors[f"{p}wte.weight"]
    yield "token_embedding/position_encoding/position_embeddings", tensors[f"{p}wpe.weight"]
    for i in range(config["num_layers"]):
        h, ours = f"{p}h.{i}.", f"decoder_block_{i}/"
        for hf_norm, our_norm in (("ln_1", "self_attention_norm"), ("ln_2", "feed_forward_norm")):
            yield f"{ours}{our_norm}/gamma", tensors[f"{h}{hf_norm}.weight"]
            yield f"{ours}{our_norm}/beta", tensors[f"{h}{hf_norm}.bias"]
        qkv = tensors[f"{h}attn.c_attn.weight"]
        check(qkv.shape == (d, 3 * d), f"{tensors.describe(h + 'attn.c_attn.weight')}: shape {qkv.shape}, "
                                       f"expected {(d, 3 * d)} from n_embd={d}.")
        qkv_bias = tensors[f"{h}attn.c_attn.bias"]
        check(qkv_bias.shape == (3 * d,), f"{tensors.describe(h + 'attn.c_attn.bias')}: shape "
                                          f"{qkv_bias.shape}, expected {(3 * d,)} from n_embd={d}.")
        for index, name in enumerate(("query", "key", "value")):
            yield (f"{ours}self_attention/{name}/kernel",
                   qkv[:, index * d:(index + 1) * d].reshape(d, heads, head_dim))
            yield f"{ours}self_attention/{name}/bias", qkv_bias[index * d:(index + 1) * d].reshape(heads, head_dim)
        yield f"{ours}self_attention/attention_output/kernel", _reshape(
            tensors, f"{h}attn.c_proj.weight", (heads, head_dim, d))
        yield f"{ours}self_attention/attention_output/bias", tensors[f"{h}attn.c_proj.bias"]
        yield f"{ours}feed_forward/intermediate_dense/kernel", tensors[f"{h}mlp.c_fc.weight"]
        yield f"{ours}feed_forward/intermediate_dense/bias", tensors[f"{h}mlp.c_fc.bias"]
        yield f"{ours}feed_forward/output_dense/kernel", tensors[f"{h}mlp.c_proj.weight"]
        yield f"{ours}feed_forward/output_dense/bias", tensors[f"{h}mlp.c_proj.bias"]
    yield "final_norm/gamma", tensors[f"{p}ln_f.weight"]
    yield "final_norm/beta", tensors[f"{p}ln_f.bias"]
    if "lm_head.weight" in tensors:  # the tied head, saved by some writers: must equal wte
        check(np.array_equal(tensors["lm_head.weight"], tensors[f"{p}wte.weight"]),
              f"{tensors.describe('lm_head.weight')} differs from {p}wte.weight, but GPT-2 ties them.")


def _reshape(tensors, name, shape):
    array = tensors[name]
    check(array.size == int(np.prod(shape)), f"{tensors.describe(name)}: shape {array.shape} does not fit "
                                             f"{shape} (the config contradicts the weights).")
    return array.reshape(shape)


def config_from_keras_hub(config, tensors=None):
    return _config(
        *(field(config, name) for name in ("vocabulary_size", "num_layers", "hidden_dim", "num_heads",
                                           "intermediate_dim", "max_sequence_length")),
        float(config.get("dropout", 0.1)),
    )


def _keras_hub_names(num_layers):
    """(keras-hub tensor name, our weight path) pairs: the whole name map."""
    names = [("token_embedding/0", "token_embedding/token_embedding/embeddings"),
             ("position_embedding/0", "token_embedding/position_encoding/position_embeddings"),
             ("layer_norm/0", "final_norm/gamma"), ("layer_norm/1", "final_norm/beta")]
    for i in range(num_layers):
        names += keras_hub_block_names(f"transformer_layer_{i}/", f"decoder_block_{i}/")
    return names


def weights_from_keras_hub(tensors, config):
    for kh_name, our_path in _keras_hub_names(config["num_layers"]):
        yield our_path, tensors[kh_name]


# -- the way back ----------------------------------------------------------------------------


def _check_gpt2(model):
    """Our config, or NotThisArchitecture saying which option GPT-2 lacks."""
    config = model.get_config()
    wanted = dict(positional="learned", norm_first=True, normalization="layer_norm", use_bias=True,
                  gated_feed_forward=False, tie_embeddings=True, scale_embeddings=False)
    for name, value in wanted.items():
        if config.get(name) != value:
            raise NotThisArchitecture(f"GPT-2 needs {name}={value!r}, the model has {config.get(name)!r}")
    if config.get("num_key_value_heads") not in (None, config["num_heads"]):
        raise NotThisArchitecture("GPT-2 has no grouped-query attention")
    if config["activation"] not in ("gelu_approximate", "gelu", "relu"):
        raise NotThisArchitecture(f"GPT-2 has no activation {config['activation']!r}")
    return config


def hf_from_model(model):
    from keras_transformer.checkpoints.formats import model_weights

    config = _check_gpt2(model)
    weights = model_weights(model)
    d, layers = config["d_model"], config["num_layers"]
    activation = {"gelu_approximate": "gelu_new", "gelu": "gelu", "relu": "relu"}[config["activation"]]
    dropout = float(config["dropout"])
    hf_config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config["vocab_size"], "n_positions": config["max_length"], "n_embd": d,
        "n_layer": layers, "n_head": config["num_heads"], "n_inner": config["d_ff"],
        "activation_function": activation, "resid_pdrop": dropout, "embd_pdrop": dropout,
        "attn_pdrop": dropout, "layer_norm_epsilon": config["layer_norm_epsilon"],
        "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
        "tie_word_embeddings": True, "pad_token_id": config["pad_id"],
        "torch_dtype": "float32",
    }
    p = "transformer."
    tensors = {f"{p}wte.weight": weights["token_embedding/token_embedding/embeddings"],
               f"{p}wpe.weight": weights["token_embedding/position_encoding/position_embeddings"],
               f"{p}ln_f.weight": weights["final_norm/gamma"], f"{p}ln_f.bias": weights["final_norm/beta"]}
    for i in range(layers):
        h, ours = f"{p}h.{i}.", f"decoder_block_{i}/"
        attention = f"{ours}self_attention/"
        tensors[f"{h}attn.c_attn.weight"] = np.concatenate(
            [weights[f"{attention}{n}/kernel"].reshape(d, d) for n in ("query", "key", "value")], axis=1)
        tensors[f"{h}attn.c_attn.bias"] = np.concatenate(
            [weights[f"{attention}{n}/bias"].reshape(d) for n in ("query", "key", "value")])
        tensors[f"{h}attn.c_proj.weight"] = weights[f"{attention}attention_output/kernel"].reshape(d, d)
        tensors[f"{h}attn.c_proj.bias"] = weights[f"{attention}attention_output/bias"]
        for hf_norm, our_norm in (("ln_1", "self_attention_norm"), ("ln_2", "feed_forward_norm")):
            tensors[f"{h}{hf_norm}.weight"] = weights[f"{ours}{our_norm}/gamma"]
            tensors[f"{h}{hf_norm}.bias"] = weights[f"{ours}{our_norm}/beta"]
        for hf_dense, our_dense in (("c_fc", "intermediate_dense"), ("c_proj", "output_dense")):
            tensors[f"{h}mlp.{hf_dense}.weight"] = weights[f"{ours}feed_forward/{our_dense}/kernel"]
            tensors[f"{h}mlp.{hf_dense}.bias"] = weights[f"{ours}feed_forward/{our_dense}/bias"]
    return hf_config, tensors


def keras_hub_from_model(model):
    from keras_transformer.checkpoints.formats import model_weights

    config = _check_gpt2(model)
    if config["activation"] != "gelu_approximate" or config["layer_norm_epsilon"] != 1e-5:
        raise NotThisArchitecture("keras-hub's GPT2Backbone has tanh GELU and LayerNorm epsilon 1e-5 only")
    weights = model_weights(model)
    backbone_config = {
        "vocabulary_size": config["vocab_size"], "num_layers": config["num_layers"],
        "num_heads": config["num_heads"], "hidden_dim": config["d_model"],
        "intermediate_dim": config["d_ff"], "dropout": float(config["dropout"]),
        "max_sequence_length": config["max_length"],
    }
    return "GPT2Backbone", backbone_config, {kh: weights[ours] for kh, ours in _keras_hub_names(config["num_layers"])}
