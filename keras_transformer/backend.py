"""The Keras backend in use: is it installed, what it can do, and compiled functions on each.

Everything here that only inspects the choice (`selected`, `check_installed`) imports neither
Keras nor a backend, so the modules that import Keras call `check_installed()` first: choosing a
backend that is not installed then fails with one error that names it and the install command,
instead of a `ModuleNotFoundError` deep inside Keras.

`compile_function` is the one place that turns a Python function of a model into a compiled one:
a `tf.function` with a fixed signature of dynamic shapes on TensorFlow (traced once), a
`jax.jit` of a *stateless* function on JAX (the model's variables are arguments, so training the
model after compiling never leaves a stale copy baked in; traced once per distinct input shape),
and a `torch.no_grad` call on PyTorch (eager: for the small per-token steps of generation,
`torch.compile`'s minutes of compilation and guards on every new length cost more than it saves).

Example:
>>> from keras_transformer import backend
>>> backend.selected()  # doctest: +SKIP
'jax'
"""

import importlib.util
import json
import os
import sys

__all__ = ["BACKENDS", "check_installed", "compile_function", "install_command", "require_tensorflow", "selected"]

# Keras backend name -> the module that must be importable for it.
BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}
DISTRIBUTION = "keras-transformer-zoo"


def install_command(extra):
    """The one-line install of this package with `extra` (e.g. "jax", "export")."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def selected():
    """The backend Keras uses or will use: the running Keras's choice once imported, else
    `KERAS_BACKEND`, else `keras.json` (under `KERAS_HOME` or `~/.keras`), else "tensorflow"
    (Keras's own order)."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as file:
            return json.load(file).get("backend") or "tensorflow"
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def check_installed():
    """Raise ImportError naming the backend and the install command when Keras or the selected
    backend is not installed; returns the backend name otherwise."""
    backend = selected()
    if backend not in BACKENDS:
        raise ImportError(
            f"KERAS_BACKEND={backend!r} is not a Keras backend this package supports; expected one of "
            f"{sorted(set(BACKENDS) - {'numpy'})}."
        )
    for module in ("keras", BACKENDS[backend]):
        if importlib.util.find_spec(module) is None:
            raise ImportError(
                f"The Keras backend {backend!r} (KERAS_BACKEND) needs the `{module}` package, which "
                f"is not installed. Install it with: {install_command(backend)} (or choose an "
                f"installed backend with KERAS_BACKEND=...)."
            )
    return backend


def require_tensorflow(feature, alternative):
    """Raise before any work when `feature` cannot run: it needs TensorFlow installed *and* the
    TensorFlow Keras backend (it traces `tf.function`s of the model's layers).

    Args:
        feature: what the caller is about to do, e.g. "SavedModel export (export.to_savedmodel)".
        alternative: what works without TensorFlow, e.g. "export.to_onnx(model, path, method='native')".
    """
    backend = selected()
    if importlib.util.find_spec("tensorflow") is None:
        missing = f"TensorFlow is not installed (install it with: {install_command('tensorflow')})"
    elif backend != "tensorflow":
        missing = (f"the Keras backend is {backend!r} (set KERAS_BACKEND=tensorflow before importing "
                   "Keras)")
    else:
        return
    raise ImportError(f"{feature} needs TensorFlow as the Keras backend, but {missing}. "
                      f"Alternative without TensorFlow: {alternative}.")


# XLA options for functions compiled for one or two calls per shape (validation sweeps): the
# backend optimisation passes cost more than they save there (0.25 s vs 0.4-0.8 s per shape for a
# 2-layer model on CPU, measured); results agree to float32 round-off.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compile_function(function, model, tf_signature=None, fast_compile=False):
    """`function(*args)` of `model`'s layers, compiled for the running backend.

    Args:
        function: a Python function of tensors (and nests of tensors) that calls `model`'s layers
            in inference mode; it must not assign variables.
        model: the Keras layer/model whose variables `function` reads.
        tf_signature: `() -> [tf.TensorSpec, ...]` used on TensorFlow (dynamic dims `None`, so
            new batch sizes or lengths never retrace); None traces per input shape there too.
        fast_compile: on JAX, skip XLA's expensive optimisation passes: for functions run only
            a few times per input shape.

    Returns:
        A callable with `function`'s arguments and results (backend tensors).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        signature = tf_signature() if tf_signature is not None else None
        return tf.function(function, input_signature=signature, autograph=False)
    if backend == "jax":
        return _jax_stateless_jit(function, model, _FAST_COMPILE if fast_compile else None)
    if backend == "torch":
        import torch

        def without_grad(*args):
            with torch.no_grad():
                return function(*args)

        return without_grad
    return function


def _jax_stateless_jit(function, model, compiler_options=None):
    """`jax.jit` of `function` with `model`'s variable values as an argument (Keras's own JAX
    trainer pattern): reading a variable inside a traced function would otherwise freeze its
    current value into the compiled code."""
    import jax
    import keras

    def stateless(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
            return function(*args)

    jitted = jax.jit(stateless, compiler_options=compiler_options)

    def call(*args):
        return jitted([variable.value for variable in model.variables], *args)

    def output_shapes(*args):
        """The results' `jax.ShapeDtypeStruct`s: a trace, no XLA compile (shape probes)."""
        return jax.eval_shape(stateless, [variable.value for variable in model.variables], *args)

    call.output_shapes = output_shapes
    call.compiled_shapes = getattr(jitted, "_cache_size", None)  # how many input shapes compiled
    return call
