"""ONNX by tracing: a named `tf.function` converted with tf2onnx, then axes and metadata named.

`trace(model, signature, opset)` converts through `tf2onnx.convert.from_function` with an
input signature of named `TensorSpec`s whose dynamic dims are `None` (so no dimension is fixed)
and tf2onnx's optimizers on. `name_axes` replaces tf2onnx's `unk__123` dim params by the axis
names of `export.signatures`, and `default_opset()` is the newest opset that both tf2onnx and
the installed onnxruntime accept.
"""

import contextlib
import functools
import json
import logging
import re

import numpy as np

from export import graph_cleanup


def max_tracing_opset():
    """The newest opset tf2onnx can emit."""
    from tf2onnx import constants

    return max(constants.OPSET_TO_IR_VERSION)


@functools.lru_cache(maxsize=None)
def max_runtime_opset():
    """The newest default-domain opset the installed onnxruntime loads (probed with a one-node model)."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    for opset in range(onnx.defs.onnx_opset_version(), 6, -1):
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
        try:
            onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any refusal means "not supported"
            continue
        return opset
    raise RuntimeError("The installed onnxruntime loads no ONNX opset >= 7.")


# The newest opset the native emitter writes by default: tf2onnx 1.17's newest too, so both
# paths write the same opset, and a native export never imports tf2onnx (hence TensorFlow).
NATIVE_MAX_OPSET = 18


def default_opset(traced=True):
    """The newest opset the installed onnxruntime loads, capped by tf2onnx's newest when `traced`
    (else by `NATIVE_MAX_OPSET`)."""
    return min(max_tracing_opset() if traced else NATIVE_MAX_OPSET, max_runtime_opset())


def require_tracing():
    """Raise ImportError before any work when the tf2onnx path cannot run here: it traces a
    `tf.function` of the model, so it needs TensorFlow as the Keras backend, and tf2onnx."""
    import importlib.util

    from keras_transformer import backend

    alternative = ("export.to_onnx(model, path, method='native') for this package's models (no "
                   "TensorFlow needed)")
    backend.require_tensorflow("ONNX export by tracing (tf2onnx, method='tracing')", alternative)
    if importlib.util.find_spec("tf2onnx") is None:
        raise ImportError(
            "ONNX export by tracing (method='tracing') needs the `tf2onnx` package, which is not "
            f"installed. Install it with: {backend.install_command('tracing')}, or use {alternative}."
        )


def trace(model, signature, opset, large_model=False):
    """Converts `model` to an ONNX `ModelProto` with tf2onnx (inputs/outputs named by `signature`),
    then fuses LayerNormalization (opset >= 17) and tensordot MatMuls (`export.graph_cleanup`).

    `large_model=True` (weights near or over 2 GiB) lets tf2onnx keep the weights outside its
    protobuf; they are put back into the in-memory proto, which `export.files.save_onnx` then
    writes with the external-data layout.
    """
    import tf2onnx

    from export.signatures import serving_function, tensor_specs

    function = serving_function(model, signature)
    specs = tensor_specs(signature)
    with _numpy_product_shim(), _erfc_errors_hidden():
        model_proto, storage = tf2onnx.convert.from_function(
            function, input_signature=specs, opset=opset, large_model=large_model
        )
    if large_model:
        _inline_external_tensors(model_proto, storage)
    _fold_captured_constants(model_proto, function.get_concrete_function(*specs))
    graph_cleanup.clean_up(model_proto)
    return model_proto


_ERFC_ONLY = re.compile(r"Tensorflow op \[.*: Erfc\] is not supported|Unsupported ops: Counter\(\{'Erfc': \d+\}\)")


class _ErfcFilter(logging.Filter):
    """Drops tf2onnx's errors about `Erfc` alone, which `graph_cleanup.rewrite_erfc` rewrites (a
    report of any other unsupported op still shows)."""

    def filter(self, record):
        return not _ERFC_ONLY.fullmatch(record.getMessage())


@contextlib.contextmanager
def _erfc_errors_hidden():
    logger, erfc_filter = logging.getLogger("tf2onnx.tfonnx"), _ErfcFilter()
    logger.addFilter(erfc_filter)
    try:
        yield
    finally:
        logger.removeFilter(erfc_filter)


@contextlib.contextmanager
def _numpy_product_shim():
    """tf2onnx 1.17's large-model path calls `np.product`, which NumPy 2 removed; provide it
    (as `np.prod`) only for the duration of the conversion."""
    added = not hasattr(np, "product")
    if added:
        np.product = np.prod
    try:
        yield
    finally:
        if added:
            del np.product


def _inline_external_tensors(model_proto, storage):
    """Moves tf2onnx's external tensor storage (`large_model=True`) back into the tensors."""
    from onnx import TensorProto

    for tensor in model_proto.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next(entry.value for entry in tensor.external_data if entry.key == "location")
        tensor.raw_data = storage.name_to_tensor_data[location]
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def _fold_captured_constants(model_proto, concrete_function):
    """Turns graph inputs that are captured constants into initializers.

    Functional Keras models keep non-tensor call arguments (e.g. a pad id) as eager constants; a
    `tf.function` captures them and tf2onnx lists them as extra graph inputs, which a caller
    could never feed. Their values are known, so they become initializers.
    """
    import tensorflow as tf
    from onnx import numpy_helper

    graph = concrete_function.graph
    values = {
        internal.name: external.numpy()
        for external, internal in zip(graph.external_captures, graph.internal_captures)
        if internal.dtype != tf.resource
    }
    for value_info in list(model_proto.graph.input):
        if value_info.name in values:
            model_proto.graph.input.remove(value_info)
            model_proto.graph.initializer.append(numpy_helper.from_array(values[value_info.name], value_info.name))
    return model_proto


def _set_dims(value_info, dims):
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, str):
            entry.dim_param = dim
        else:
            entry.dim_value = int(dim)


def name_axes(model_proto, input_axes, output_axes):
    """Gives graph inputs and outputs the named axes and re-runs shape inference inside the graph.

    Args:
        model_proto: the `onnx.ModelProto` (edited in place and returned).
        input_axes / output_axes: `{name: [axis name or size, ...]}`.
    """
    import onnx

    graph = model_proto.graph
    for value_info in graph.input:
        if value_info.name in input_axes:
            _set_dims(value_info, input_axes[value_info.name])
    for value_info in graph.output:
        if value_info.name in output_axes:
            _set_dims(value_info, output_axes[value_info.name])
    # tf2onnx's intermediate shapes use its own unk__ names; inference recomputes them from ours.
    del graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(_without_weight_data(model_proto))
    graph.value_info.extend(inferred.graph.value_info)
    return model_proto


def _without_weight_data(model_proto, min_bytes=1 << 20):
    """A copy without the data of initializers over 1 MiB (shape inference needs only their dims,
    and a proto over 2 GiB cannot be serialised for it)."""
    import onnx

    light = onnx.ModelProto()
    graph = model_proto.graph
    heavy = [t for t in graph.initializer if len(t.raw_data) >= min_bytes]
    if not heavy:
        return model_proto
    saved = [t.raw_data for t in heavy]
    try:
        for tensor in heavy:
            tensor.raw_data = b""
        light.CopyFrom(model_proto)
    finally:
        for tensor, data in zip(heavy, saved):
            tensor.raw_data = data
    return light


def set_metadata(model_proto, model, preset=None, extra=None):
    """Adds metadata props: package version, the model's config JSON and the preset name."""
    import keras_transformer

    props = {"keras_transformer.version": keras_transformer.__version__,
             "keras_transformer.class": type(model).__name__}
    try:
        props["keras_transformer.config"] = json.dumps(model.get_config(), default=_json_default)
    except (NotImplementedError, TypeError) as error:  # subclassed models without get_config
        props["keras_transformer.config"] = json.dumps({"unavailable": str(error)})
    preset = preset or getattr(model, "preset_name", None) or getattr(model, "preset", None)
    if isinstance(preset, str):
        props["keras_transformer.preset"] = preset
    props.update(extra or {})
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or model_proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    model_proto.producer_name = "keras_transformer.export"
    return model_proto


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
