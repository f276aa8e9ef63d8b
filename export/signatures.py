"""What a Keras model takes and returns, in the terms an exported artefact needs.

`model_signature(model)` reads input names, dtypes and shapes (with `None` for every dynamic
dimension) and output names from a functional model, or from an explicit `input_signature` for
subclassed models, building a model that was never called. `axis_names` names dynamic input axes
(`batch`, `sequence`, `encoder_sequence`, `decoder_sequence`), and `serving_function` wraps the
model in a `tf.function` whose inputs are named `TensorSpec`s and whose output is a dict by name.
TensorFlow and Keras are imported only by the functions that need them.
"""

import dataclasses
import warnings

import numpy as np


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One named input or output: `shape` holds ints for fixed dims and axis names for dynamic ones."""

    name: str
    dtype: str
    shape: tuple

    def describe(self):
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclasses.dataclass(frozen=True)
class ModelSignature:
    """Named inputs (`TensorInfo` with `None` for dynamic dims) and output names of a model."""

    inputs: tuple
    output_names: tuple

    @property
    def input_names(self):
        return tuple(spec.name for spec in self.inputs)


def _dtype_name(dtype):
    import keras

    return keras.backend.standardize_dtype(dtype)


def _from_user_signature(input_signature):
    """Accepts `{name: (shape, dtype)}`, or a list of `tf.TensorSpec`/`keras.InputSpec`-like objects."""
    if isinstance(input_signature, dict):
        items = [(name, tuple(shape), dtype) for name, (shape, dtype) in input_signature.items()]
    else:
        items = []
        for spec in input_signature:
            name = getattr(spec, "name", None)
            if not name:
                raise ValueError(
                    "`input_signature` entries must be named; received an entry without a name: "
                    f"{spec!r}. Pass e.g. tf.TensorSpec((None, None), tf.int32, name='token_ids')."
                )
            items.append((name, tuple(spec.shape), spec.dtype))
    return tuple(TensorInfo(name, _dtype_name(dtype), tuple(shape)) for name, shape, dtype in items)


def _output_names(model, probe_outputs=None):
    names = list(getattr(model, "output_names", None) or [])
    if isinstance(probe_outputs, dict):
        return tuple(probe_outputs)
    if probe_outputs is not None:
        count = len(probe_outputs) if isinstance(probe_outputs, (list, tuple)) else 1
        if len(names) != count:
            names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return tuple(names) or ("output",)


def model_signature(model, input_signature=None):
    """The `ModelSignature` of a Keras model.

    Args:
        model: a functional/Sequential `keras.Model`, or any model when `input_signature` is given.
        input_signature: overrides the model's inputs: `{name: (shape, dtype)}` or a list of named
            `tf.TensorSpec`. Required for subclassed models; a model that was never called is
            built by calling it once on ones of that signature.

    Returns:
        A `ModelSignature`; the batch dimension is always dynamic.
    """
    if input_signature is not None:
        inputs = _from_user_signature(input_signature)
    elif getattr(model, "_inputs_struct", None) is not None and getattr(model, "inputs", None):
        inputs = tuple(
            TensorInfo(tensor.name, _dtype_name(tensor.dtype), tuple(tensor.shape))
            for tensor in model.inputs
        )
    else:
        raise ValueError(
            f"Cannot read the inputs of {type(model).__name__!r}: it is not a functional model. "
            "Pass `input_signature`, e.g. {'token_ids': ((None, None), 'int32')}."
        )
    inputs = tuple(
        dataclasses.replace(spec, shape=(None,) + tuple(spec.shape[1:])) for spec in inputs
    )
    probe = None
    if input_signature is not None or not getattr(model, "output_names", None):
        probe = call_model(model, _ones_feeds(inputs))
    return ModelSignature(inputs=inputs, output_names=_output_names(model, probe))


def _ones_feeds(inputs):
    return {
        spec.name: np.ones([1 if d is None else d for d in spec.shape], dtype=spec.dtype)
        for spec in inputs
    }


def call_model(model, feeds):
    """Calls `model` in inference mode with `feeds` (dict by input name), packed as it expects."""
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        args = {name: feeds[name] for name in struct}
    elif isinstance(struct, (list, tuple)):
        args = [feeds[tensor.name] for tensor in model.inputs]
    elif len(feeds) == 1:
        args = next(iter(feeds.values()))
    else:
        args = dict(feeds)
    with warnings.catch_warnings():
        # Length-1 inputs make Keras warn about a softmax over one key; sweeps use them on purpose.
        warnings.filterwarnings("ignore", message=".*softmax over axis.*")
        return model(args, training=False)


def outputs_as_dict(outputs, output_names):
    """Normalises a model's return value (tensor, list or dict) to `{output_name: tensor}`."""
    if isinstance(outputs, dict):
        return dict(outputs)
    if isinstance(outputs, (list, tuple)):
        return dict(zip(output_names, outputs))
    return {output_names[0]: outputs}


def axis_names(signature):
    """`{input_name: [axis name or fixed size, ...]}` for the model's inputs.

    Axis 0 is `batch`. Axis 1 of rank >= 2 inputs is `sequence`, or `encoder_sequence` /
    `decoder_sequence` for inputs whose name starts with `encoder` / `decoder`. Any other
    dynamic axis is `<input>_dim<i>`.
    """
    names = {}
    for spec in signature.inputs:
        dims = []
        for i, dim in enumerate(spec.shape):
            if dim is not None:
                dims.append(int(dim))
            elif i == 0:
                dims.append("batch")
            elif i == 1:
                prefix = next((p for p in ("encoder", "decoder") if spec.name.startswith(p)), None)
                dims.append(f"{prefix}_sequence" if prefix else "sequence")
            else:
                dims.append(f"{spec.name}_dim{i}")
        names[spec.name] = dims
    return names


def tensor_specs(signature):
    """Named `tf.TensorSpec`s (dynamic dims `None`) in input order."""
    import tensorflow as tf

    return [tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in signature.inputs]


def serving_function(model, signature):
    """A `tf.function` taking the named inputs as keyword arguments and returning a dict by output name."""
    import tensorflow as tf

    names = signature.input_names

    def serve(*args):
        outputs = call_model(model, dict(zip(names, args)))
        return outputs_as_dict(outputs, signature.output_names)

    return tf.function(serve, input_signature=tensor_specs(signature), autograph=False)


def model_limits(model):
    """`(vocab_size, max_length)` that every input of `model` accepts, read from its layers.

    `vocab_size` is the smallest embedding table (token ids must be valid everywhere); it is None
    when the model has no embedding. `max_length` is the smallest learned position table, or the
    model's own `max_length` attribute; None when positions are unbounded (sinusoidal).
    """
    vocab_sizes, max_lengths = [], []
    layers = model._flatten_layers(include_self=True, recursive=True)
    for layer in layers:
        if layer is getattr(model, "segment_embedding", None):
            continue  # segment ids have their own range (`input_value_ranges`), not the vocabulary's
        size = getattr(layer, "input_dim", None) if type(layer).__name__ == "Embedding" else None
        size = size or getattr(layer, "vocab_size", None)
        if isinstance(size, int) and size > 0:
            vocab_sizes.append(size)
        learned = getattr(layer, "mode", None) == "learned" or getattr(layer, "positional", None) == "learned"
        length = getattr(layer, "max_length", None)
        if isinstance(length, int) and length > 0 and (learned or layer is model):
            max_lengths.append(length)
    return (min(vocab_sizes) if vocab_sizes else None, min(max_lengths) if max_lengths else None)


def output_axis_names(model, signature, max_length=None, forward=None):
    """`{output_name: [axis name or fixed size, ...]}`, found by running the model at two sizes.

    `forward(feeds) -> {output_name: array}` runs the model (default: an eager call); pass the
    compiled one a caller already has (`export.validate.keras_reference`). When `forward` has
    `output_shapes(feeds) -> {output_name: shape}` (JAX: `jax.eval_shape`), the probes only trace:
    two XLA compiles of probe shapes the sweep never uses are saved.

    Every named input axis gets a distinct pair of sizes in two probe calls; an output dimension
    whose pair matches an input axis's pair inherits that axis's name, one that is equal in both
    calls is fixed, anything else is named `<output>_dim<i>`.
    """
    inputs_axes = axis_names(signature)
    names = sorted({a for dims in inputs_axes.values() for a in dims if isinstance(a, str)} - {"batch"})
    sizes = {"batch": (2, 3)}
    # Distinct (first, second) size pairs per axis, within the model's length limit.
    cap = max(2, min(max_length or 16, 16))
    pairs = ((a, b) for a in range(cap, 0, -1) for b in range(cap, 0, -1) if a != b and (a, b) != (2, 3))
    for name in names:
        sizes[name] = next(pairs)
    probes = []
    for which in (0, 1):
        feeds = {}
        for spec in signature.inputs:
            shape = [sizes[d][which] if isinstance(d, str) else d for d in inputs_axes[spec.name]]
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        if forward is None:
            outputs = outputs_as_dict(call_model(model, feeds), signature.output_names)
        elif hasattr(forward, "output_shapes"):
            outputs = forward.output_shapes(feeds)
        else:
            outputs = forward(feeds)
        probes.append({k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in outputs.items()})
    by_pair = {pair: name for name, pair in sizes.items()}
    result = {}
    for output, shape_a in probes[0].items():
        dims = []
        for i, (a, b) in enumerate(zip(shape_a, probes[1][output])):
            dims.append(int(a) if a == b else by_pair.get((a, b), f"{output}_dim{i}"))
        result[output] = dims
    return result
