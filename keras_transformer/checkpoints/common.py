"""What the converters share: tensor layouts, keras-hub transformer-layer names, option checks.

Layouts of PyTorch (Hugging Face) `nn.Linear` weights against our Keras weights; a converter's
Hugging Face name map says, for each tensor, which of these it has:

* `SAME`: identical arrays (embeddings, LayerNorm weights, Linear biases of Dense layers);
* `LINEAR`: `(out, in)` Linear weight <-> Keras `Dense` kernel `(in, out)`;
* `HEADS_IN`: query/key/value Linear weight `(heads * head_dim, d)` <-> `EinsumDense` kernel
  `(d, heads, head_dim)`;
* `HEADS_BIAS`: their bias `(heads * head_dim,)` <-> `(heads, head_dim)`;
* `HEADS_OUT`: attention output Linear weight `(d, heads * head_dim)` <-> `(heads, head_dim, d)`.

`to_keras` checks what it can without the model (rank, a head count that divides the width);
`assign.assign_weights` then checks every result against the model's own shape.
"""

import numpy as np

from keras_transformer.checkpoints.formats import NotThisArchitecture, check

SAME, LINEAR, HEADS_IN, HEADS_BIAS, HEADS_OUT = "same", "linear", "heads_in", "heads_bias", "heads_out"

_RANKS = {LINEAR: 2, HEADS_IN: 2, HEADS_BIAS: 1, HEADS_OUT: 2}


def to_keras(tensors, name, layout, heads=None):
    """`tensors[name]` in our layout; ValueError naming the tensor when it cannot be."""
    array = tensors[name]
    if layout == SAME:
        return array
    check(array.ndim == _RANKS[layout],
          f"{tensors.describe(name)}: shape {array.shape}, expected rank {_RANKS[layout]}.")
    if layout == LINEAR:
        return np.ascontiguousarray(array.T)
    width = array.shape[0] if layout in (HEADS_IN, HEADS_BIAS) else array.shape[1]
    check(width % heads == 0, f"{tensors.describe(name)}: shape {array.shape} does not split into "
                              f"{heads} heads (the config contradicts the weights).")
    if layout == HEADS_BIAS:
        return array.reshape(heads, width // heads)
    if layout == HEADS_IN:
        return np.ascontiguousarray(array.T).reshape(array.shape[1], heads, width // heads)
    return np.ascontiguousarray(array.T).reshape(heads, width // heads, array.shape[0])


def to_hf(array, layout):
    """Our weight `array` in the Hugging Face layout (the inverse of `to_keras`)."""
    array = np.asarray(array)
    if layout == SAME:
        return array
    if layout == LINEAR:
        return np.ascontiguousarray(array.T)
    if layout == HEADS_BIAS:
        return array.reshape(-1)
    if layout == HEADS_IN:
        return np.ascontiguousarray(array.reshape(array.shape[0], -1).T)
    return np.ascontiguousarray(array.reshape(-1, array.shape[-1]).T)


def check_tied(tensors, name, reference, what):
    """A tensor that a tied checkpoint may save again (e.g. an output projection equal to the
    token embedding): read it (so it counts as placed) and require it to equal `reference`."""
    if name in tensors:
        check(np.array_equal(tensors[name], reference),
              f"{tensors.describe(name)} differs from {what}, but the architecture ties them.")


def keras_hub_block_names(kh, ours, self_attention="self_attention", cross_attention=None):
    """(keras-hub tensor name, our weight path) pairs of one keras-hub `TransformerEncoder` /
    `TransformerDecoder` layer (`kh`, e.g. `"transformer_layer_0/"`) and our block (`ours`).
    `self_attention` is the keras-hub name of its self-attention (the encoder's is
    `"self_attention_layer"`); `cross_attention` that of a decoder's cross-attention."""
    attentions = [(self_attention, "self_attention")]
    norms = [("self_attention_layer_norm", "self_attention_norm"), ("feedforward_layer_norm", "feed_forward_norm")]
    if cross_attention:
        attentions.append((cross_attention, "cross_attention"))
        norms.append(("cross_attention_layer_norm", "cross_attention_norm"))
    names = []
    for kh_attention, our_attention in attentions:
        for name in ("query", "key", "value", "attention_output"):
            names += [(f"{kh}{kh_attention}/{name}/0", f"{ours}{our_attention}/{name}/kernel"),
                      (f"{kh}{kh_attention}/{name}/1", f"{ours}{our_attention}/{name}/bias")]
    for kh_norm, our_norm in norms:
        names += [(f"{kh}{kh_norm}/0", f"{ours}{our_norm}/gamma"), (f"{kh}{kh_norm}/1", f"{ours}{our_norm}/beta")]
    for kh_dense, our_dense in (("feedforward_intermediate_dense", "intermediate_dense"),
                                ("feedforward_output_dense", "output_dense")):
        names += [(f"{kh}{kh_dense}/0", f"{ours}feed_forward/{our_dense}/kernel"),
                  (f"{kh}{kh_dense}/1", f"{ours}feed_forward/{our_dense}/bias")]
    return names


def require_options(model, architecture, wanted, activations):
    """`model`'s config, or NotThisArchitecture naming the first of the `wanted` options (and
    plain biased multi-head attention, an activation in `activations`) that it lacks."""
    config = model.get_config()
    for name, value in wanted.items():
        if config.get(name) != value:
            raise NotThisArchitecture(f"{architecture} needs {name}={value!r}, the model has {config.get(name)!r}")
    if config.get("num_key_value_heads") not in (None, config["num_heads"]) or config.get("qkv_bias") is not None:
        raise NotThisArchitecture(f"{architecture} has plain multi-head attention with biases")
    if config["activation"] not in activations:
        raise NotThisArchitecture(f"{architecture} has no activation {config['activation']!r}")
    return config
