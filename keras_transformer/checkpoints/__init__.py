"""Real checkpoints: load keras-hub presets and Hugging Face directories, and write them back.

    model = DecoderOnlyTransformer.from_preset("path/to/gpt2")   # or checkpoints.load(path)
    model.save_to_preset("out/keras_hub_preset")                  # keras-hub loads it
    model.export_to_transformers("out/hf_checkpoint")             # Hugging Face format

Formats (`formats.detect`): a **keras-hub preset directory** (`config.json` naming a keras-hub
backbone class, `model.weights.h5`, tokenizer assets) and a **Hugging Face directory**
(`config.json` with `model_type`, `model.safetensors` or sharded
`model-0000x-of-0000y.safetensors` + `model.safetensors.index.json`). Both are read without
keras-hub or torch: keras-hub weights straight from the HDF5 file with h5py (keyed by layer
names, see `formats.read_keras_hub_weights`), Hugging Face tensors with `safetensors` (numpy,
memory-mapped, one tensor at a time). Writing a keras-hub preset builds the keras-hub backbone
(keras-hub is what reads the result anyway); writing Hugging Face files needs only safetensors.

Loading builds our model from the checkpoint's config, then assigns converted tensors one at a
time. The model is returned only when every source tensor found its place and every weight of
the model got exactly one tensor of its shape; otherwise a `ValueError` names the file and the
tensor (or config field), and no model is returned.

Converter interface
-------------------
One small module per source architecture (`gpt2.py`, `llama.py`, `bert.py`, `bart.py`),
listed in `_CONVERTER_MODULES` below. A module defines:

    MODEL_CLASS = "DecoderOnlyTransformer"      # our model class name
    HF_MODEL_TYPES = ("gpt2",)                  # Hugging Face `model_type`s it reads
    KERAS_HUB_CLASSES = ("GPT2Backbone",)       # keras-hub backbone class names it reads

    def config_from_hf(hf_config: dict, tensors: formats.SourceTensors) -> dict
        Our constructor kwargs from HF `config.json`. Unsupported settings: ValueError naming
        the field (`formats.unsupported(...)`). `tensors` is there for what only the weights
        say (`name in tensors`, `tensors.shape(name)`: no data is read); reading a tensor
        here does not count as placing it.
    def weights_from_hf(tensors: formats.SourceTensors, config: dict) -> iterable
        Yields `(our weight path, numpy array)` (paths as in `model.weights[i].path`, e.g.
        `"decoder_block_0/self_attention/query/kernel"`), reading `tensors[hf_name]` (a missing
        name raises the ValueError). A generator keeps peak memory at one tensor. Tensors that
        carry nothing (buffers such as GPT-2's `attn.bias`) are passed over with
        `tensors.ignore(regex)`; any other tensor left unread is an "unexpected tensor" error.
    def config_from_keras_hub(backbone_config: dict, tensors: formats.SourceTensors) -> dict
    def weights_from_keras_hub(tensors: formats.SourceTensors, config: dict) -> iterable
        The same for keras-hub presets; tensor names are `formats.read_keras_hub_weights`
        keys, e.g. `"transformer_layer_0/self_attention/query/0"` (layer names, variable index).

    # The way back (optional; without them the writers say the model cannot be written):
    def hf_from_model(model) -> (hf_config: dict, tensors: dict[hf_name, numpy array])
    def keras_hub_from_model(model) -> (backbone_class_name: str, backbone_config: dict,
                                        weights: dict[keras-hub tensor name, numpy array])
        Each raises `formats.NotThisArchitecture(reason)` for a model of its class that its
        architecture cannot hold (e.g. the GPT-2 writer given a Llama-shaped model), so the
        next converter of that class is tried.

`config` is the kwargs dict after the caller's overrides (e.g. `dtype`); read shapes from it.
Helpers shared by converters live in `formats` (`SourceTensors`, `unsupported`, `check`).
"""

import importlib
import os

from keras_transformer.checkpoints import assign, formats

__all__ = [
    "export_to_transformers",
    "formats",
    "load",
    "save_to_preset",
    "supported_hf_model_types",
    "supported_keras_hub_classes",
]

# Converter modules (under keras_transformer.checkpoints), imported on first use.
_CONVERTER_MODULES = ("gpt2", "llama", "bert", "bart")


def _converters():
    found = []
    for name in _CONVERTER_MODULES:
        try:
            found.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":  # a real import error inside the module
                raise
    return found


def supported_hf_model_types():
    """Sorted Hugging Face `model_type`s we load."""
    return sorted(t for module in _converters() for t in module.HF_MODEL_TYPES)


def supported_keras_hub_classes():
    """Sorted keras-hub backbone class names we load."""
    return sorted(c for module in _converters() for c in module.KERAS_HUB_CLASSES)


def converter_for(kind, key, path):
    """The converter module for `key` (an HF model_type when kind == "transformers", a
    keras-hub class name when kind == "keras_hub"); ValueError listing the supported ones."""
    attribute = "HF_MODEL_TYPES" if kind == formats.TRANSFORMERS else "KERAS_HUB_CLASSES"
    for module in _converters():
        if key in getattr(module, attribute):
            return module
    if kind == formats.TRANSFORMERS:
        raise ValueError(
            f"{os.path.join(path, 'config.json')}: unsupported model_type={key!r}. Supported "
            f"model_types: {', '.join(supported_hf_model_types())}."
        )
    raise ValueError(
        f"{os.path.join(path, 'config.json')}: unsupported keras-hub class {key!r}. Supported "
        f"classes: {', '.join(supported_keras_hub_classes())}."
    )


def _model_class(name):
    from keras_transformer import models

    return getattr(models, name)


def load(path, model_class=None, **overrides):
    """Load the checkpoint directory `path` (keras-hub preset or Hugging Face) into our model.

    Args:
        path: a local directory.
        model_class: expected model class (a class or its name); a checkpoint of another
            architecture raises ValueError.
        **overrides: constructor arguments that replace the checkpoint's (e.g. `dtype`,
            `dropout`, `max_length`); ones that change weight shapes fail the shape check.

    Returns:
        The model, every weight from the checkpoint.
    """
    path = os.fspath(path)
    kind, source_config = formats.detect(path)
    if kind == formats.TRANSFORMERS:
        converter = converter_for(kind, source_config.get("model_type"), path)
        tensors = formats.read_hf_tensors(path)
        make_config, convert = converter.config_from_hf, converter.weights_from_hf
    else:
        converter = converter_for(kind, source_config.get("class_name"), path)
        tensors = formats.read_keras_hub_weights(path)
        make_config, convert = converter.config_from_keras_hub, converter.weights_from_keras_hub
        source_config = source_config.get("config", {})
    with tensors:
        return _load(path, converter, make_config, convert, source_config, tensors, model_class, overrides)


def _load(path, converter, make_config, convert, source_config, tensors, model_class, overrides):
    config = make_config(source_config, tensors)
    wanted = getattr(model_class, "__name__", model_class)
    if wanted is not None and wanted != converter.MODEL_CLASS:
        raise ValueError(
            f"{path!r} holds a {converter.MODEL_CLASS} checkpoint, not a {wanted}; load it with "
            f"{converter.MODEL_CLASS}.from_preset(path)."
        )
    config.update(overrides)
    with assign.deferred_variables() as created:
        model = _model_class(converter.MODEL_CLASS)(**config)
    assign.assign_weights(model, convert(tensors, config), tensors, created)
    return model


def _writable(model, function):
    """The converter whose `function` accepts `model` (each converter raises ValueError for a
    model of its class but not its architecture, e.g. GPT-2's for a Llama-shaped model)."""
    errors = []
    for module in _converters():
        if module.MODEL_CLASS != type(model).__name__ or not hasattr(module, function):
            continue
        try:
            return getattr(module, function)(model)
        except formats.NotThisArchitecture as error:
            errors.append(f"{module.__name__.rsplit('.', 1)[-1]}: {error}")
    detail = "; ".join(errors) or "no converter writes this model class"
    target = {"hf_from_model": "Hugging Face", "keras_hub_from_model": "keras-hub"}[function]
    raise ValueError(f"This {type(model).__name__} has no {target} equivalent ({detail}).")


def save_to_preset(model, path):
    """Write `model` as a keras-hub preset directory (atomically); needs keras-hub."""
    backbone_class, backbone_config, weights = _writable(model, "keras_hub_from_model")
    formats.write_keras_hub_preset(path, backbone_class, backbone_config, weights)


def export_to_transformers(model, path, tokenizer=None):
    """Write `model` as a Hugging Face checkpoint directory (config.json, model.safetensors,
    and `tokenizer` (a `tokenizers.Tokenizer`) as tokenizer.json), atomically."""
    hf_config, tensors = _writable(model, "hf_from_model")
    formats.write_hf_checkpoint(path, hf_config, tensors, tokenizer=tokenizer)
