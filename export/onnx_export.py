"""`to_onnx`: any Keras model to a named, checked, validated ONNX file, written atomically."""

import collections
import importlib
import math
import os

import numpy as np

from export import files
from export.report import ExportReport, StepTimer
from export.signatures import TensorInfo

METHODS = ("auto", "native", "tracing")
PRECISIONS = (None, "fp32", "fp16", "int8", "int4")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}; received {name}={value!r}.")


def _native_module(method, model):
    """`export.native` when it should build this model, else None (tracing)."""
    if method == "tracing":
        return None
    try:
        native = importlib.import_module("export.native")
    except ImportError:
        if method == "native":
            raise ValueError("method='native' needs the `export.native` package, which is not installed.")
        return None
    if not (callable(getattr(native, "supports", None)) and callable(getattr(native, "build", None))):
        # A package under construction (no `supports`/`build` yet) counts as absent.
        if method == "native":
            raise ValueError("method='native': `export.native` provides no supports()/build().")
        return None
    if native.supports(model):
        return native
    if method == "native":
        raise ValueError(f"method='native': export.native does not support {type(model).__name__}.")
    return None


def _convert_precision(model_proto, precision, block_size=32):
    if precision in (None, "fp32"):
        return model_proto
    try:
        precision_module = importlib.import_module("export.precision")
    except ImportError:
        raise ValueError(
            f"precision={precision!r} needs the `export.precision` module, which is not installed; "
            "use precision=None (fp32)."
        ) from None
    return precision_module.convert(model_proto, precision, block_size=block_size)


def _onnx_infos(value_infos):
    from onnx import helper

    infos = []
    for value_info in value_infos:
        tensor_type = value_info.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in tensor_type.shape.dim)
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        infos.append(TensorInfo(value_info.name, dtype, dims))
    return tuple(infos)


def check_onnx(path):
    """`onnx.checker` (full check) and strict shape inference of the file at `path`."""
    import onnx

    onnx.checker.check_model(path, full_check=False)
    header = onnx.load(path, load_external_data=False)
    onnx.shape_inference.infer_shapes(header, check_type=True, strict_mode=True)
    return header


def validate_onnx(model, path, *, atol=None, rtol=None, precision=None, max_length=None, vocab_size=None,
                  batch_sizes=(1, 3), input_signature=None, providers=("CPUExecutionProvider",), reference=None,
                  min_top1=None):
    """Runs the ONNX file at `path` and `model` on the shape sweep and returns the `ValidationTable`.

    Call `.raise_if_failed()` on the result to turn a mismatch into an `ExportValidationError`.
    `reference` is a `validate.keras_reference(model)` to reuse (its compiled forward), if any.
    """
    import onnxruntime

    from export import validate
    from export.signatures import model_signature

    signature = model_signature(model, input_signature)
    session = onnxruntime.InferenceSession(os.fspath(path), providers=list(providers))
    cases = validate.model_sweep(model, signature.inputs, max_length, vocab_size, batch_sizes)
    reference = reference or validate.keras_reference(model, signature.output_names)
    comparator = validate.comparator_for(_comparison_precision(model, precision), atol, rtol, min_top1)
    return validate.compare(reference, session, cases, comparator)


def _comparison_precision(model, precision):
    """`precision`, or "fp16" for a mixed-precision model exported at full precision: Keras and the
    traced graph then both compute in half precision, with kernels that round differently."""
    half = ("float16", "bfloat16")
    if precision is None and any(getattr(layer, "compute_dtype", None) in half for layer in [model, *model.layers]):
        return "fp16"
    return precision


def _what_failed(precision, cap, declared):
    """The subject of a validation failure, with what the user can change. `cap` is the sweep's
    longest sequence, `declared` the model's own limit (None when it declares none)."""
    length_hint = ""
    if declared is None and precision is not None:
        length_hint = (f"; the sweep ran to {cap} tokens because the model declares no max_length: give the "
                       "model max_length= (or pass max_length= / --max-length) the longest sequence it serves")
    if precision in ("int8", "int4"):
        return (f"{precision} ONNX export (lower the gate with min_top1= / --min-top1, or use "
                f"{'int8' if precision == 'int4' else 'fp16'} or fp32{length_hint})")
    if precision == "fp16":
        return f"fp16 ONNX export (a shorter validation max_length= / --max-length, or atol=/rtol=, or fp32{length_hint})"
    return "ONNX export"


def to_onnx(model, path, opset=None, *, method="auto", precision=None, validate=True, atol=None, rtol=None,
            max_length=None, vocab_size=None, batch_sizes=(1, 3), input_signature=None, overwrite=False,
            preset=None, external_data_threshold=files.TWO_GIB, progress=None, min_top1=None, block_size=32):
    """Exports a Keras model to ONNX, validates it against Keras, and only then writes `path`.

    Args:
        model: a Keras model (functional, or subclassed with `input_signature`).
        path: the `.onnx` file to write; weights go to `<path>.data` beside it when they reach
            `external_data_threshold` bytes (2 GiB by default).
        opset: ONNX opset; default: the newest the installed onnxruntime supports, capped by
            tf2onnx's newest (tracing) or `tracing.NATIVE_MAX_OPSET` (native; the same, 18).
        method: "auto" (the native emitter `export.native` when present and it supports the
            model, else tracing), "native" or "tracing" (tf2onnx).
        precision: None/"fp32", "fp16", "int8" or "int4" (through `export.precision.convert`).
        validate: run the shape sweep and refuse to write on any mismatch (default True).
        atol, rtol: comparison tolerances (fp32 default 1e-4 each; fp16 and mixed-precision
            models 1e-2 scaled).
        max_length: cap on the longest sequence in the sweep (the model's own limit wins if smaller).
        vocab_size: token id range of the sweep; default read from the model's embeddings.
        batch_sizes: batch sizes of the sweep.
        input_signature: `{name: (shape, dtype)}` or named `tf.TensorSpec`s for models without
            functional inputs (a never-called model is built from it).
        overwrite: replace an existing `path`.
        preset: preset name to record in the metadata (default: the model's `preset_name`).
        external_data_threshold: weight bytes from which the external-data layout is used.
        progress: optional callable receiving the name of each slow step as it starts.
        min_top1: top-1 agreement with Keras an int8/int4 export must reach over the sweep
            (default 0.99 int8, 0.95 int4).
        block_size: int4 weights per quantization block (a power of two >= 16).

    Returns:
        An `ExportReport` (`report.method` is "native" or "tracing").

    Raises:
        FileExistsError: `path` exists and `overwrite` is False (raised before any work).
        ExportValidationError: validation failed; nothing was written.
        ImportError: tracing was chosen (or the native emitter does not support the model) but
            TensorFlow is not the Keras backend or tf2onnx is not installed (before any work).
    """
    from export import tracing
    from export.signatures import axis_names, model_limits, model_signature, output_axis_names
    from export.validate import keras_reference, model_limits_max_length

    _check_choice("method", method, METHODS)
    _check_choice("precision", precision, PRECISIONS)
    path = os.path.abspath(os.fspath(path))
    files.check_target(path, overwrite)
    timer = StepTimer(progress)
    native = _native_module(method, model)
    if native is None:
        tracing.require_tracing()  # a clear error before any work when TensorFlow is missing
    opset = opset or tracing.default_opset(traced=native is None)
    with timer.step("inspect"):
        signature = model_signature(model, input_signature)
        cap = model_limits_max_length(model, max_length)
        reference = keras_reference(model, signature.output_names)  # one compiled forward for all runs
        output_axes = output_axis_names(model, signature, model_limits(model)[1], forward=reference)
    with timer.step("convert"):
        if native is not None:
            model_proto, used = native.build(model, opset=opset), "native"
        else:
            weight_bytes = sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights)
            large = weight_bytes >= external_data_threshold
            model_proto, used = tracing.trace(model, signature, opset, large_model=large), "tracing"
        model_proto = _convert_precision(model_proto, precision, block_size)
        tracing.name_axes(model_proto, axis_names(signature), output_axes)
        tracing.set_metadata(model_proto, model, preset, {"keras_transformer.export_method": used})
    data_path = path + ".data"
    with files.atomic_output([data_path, path], overwrite=overwrite) as staging:
        with timer.step("write"):
            written = files.save_onnx(model_proto, staging[path], external_data_threshold)
            header = check_onnx(staging[path])
        table = None
        if validate:
            with timer.step("validate"):
                table = validate_onnx(model, staging[path], atol=atol, rtol=rtol, precision=precision,
                                      max_length=cap, vocab_size=vocab_size, batch_sizes=batch_sizes,
                                      input_signature=input_signature, reference=reference, min_top1=min_top1)
                table.raise_if_failed(_what_failed(precision, cap, model_limits(model)[1] or max_length))
        sizes = {os.path.join(os.path.dirname(path), os.path.basename(f)): os.path.getsize(f) for f in written}
    return ExportReport(
        format="onnx", path=path, files=sizes, inputs=_onnx_infos(header.graph.input),
        outputs=_onnx_infos(header.graph.output), validation=table, timings=timer.finish(), method=used,
        opset=opset, precision=precision, node_counts=dict(collections.Counter(n.op_type for n in header.graph.node)),
    )


def load_metadata(path):
    """The metadata props of an exported ONNX file as a dict (weights are not loaded)."""
    import onnx

    return {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}
