"""Placing converted tensors into a model: build it without initial values, create every
variable from its tensor, and refuse anything half-loaded (see `keras_transformer.checkpoints`)."""

import contextlib

import numpy as np

__all__ = ["assign_weights", "deferred_variables"]


@contextlib.contextmanager
def deferred_variables():
    """Build a model without initialising its variables; yields the list of variables created.

    Random initial values would be overwritten by the checkpoint anyway, and allocating them
    first costs the model's size again at load time. Inside Keras's `StatelessScope` with
    `initialize_variables=False` variables keep their initializer and no value;
    `assign_weights` then creates each one from its checkpoint tensor, and initialises the rest
    (e.g. dropout seed states) as usual. Where Keras's internals differ, nothing is deferred.
    """
    try:
        from keras.src.backend.common import global_state
        from keras.src.backend.common.stateless_scope import StatelessScope
    except ImportError:  # pragma: no cover - another Keras layout: build as usual
        created = []
        yield created
        return
    pending = global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True)
    already = len(pending)
    created = []
    try:
        with StatelessScope(initialize_variables=False):
            yield created
    finally:
        created.extend(pending[already:])
        del pending[already:]  # we initialise them; no later scope must


def assign_weights(model, pairs, tensors, uninitialized=()):
    """Assign `(weight path, array)` pairs to `model`'s variables, then check completeness.

    `uninitialized` are variables built by `deferred_variables`: each is created from its
    tensor (one copy of the model in memory, not two), the others get their initializer.

    Raises ValueError (naming the source tensor(s) and the weight) for a weight the model does
    not have, a weight given twice, a wrong shape, a model weight no tensor filled, and a
    source tensor nobody read.
    """
    deferred = {id(variable) for variable in uninitialized}
    variables = {variable.path: variable for variable in model.weights}
    assigned = set()
    tensors.recent.clear()
    for weight_path, array in pairs:
        sources = ", ".join(repr(n) for n in tensors.recent) or "(no tensor)"
        tensors.recent.clear()
        where = f"{tensors.path}: tensor {sources}"
        if weight_path not in variables:
            raise ValueError(f"{where} maps to weight {weight_path!r}, which this model does not have "
                             "(the config contradicts the weights).")
        if weight_path in assigned:
            raise ValueError(f"{where} fills weight {weight_path!r} a second time.")
        variable = variables[weight_path]
        array = np.asarray(array)
        if tuple(array.shape) != tuple(variable.shape):
            raise ValueError(
                f"{where} has shape {tuple(array.shape)} (as {weight_path!r}) but the model built "
                f"from the config expects {tuple(variable.shape)}: the config contradicts the weights."
            )
        array = array.astype(variable.dtype, copy=False)
        if id(variable) in deferred:
            variable._initialize(array)
            deferred.discard(id(variable))
        else:
            variable.assign(array)
        del array  # the source copy is freed before the next tensor is read
        assigned.add(weight_path)
    for variable in uninitialized:  # not in the checkpoint (seed states; missing weights below)
        if id(variable) in deferred:
            variable._deferred_initialize()
    missing = sorted(set(variables) - assigned)
    if missing:
        raise ValueError(f"{tensors.path}: the checkpoint has no tensor for weight(s) {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''} ({len(missing)} missing).")
    unused = tensors.unused()
    if unused:
        raise ValueError(f"{tensors.path}: unexpected tensor(s) {[tensors.describe(n) for n in unused[:8]]}"
                         f"{' ...' if len(unused) > 8 else ''}: the model has no place for them.")
