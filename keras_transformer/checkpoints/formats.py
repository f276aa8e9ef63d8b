"""Checkpoint directories on disk: detect the format, read tensors, assign them, write them.

keras-hub preset directory: `config.json` is a serialized keras-hub backbone
(`{"module": "keras_hub.src.models...", "class_name": "GPT2Backbone", "config": {...}}`),
`model.weights.h5` holds its weights in Keras's HDF5 layout (a group per layer, a `vars` group
per layer whose `name` attribute is the layer's name, datasets `0, 1, ...` in the order of the
layer's variables). `read_keras_hub_weights` names each dataset by the layer names on its path
and its index, e.g. `"transformer_layer_0/self_attention/query/0"`, which does not depend on
keras-hub being installed, nor on Keras's auto-numbered group names.

Hugging Face directory: `config.json` with `model_type`, weights in `model.safetensors` or in
shards listed by `model.safetensors.index.json` (`weight_map`: tensor name -> file). Read with
`safetensors.safe_open(framework="numpy")`: the file is memory-mapped and each tensor is copied
out only when a converter reads it (bfloat16 comes back as `ml_dtypes.bfloat16`).
"""

import json
import os
import re

import numpy as np

__all__ = [
    "KERAS_HUB",
    "NotThisArchitecture",
    "SourceTensors",
    "TRANSFORMERS",
    "check",
    "detect",
    "field",
    "read_hf_tensors",
    "read_json",
    "read_keras_hub_weights",
    "unsupported",
    "write_hf_checkpoint",
    "write_keras_hub_preset",
]

TRANSFORMERS = "transformers"
KERAS_HUB = "keras_hub"

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
KERAS_HUB_WEIGHTS = "model.weights.h5"


class NotThisArchitecture(ValueError):
    """A writer's model is of the converter's class but not of its architecture."""


def unsupported(path, field, value, reason):
    """A ValueError for a config field we cannot honour: names the file, field and value."""
    return ValueError(f"{path}: {field}={value!r} is not supported ({reason}).")


def field(config, name, where="config.json"):
    """`config[name]`, or a ValueError naming the missing field."""
    if name not in config or config[name] is None:
        raise ValueError(f"{where}: the required field {name!r} is missing.")
    return config[name]


def check(condition, message):
    """Raise ValueError(message) unless `condition`."""
    if not condition:
        raise ValueError(message)


# -- detection -------------------------------------------------------------------------------


def read_json(path):
    """A parsed JSON file; ValueError naming the file when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({type(error).__name__}: {error}).") from None


def is_keras_hub_config(config):
    """Whether a parsed config.json is a serialized keras-hub object."""
    return isinstance(config, dict) and "class_name" in config and (
        str(config.get("module", "")).startswith("keras_hub")
        or str(config.get("registered_name", "")).startswith("keras_hub>")
    )


def detect(path):
    """`(TRANSFORMERS or KERAS_HUB, parsed config.json)` for a checkpoint directory.

    Raises:
        ValueError: not a directory, no config.json, or a config.json / weight files that are
            neither format (the message says what was found).
    """
    if not os.path.isdir(path):
        raise ValueError(
            f"No checkpoint directory at {path!r} (from_preset takes one of our preset names or a "
            "local keras-hub preset / Hugging Face checkpoint directory; nothing is downloaded)."
        )
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{path!r} has no config.json, so it is neither a keras-hub preset nor a "
                         "Hugging Face checkpoint directory.")
    config = read_json(config_path)
    if is_keras_hub_config(config):
        if not os.path.isfile(os.path.join(path, KERAS_HUB_WEIGHTS)):
            raise ValueError(f"{path!r} is a keras-hub preset without {KERAS_HUB_WEIGHTS}.")
        return KERAS_HUB, config
    if isinstance(config, dict) and "model_type" in config:
        if not (os.path.isfile(os.path.join(path, HF_WEIGHTS)) or os.path.isfile(os.path.join(path, HF_INDEX))):
            others = [n for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
                      if os.path.exists(os.path.join(path, n))]
            hint = f" (found {', '.join(others)}: only safetensors weights are read)" if others else ""
            raise ValueError(f"{path!r} is a Hugging Face directory without {HF_WEIGHTS} or {HF_INDEX}{hint}.")
        return TRANSFORMERS, config
    raise ValueError(
        f"{config_path}: neither a keras-hub preset config (with a keras-hub `class_name`) nor a "
        "Hugging Face config (with `model_type`)."
    )


# -- reading tensors -------------------------------------------------------------------------


class SourceTensors:
    """The tensors of a checkpoint by name, read lazily; remembers which were read.

    `tensors[name]` returns a numpy array (ValueError naming the file when missing);
    `tensors.shape(name)` reads no data; `tensors.ignore(regex)` marks tensors that carry
    nothing (buffers); `unused()` lists the others nobody read. Use as a context manager.
    """

    def __init__(self, names, path):
        self.path = path
        self._names = dict(names)  # name -> file it lives in
        self._used = set()
        self._ignored = set()
        self.recent = []  # names read since the caller last cleared it (for error messages)

    def __contains__(self, name):
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def keys(self):
        return list(self._names)

    def file_of(self, name):
        return self._names[name]

    def describe(self, name):
        return f"tensor {name!r} of {self._names.get(name, self.path)}"

    def _missing(self, name):
        return ValueError(f"{self.path}: the checkpoint has no tensor {name!r}.")

    def __getitem__(self, name):
        if name not in self._names:
            raise self._missing(name)
        self._used.add(name)
        self.recent.append(name)
        return self._read(name)

    def get(self, name, default=None):
        return self[name] if name in self._names else default

    def shape(self, name):
        if name not in self._names:
            raise self._missing(name)
        return self._shape(name)

    def ignore(self, pattern):
        """Mark every tensor whose name fully matches `pattern` as read (buffers that hold no
        weights, e.g. GPT-2's causal-mask `attn.bias`)."""
        regex = re.compile(pattern)
        self._ignored.update(n for n in self._names if regex.fullmatch(n))

    def unused(self):
        return sorted(n for n in self._names if n not in self._used and n not in self._ignored)

    def _read(self, name):  # pragma: no cover - subclasses
        raise NotImplementedError

    def _shape(self, name):  # pragma: no cover - subclasses
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _SafetensorsTensors(SourceTensors):
    def __init__(self, names, path, handles):
        super().__init__(names, path)
        self._handles = handles  # file -> safe_open handle

    def _read(self, name):
        file = self._names[name]
        try:
            return self._handles[file].get_tensor(name)
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"{file}: tensor {name!r} cannot be read ({type(error).__name__}: {error}).") from None

    def _shape(self, name):
        return tuple(self._handles[self._names[name]].get_slice(name).get_shape())

    def close(self):
        self._handles.clear()  # safe_open handles unmap when released


def _open_safetensors(file):
    from safetensors import safe_open

    if not os.path.isfile(file):
        raise ValueError(f"{file}: missing (listed by the checkpoint).")
    try:
        return safe_open(file, framework="numpy")
    except Exception as error:
        raise ValueError(
            f"{file}: not a valid safetensors file (corrupt or truncated: {type(error).__name__}: {error})."
        ) from None


def _check_safetensors_size(file):
    """safetensors checks the header; a truncated data section is caught here (the header's
    last offset must be the file's data length)."""
    with open(file, "rb") as raw:
        header_length = int.from_bytes(raw.read(8), "little")
        header = json.loads(raw.read(header_length))
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    actual = os.path.getsize(file) - 8 - header_length
    if actual < end:
        raise ValueError(f"{file}: truncated safetensors file (data section has {actual} bytes, the header "
                         f"lists {end}).")


def read_hf_tensors(path):
    """`SourceTensors` over `model.safetensors` or the shards listed in the index."""
    index_path = os.path.join(path, HF_INDEX)
    if os.path.isfile(index_path):
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path}: no `weight_map` of tensor names to files.")
        names = {name: os.path.join(path, file) for name, file in weight_map.items()}
    else:
        names = None
    files = sorted(set(names.values())) if names else [os.path.join(path, HF_WEIGHTS)]
    handles = {}
    found = {}
    for file in files:
        handle = _open_safetensors(file)
        _check_safetensors_size(file)
        handles[file] = handle
        for name in handle.keys():
            if name in found:
                raise ValueError(f"{file}: tensor {name!r} also appears in {found[name]}.")
            found[name] = file
    if names is not None:
        for name, file in names.items():
            if found.get(name) != file:
                raise ValueError(f"{index_path}: lists tensor {name!r} in {os.path.basename(file)}, "
                                 "which does not hold it.")
        extra = sorted(set(found) - set(names))
        if extra:
            raise ValueError(f"{index_path}: tensors {extra[:5]} are in the shards but not in the index.")
    return _SafetensorsTensors(found, path, handles)


class _H5Tensors(SourceTensors):
    def __init__(self, names, path, file, datasets):
        super().__init__(names, path)
        self._file = file
        self._datasets = datasets  # name -> h5py dataset

    def _read(self, name):
        try:
            return self._datasets[name][()]
        except Exception as error:
            raise ValueError(f"{self._names[name]}: {name!r} cannot be read ({type(error).__name__}: {error}).") from None

    def _shape(self, name):
        return tuple(self._datasets[name].shape)

    def close(self):
        self._file.close()


def keras_weight_names(group, prefix=""):
    """`{name: h5py dataset}` for a Keras `.weights.h5` group, names built from layer names."""
    found = {}
    for key in group:
        child = group[key]
        if key == "vars":
            for index in child:
                found[f"{prefix}{index}"] = child[index]
        elif key == "layers":
            found.update(keras_weight_names(child, prefix))
        elif hasattr(child, "keys"):
            layer_name = key
            if "vars" in child and "name" in child["vars"].attrs:
                layer_name = child["vars"].attrs["name"]
                layer_name = layer_name.decode() if isinstance(layer_name, bytes) else str(layer_name)
            found.update(keras_weight_names(child, f"{prefix}{layer_name}/"))
    return found


def read_keras_hub_weights(path, filename=KERAS_HUB_WEIGHTS):
    """`SourceTensors` over a keras-hub preset's weights file (`model.weights.h5`, or
    `task.weights.h5` for task heads), named as described in the module docstring."""
    import h5py

    file = os.path.join(path, filename)
    if not os.path.isfile(file):
        raise ValueError(f"{path!r}: no {filename}.")
    try:
        handle = h5py.File(file, "r")
        datasets = keras_weight_names(handle)
    except Exception as error:
        raise ValueError(f"{file}: not a readable Keras weights file (corrupt or truncated: "
                         f"{type(error).__name__}: {error}).") from None
    return _H5Tensors({name: file for name in datasets}, path, handle, datasets)


# -- assigning -------------------------------------------------------------------------------


def model_weights(model):
    """`{weight path: numpy array}` of `model` (LoRA merged into the kernels)."""
    weights = {variable.path: np.asarray(variable) for variable in model.weights
               if "lora_kernel" not in variable.path}
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            kernel = layer.kernel  # Keras's property merges the adapters
            weights[layer._kernel.path] = np.asarray(kernel)
    return weights


# -- writing ---------------------------------------------------------------------------------


def write_hf_checkpoint(path, hf_config, tensors, tokenizer=None):
    """config.json + model.safetensors (+ tokenizer.json), atomically."""
    from safetensors.numpy import save_file

    from keras_transformer.saving import atomic_directory

    with atomic_directory(path) as staging:
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(hf_config, handle, indent=2, sort_keys=True)
        arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
        save_file(arrays, os.path.join(staging, HF_WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(os.path.join(staging, "tokenizer.json"))


def write_keras_hub_preset(path, backbone_class, backbone_config, weights):
    """A keras-hub preset directory: keras-hub builds the backbone and writes its own layout
    (config.json, metadata.json, model.weights.h5); our tensors then overwrite every dataset
    of the weights file by name, so the file is exactly what keras-hub writes."""
    import h5py

    try:
        import keras_hub
    except ImportError as error:
        raise ImportError("Writing a keras-hub preset needs keras-hub (`pip install keras-hub`).") from error
    from keras_transformer.saving import atomic_directory

    backbone = getattr(keras_hub.models, backbone_class).from_config(backbone_config)
    with atomic_directory(path) as staging:
        backbone.save_to_preset(staging)
        del backbone
        file = os.path.join(staging, KERAS_HUB_WEIGHTS)
        with h5py.File(file, "r+") as handle:
            datasets = keras_weight_names(handle)
            missing = sorted(set(datasets) - set(weights))
            extra = sorted(set(weights) - set(datasets))
            if missing or extra:
                raise ValueError(f"{backbone_class}: weights do not match its layout (missing {missing[:5]}, "
                                 f"unexpected {extra[:5]}).")
            for name, dataset in datasets.items():
                array = np.asarray(weights[name])
                if tuple(array.shape) != tuple(dataset.shape):
                    raise ValueError(f"{backbone_class}: {name!r} has shape {tuple(dataset.shape)}, "
                                     f"our weight {tuple(array.shape)}.")
                dataset[...] = array.astype(dataset.dtype, copy=False)
