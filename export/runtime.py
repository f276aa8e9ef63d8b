"""OnnxModel: run an exported model with numpy and onnxruntime only (no TensorFlow, no Keras).

Example:
>>> from export.runtime import OnnxModel
>>> model = OnnxModel("out/model.onnx")  # doctest: +SKIP
>>> model({"token_ids": ids})["logits"].shape  # doctest: +SKIP
(2, 7, 50)

`export.runtime.generate` (text generation with the native KV-cache graphs, `export.decoding`)
is importable from here too, also without TensorFlow.
"""

import json
import logging
import os

import numpy as np
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_errors

logger = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}
_OPTIMIZATION_LEVELS = {
    "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def resolve_providers(providers="auto"):
    """`"auto"` -> CUDA then CPU when onnxruntime-gpu sees a GPU, else CPU; a list passes through."""
    if providers != "auto":
        return [providers] if isinstance(providers, str) else list(providers)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An exported ONNX model behind a numpy interface.

    Calls are thread-safe: the object holds no mutable state after construction and
    `InferenceSession.run` may be called from many threads at once.

    Args:
        path: the `.onnx` file (with `model.onnx.data` beside it for large models).
        providers: "auto" (CUDA when available, else CPU) or a list of onnxruntime providers.
        intra_op_num_threads: threads inside one operator (0 = onnxruntime's default).
        inter_op_num_threads: threads across operators (0 = default).
        graph_optimization_level: "disable", "basic", "extended" or "all".
        session_options: a ready `onnxruntime.SessionOptions`; overrides the three above.

    Call arguments:
        inputs: a dict `{input_name: array}`, a list/tuple in `input_names` order, or a single
            array for single-input models. Integer ids are cast to the graph's integer type
            when every value fits, float64 to float32; anything else raises.
        output_names: optional subset of outputs to compute.

    Returns:
        A dict `{output_name: numpy array}` in graph order.
    """

    def __init__(self, path, providers="auto", intra_op_num_threads=0, inter_op_num_threads=0,
                 graph_optimization_level="all", session_options=None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"`path` must be an existing .onnx file; received path={path!r}.")
        if graph_optimization_level not in _OPTIMIZATION_LEVELS:
            raise ValueError(
                f"`graph_optimization_level` must be one of {sorted(_OPTIMIZATION_LEVELS)}; received "
                f"graph_optimization_level={graph_optimization_level!r}."
            )
        if session_options is None:
            session_options = onnxruntime.SessionOptions()
            session_options.intra_op_num_threads = int(intra_op_num_threads)
            session_options.inter_op_num_threads = int(inter_op_num_threads)
            session_options.graph_optimization_level = _OPTIMIZATION_LEVELS[graph_optimization_level]
        self.path = path
        try:
            self.session = onnxruntime.InferenceSession(path, sess_options=session_options,
                                                        providers=resolve_providers(providers))
        except (_ort_errors.InvalidProtobuf, _ort_errors.InvalidGraph, _ort_errors.Fail) as error:
            raise ValueError(
                f"{path!r} is not a valid ONNX model (corrupt, truncated or another format): {error}"
            ) from error
        self.providers = tuple(self.session.get_providers())
        self.inputs = {i.name: (tuple(i.shape), _ORT_TYPES.get(i.type, i.type)) for i in self.session.get_inputs()}
        self.input_names = tuple(self.inputs)
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.id_limits = _id_limits(self.metadata, self.input_names)
        logger.info("OnnxModel %s runs on %s", os.path.basename(path), self.providers[0])

    def __repr__(self):
        return f"OnnxModel({self.path!r}, inputs={self.input_names}, outputs={self.output_names}, " \
               f"provider={self.providers[0]!r})"

    def _as_feeds(self, inputs):
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - set(self.input_names))
            missing = [name for name in self.input_names if name not in inputs]
            if unknown or missing:
                raise ValueError(
                    f"`inputs` must have exactly the keys {list(self.input_names)}; received keys "
                    f"{sorted(inputs)} (unknown: {unknown}, missing: {missing})."
                )
            return {name: self._check(name, inputs[name]) for name in self.input_names}
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"`inputs` must hold {len(self.input_names)} arrays in the order {list(self.input_names)}; "
                f"received {len(inputs)}."
            )
        return {name: self._check(name, value) for name, value in zip(self.input_names, inputs)}

    def _check(self, name, value):
        shape, dtype = self.inputs[name]
        array = np.asarray(value)
        if array.ndim != len(shape):
            raise ValueError(
                f"Input {name!r} must have rank {len(shape)} (shape {list(shape)}); received shape {array.shape}."
            )
        for axis, (expected, received) in enumerate(zip(shape, array.shape)):
            if isinstance(expected, int) and expected != received:
                raise ValueError(
                    f"Input {name!r} must have size {expected} on axis {axis}; received shape {array.shape}."
                )
        array = _cast(name, array, dtype)
        limit = self.id_limits.get(name)
        if limit is not None and array.size and (array.min() < 0 or array.max() >= limit):
            # onnxruntime's Gather would fail deep inside (too large) or wrap around (negative).
            raise ValueError(
                f"Input {name!r} must hold token ids in [0, {limit}); received ids in "
                f"[{array.min()}, {array.max()}]."
            )
        return array

    def __call__(self, inputs, output_names=None):
        feeds = self._as_feeds(inputs)
        names = list(output_names or self.output_names)
        return dict(zip(names, self.session.run(names, feeds)))


def _id_limits(metadata, input_names):
    """`{input_name: vocab_size}` for the token-id inputs of a keras_transformer export."""
    try:
        config = json.loads(metadata.get("keras_transformer.config", "{}"))
    except ValueError:
        return {}
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int):
        return {}
    limits = {name: vocab_size for name in input_names if name.endswith("token_ids")}
    if "decoder_token_ids" in limits and isinstance(config.get("target_vocab_size"), int):
        limits["decoder_token_ids"] = config["target_vocab_size"]
    return limits


def _cast(name, array, dtype):
    """Casts where no value changes: ints that fit, floats to another float type, bools to ints,
    and floats holding whole numbers (ids read from float data) to ints."""
    if not isinstance(dtype, type) or array.dtype == dtype:
        return array
    target = np.dtype(dtype)
    if np.issubdtype(target, np.integer) and np.issubdtype(array.dtype, np.floating):
        from keras_transformer.token_ids import whole_number_ids  # numpy only

        array = whole_number_ids(f"inputs[{name!r}]", array)
    if np.issubdtype(target, np.integer) and (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(
                f"Input {name!r} holds values in [{array.min()}, {array.max()}], outside {target.name}; "
                f"expected {target.name} ids."
            )
        return array.astype(target)
    if np.issubdtype(target, np.floating) and np.issubdtype(array.dtype, np.floating):
        return array.astype(target)
    if target == np.bool_ and array.dtype == np.bool_:
        return array
    raise TypeError(
        f"Input {name!r} must have dtype {target.name}; received {array.dtype.name}, which cannot be "
        "cast without changing values."
    )


def __getattr__(name):
    """`generate` / `OnnxGenerator` (text generation, `export.decoding`) load on first use."""
    if name in ("generate", "OnnxGenerator"):
        from export import decoding

        return getattr(decoding, name)
    raise AttributeError(f"module 'export.runtime' has no attribute {name!r}")
