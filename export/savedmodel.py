"""`to_savedmodel`: a TF SavedModel with a named `serving_default` signature, validated, atomic."""

import os

from export import files
from export.report import ExportReport, StepTimer
from export.signatures import TensorInfo

SIGNATURE_KEY = "serving_default"


def _directory_sizes(root, final_root):
    sizes = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            sizes[os.path.join(final_root, os.path.relpath(path, root))] = os.path.getsize(path)
    return sizes


def saved_model_runner(path):
    """`feeds -> {output_name: numpy}` for the `serving_default` signature of a SavedModel."""
    import tensorflow as tf

    serve = tf.saved_model.load(os.fspath(path)).signatures[SIGNATURE_KEY]

    def run(feeds):
        outputs = serve(**{name: tf.constant(value) for name, value in feeds.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    run.signature = serve
    return run


def to_savedmodel(model, path, *, validate=True, atol=None, rtol=None, max_length=None, vocab_size=None,
                  batch_sizes=(1, 3), input_signature=None, overwrite=False, progress=None):
    """Exports a Keras model as a TF SavedModel (servable by TF Serving), validated against Keras.

    The `serving_default` signature takes the model's inputs by name (batch and sequence
    dimensions dynamic) and returns a dict keyed by the model's output names (e.g. `logits`).
    The written directory is reloaded with `tf.saved_model.load` and compared with Keras on the
    shape sweep before it is moved to `path`.

    Args:
        model: a Keras model (functional, or subclassed with `input_signature`).
        path: the SavedModel directory to create.
        validate, atol, rtol, max_length, vocab_size, batch_sizes, input_signature, overwrite,
            progress: as in `export.to_onnx`.

    Returns:
        An `ExportReport` with `method="keras.export"`.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False (raised before any work).
        ExportValidationError: validation failed; nothing was written.
        ImportError: TensorFlow is not installed or not the Keras backend (before any work).
    """
    from keras_transformer import backend

    backend.require_tensorflow("SavedModel export (export.to_savedmodel)",
                               "export.to_onnx(model, path), served with export.runtime.OnnxModel")
    import keras

    from export import validate as validation
    from export.signatures import (
        axis_names, model_limits, model_signature, output_axis_names, serving_function, tensor_specs,
    )

    path = os.path.abspath(os.fspath(path))
    files.check_target(path, overwrite)
    timer = StepTimer(progress)
    with timer.step("inspect"):
        signature = model_signature(model, input_signature)
        cap = validation.model_limits_max_length(model, max_length)
        output_axes = output_axis_names(model, signature, model_limits(model)[1])
    with files.atomic_output([path], overwrite=overwrite) as staging:
        with timer.step("write"):
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint(SIGNATURE_KEY, serving_function(model, signature),
                                 input_signature=tensor_specs(signature))
            archive.write_out(staging[path], verbose=False)
        run = saved_model_runner(staging[path])
        table = None
        if validate:
            with timer.step("validate"):
                cases = validation.model_sweep(model, signature.inputs, cap, vocab_size, batch_sizes)
                reference = validation.keras_reference(model, signature.output_names)
                table = validation.compare(reference, run, cases, validation.comparator_for(None, atol, rtol))
                table.raise_if_failed("SavedModel export")
        sizes = _directory_sizes(staging[path], path)
    input_axes = axis_names(signature)
    outputs = run.signature.structured_outputs
    return ExportReport(
        format="savedmodel", path=path, files=sizes,
        inputs=tuple(TensorInfo(s.name, s.dtype, tuple(input_axes[s.name])) for s in signature.inputs),
        outputs=tuple(TensorInfo(name, outputs[name].dtype.name, tuple(output_axes.get(name, ())))
                      for name in outputs),
        validation=table, timings=timer.finish(), method="keras.export",
    )
