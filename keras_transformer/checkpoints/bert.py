"""BERT <-> `EncoderOnlyTransformer` (segments, embedding LayerNorm, post-norm, pooler, MLM head).

Hugging Face names (`bert.` prefix optional): `embeddings.{word,position,token_type}_embeddings`,
`embeddings.LayerNorm`, `encoder.layer.{i}.attention.self.{query,key,value}`,
`encoder.layer.{i}.attention.output.{dense,LayerNorm}`, `encoder.layer.{i}.intermediate.dense`,
`encoder.layer.{i}.output.{dense,LayerNorm}`, `pooler.dense`; heads: `cls.predictions.*`
(BertForMaskedLM), `classifier` (BertForSequenceClassification). Old files name LayerNorm
weights `gamma`/`beta`; both spellings are read.

The head follows the checkpoint: `BertForSequenceClassification` -> `head="classification"`
through the pooler; a checkpoint with `cls.predictions` (BertForMaskedLM, BertForPreTraining,
bert-base-uncased itself) -> `head="masked_lm"` with the output bias; otherwise the encoder with
its pooler (`{"hidden_states", "pooled_output"}`). Pass `head=None, mlm_output_bias=False`
(and `pooler=True` when the file has one) to `from_preset` to load just the encoder of an MLM
checkpoint. Tensors of parts the chosen model
does not have are passed over by name: the next-sentence head `cls.seq_relationship`, the
pooler of a masked-LM model, `cls.predictions` of an encoder; any other tensor is an error.

keras-hub: `BertBackbone` (tanh GELU, LayerNorm epsilon 1e-12, pooler), names in
`_keras_hub_names`, kernels already in our layout. Segment ids are the `segment_ids` input;
padding is `pad_id` (0, BERT's [PAD]).
"""

from keras_transformer.checkpoints.common import (
    HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, SAME, check_tied, keras_hub_block_names, require_options, to_hf, to_keras,
)
from keras_transformer.checkpoints.formats import NotThisArchitecture, field, model_weights, unsupported

MODEL_CLASS = "EncoderOnlyTransformer"
HF_MODEL_TYPES = ("bert",)
KERAS_HUB_CLASSES = ("BertBackbone",)

# HF hidden_act -> ours (gelu_new / gelu_pytorch_tanh / gelu_fast are the tanh form).
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate",
                "gelu_fast": "gelu_approximate", "relu": "relu"}
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_approximate": "gelu_new", "relu": "relu"}


def _config(vocab_size, num_layers, d_model, num_heads, d_ff, max_length, num_segments, dropout,
            activation, layer_norm_epsilon, pad_id=0, head=None, pooler=True, num_classes=None):
    return dict(
        vocab_size=vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=d_ff,
        dropout=dropout, max_length=max_length, positional="learned", norm_first=False,
        activation=activation, head=head, num_classes=num_classes, pad_id=pad_id,
        scale_embeddings=False, layer_norm_epsilon=layer_norm_epsilon, num_segments=num_segments,
        embedding_norm=True, pooler=pooler, mlm_output_bias=head == "masked_lm",
    )


def _prefix(tensors):
    return "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""


def config_from_hf(hf_config, tensors):
    where = "config.json"
    activation = hf_config.get("hidden_act", "gelu")
    if activation not in _ACTIVATIONS:
        raise unsupported(where, "hidden_act", activation, f"supported: {sorted(_ACTIVATIONS)}")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise unsupported(where, "position_embedding_type", hf_config["position_embedding_type"],
                          "BERT's learned absolute positions only")
    for name in ("is_decoder", "add_cross_attention"):
        if hf_config.get(name):
            raise unsupported(where, name, hf_config[name], "an encoder only")
    p = _prefix(tensors)
    head, pooler, num_classes = None, f"{p}pooler.dense.weight" in tensors, None
    if "BertForSequenceClassification" in (hf_config.get("architectures") or []):
        head, pooler, num_classes = "classification", True, tensors.shape("classifier.weight")[0]
    elif "cls.predictions.bias" in tensors:
        head, pooler = "masked_lm", False
    vocab_size = field(hf_config, "vocab_size")
    pad = hf_config.get("pad_token_id", 0)
    return _config(
        vocab_size, field(hf_config, "num_hidden_layers"), field(hf_config, "hidden_size"),
        field(hf_config, "num_attention_heads"), field(hf_config, "intermediate_size"),
        field(hf_config, "max_position_embeddings"), hf_config.get("type_vocab_size", 2),
        float(hf_config.get("hidden_dropout_prob", 0.1)), _ACTIVATIONS[activation],
        float(hf_config.get("layer_norm_eps", 1e-12)),
        pad if isinstance(pad, int) and 0 <= pad < vocab_size else 0, head, pooler, num_classes,
    )


def _hf_names(config, p="", norm=("weight", "bias")):
    """(HF tensor name, our weight path, layout) triples: the whole HF name map of `config`."""
    gamma, beta = norm
    names = [(f"{p}embeddings.word_embeddings.weight", "token_embedding/token_embedding/embeddings", SAME),
             (f"{p}embeddings.position_embeddings.weight", "token_embedding/position_encoding/position_embeddings", SAME),
             (f"{p}embeddings.token_type_embeddings.weight", "segment_embedding/embeddings", SAME),
             (f"{p}embeddings.LayerNorm.{gamma}", "embedding_norm/gamma", SAME),
             (f"{p}embeddings.LayerNorm.{beta}", "embedding_norm/beta", SAME)]
    for i in range(config["num_layers"]):
        h, ours = f"{p}encoder.layer.{i}.", f"encoder_block_{i}/"
        for hf_name, name in (("query", "query"), ("key", "key"), ("value", "value")):
            names += [(f"{h}attention.self.{hf_name}.weight", f"{ours}self_attention/{name}/kernel", HEADS_IN),
                      (f"{h}attention.self.{hf_name}.bias", f"{ours}self_attention/{name}/bias", HEADS_BIAS)]
        names += [(f"{h}attention.output.dense.weight", f"{ours}self_attention/attention_output/kernel", HEADS_OUT),
                  (f"{h}attention.output.dense.bias", f"{ours}self_attention/attention_output/bias", SAME),
                  (f"{h}attention.output.LayerNorm.{gamma}", f"{ours}self_attention_norm/gamma", SAME),
                  (f"{h}attention.output.LayerNorm.{beta}", f"{ours}self_attention_norm/beta", SAME),
                  (f"{h}intermediate.dense.weight", f"{ours}feed_forward/intermediate_dense/kernel", LINEAR),
                  (f"{h}intermediate.dense.bias", f"{ours}feed_forward/intermediate_dense/bias", SAME),
                  (f"{h}output.dense.weight", f"{ours}feed_forward/output_dense/kernel", LINEAR),
                  (f"{h}output.dense.bias", f"{ours}feed_forward/output_dense/bias", SAME),
                  (f"{h}output.LayerNorm.{gamma}", f"{ours}feed_forward_norm/gamma", SAME),
                  (f"{h}output.LayerNorm.{beta}", f"{ours}feed_forward_norm/beta", SAME)]
    if config["pooler"]:
        names += [(f"{p}pooler.dense.weight", "pooler/kernel", LINEAR), (f"{p}pooler.dense.bias", "pooler/bias", SAME)]
    if config["head"] == "masked_lm":
        names += [("cls.predictions.transform.dense.weight", "mlm_transform/kernel", LINEAR),
                  ("cls.predictions.transform.dense.bias", "mlm_transform/bias", SAME),
                  (f"cls.predictions.transform.LayerNorm.{gamma}", "mlm_norm/gamma", SAME),
                  (f"cls.predictions.transform.LayerNorm.{beta}", "mlm_norm/beta", SAME),
                  ("cls.predictions.bias", "mlm_output_bias/bias", SAME)]
    elif config["head"] == "classification":
        names += [("classifier.weight", "classifier/kernel", LINEAR), ("classifier.bias", "classifier/bias", SAME)]
    return names


def weights_from_hf(tensors, config):
    p = _prefix(tensors)
    if config["head"] not in (None, "masked_lm", "classification"):
        raise ValueError(f"{tensors.path}: BERT checkpoints load with head None, 'masked_lm' or "
                         f"'classification'; received head={config['head']!r}.")
    tensors.ignore(rf"{p}embeddings\.position_ids|cls\.seq_relationship\..*")  # a buffer; the NSP head
    if config["head"] != "masked_lm":
        tensors.ignore(r"cls\.predictions\..*")
    if not config["pooler"]:
        tensors.ignore(rf"{p}pooler\..*")
    norm = ("weight", "bias") if f"{p}embeddings.LayerNorm.weight" in tensors else ("gamma", "beta")
    for hf_name, our_path, layout in _hf_names(config, p, norm):
        yield our_path, to_keras(tensors, hf_name, layout, config["num_heads"])
    if config["head"] == "masked_lm":  # the tied decoder, saved again by some writers
        check_tied(tensors, "cls.predictions.decoder.weight", tensors[f"{p}embeddings.word_embeddings.weight"],
                   "the word embeddings")
        check_tied(tensors, "cls.predictions.decoder.bias", tensors["cls.predictions.bias"], "cls.predictions.bias")


def config_from_keras_hub(config, tensors=None):
    return _config(
        *(field(config, name, "config.json (keras-hub)") for name in (
            "vocabulary_size", "num_layers", "hidden_dim", "num_heads", "intermediate_dim", "max_sequence_length")),
        config.get("num_segments", 2), float(config.get("dropout", 0.1)), "gelu_approximate", 1e-12,
    )


def _keras_hub_names(num_layers):
    """(keras-hub tensor name, our weight path) pairs: the whole keras-hub name map."""
    names = [("token_embedding/0", "token_embedding/token_embedding/embeddings"),
             ("position_embedding/0", "token_embedding/position_encoding/position_embeddings"),
             ("segment_embedding/0", "segment_embedding/embeddings"),
             ("embeddings_layer_norm/0", "embedding_norm/gamma"), ("embeddings_layer_norm/1", "embedding_norm/beta"),
             ("pooled_dense/0", "pooler/kernel"), ("pooled_dense/1", "pooler/bias")]
    for i in range(num_layers):
        names += keras_hub_block_names(f"transformer_layer_{i}/", f"encoder_block_{i}/", "self_attention_layer")
    return names


def weights_from_keras_hub(tensors, config):
    for kh_name, our_path in _keras_hub_names(config["num_layers"]):
        yield our_path, tensors[kh_name]


# -- the way back ----------------------------------------------------------------------------


def _check_bert(model):
    """Our config, or NotThisArchitecture naming the option BERT lacks."""
    config = require_options(model, "BERT", dict(
        positional="learned", norm_first=False, normalization="layer_norm", use_bias=True, gated_feed_forward=False,
        scale_embeddings=False, embedding_norm=True), _HF_ACTIVATIONS)
    if not config.get("num_segments"):
        raise NotThisArchitecture("BERT has segment embeddings (num_segments)")
    return config


def hf_from_model(model):
    config = _check_bert(model)
    head = config["head"]
    if head not in (None, "masked_lm", "classification"):
        raise NotThisArchitecture(f"no Hugging Face BERT class has head={head!r} here")
    architecture = {None: "BertModel", "masked_lm": "BertForMaskedLM",
                    "classification": "BertForSequenceClassification"}[head]
    if head == "masked_lm" and not config["mlm_output_bias"]:
        raise NotThisArchitecture("BERT's masked-LM head has an output bias (mlm_output_bias=True)")
    dropout = float(config["dropout"])
    hf_config = {
        "model_type": "bert", "architectures": [architecture], "vocab_size": config["vocab_size"],
        "hidden_size": config["d_model"], "num_hidden_layers": config["num_layers"],
        "num_attention_heads": config["num_heads"], "intermediate_size": config["d_ff"],
        "hidden_act": _HF_ACTIVATIONS[config["activation"]], "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout, "max_position_embeddings": config["max_length"],
        "type_vocab_size": config["num_segments"], "layer_norm_eps": config["layer_norm_epsilon"],
        "pad_token_id": config["pad_id"], "position_embedding_type": "absolute",
        "initializer_range": 0.02, "torch_dtype": "float32",
    }
    if head == "classification":
        hf_config["num_labels"] = config["num_classes"]
    p = "" if head is None else "bert."
    weights = model_weights(model)
    return hf_config, {hf: to_hf(weights[ours], layout) for hf, ours, layout in _hf_names(config, p)}


def keras_hub_from_model(model):
    config = _check_bert(model)
    if config["head"] is not None or not config["pooler"]:
        raise NotThisArchitecture("keras-hub's BertBackbone is the encoder with its pooler (head=None, pooler=True)")
    if config["activation"] != "gelu_approximate" or config["layer_norm_epsilon"] != 1e-12:
        raise NotThisArchitecture("keras-hub's BertBackbone has tanh GELU and LayerNorm epsilon 1e-12 only")
    backbone_config = {
        "vocabulary_size": config["vocab_size"], "num_layers": config["num_layers"],
        "num_heads": config["num_heads"], "hidden_dim": config["d_model"], "intermediate_dim": config["d_ff"],
        "dropout": float(config["dropout"]), "max_sequence_length": config["max_length"],
        "num_segments": config["num_segments"],
    }
    weights = model_weights(model)
    return "BertBackbone", backbone_config, {kh: weights[ours] for kh, ours in _keras_hub_names(config["num_layers"])}
