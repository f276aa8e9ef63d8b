"""The native emitters, looked up by layer class through the MRO.

An emitter registered for a class serves its subclasses too, as long as they compute the same
thing: a subclass that only adds methods (or overrides `get_config`, properties, ...) stays
native, while one that defines its own `call` between itself and the registered class is not
what the emitter writes, so `lookup` returns no emitter and a reason, and the caller exports that
layer by tracing instead.

Example:
>>> @register(FeedForward)
... def emit_feed_forward(g, layer, x): ...
>>> emitter, reason = lookup(layer)
"""

_EMITTERS = {}
_COMPUTES = {}


def register(layer_class, computes=("call",)):
    """Decorator: store the decorated function as the emitter of `layer_class` (and subclasses).

    `computes` names the methods whose result the emitter writes: a subclass overriding any of
    them (e.g. `MultiHeadAttention._compute_attention`, the documented extension point)
    computes something else and is traced instead.
    """

    def decorator(emitter):
        _EMITTERS[layer_class] = emitter
        _COMPUTES[layer_class] = tuple(computes)
        return emitter

    return decorator


def lookup(layer):
    """`(emitter, None)` for the nearest registered class in `type(layer).__mro__`, or
    `(None, reason)` when a class before it overrides `call`, or when none is registered."""
    mro = type(layer).__mro__
    for index, cls in enumerate(mro):
        if cls in _EMITTERS:
            for subclass in mro[:index]:
                overridden = [m for m in _COMPUTES[cls] if m in vars(subclass)]
                if overridden:
                    name = type(layer).__name__
                    if subclass is not type(layer):
                        name = f"{name} (through {subclass.__name__})"
                    return None, f"{name} overrides {overridden[0]}() of {cls.__name__}; exported by tracing"
            return _EMITTERS[cls], None
    return None, f"{type(layer).__name__} has no native emitter"


def emitter_for(layer):
    """The emitter of `layer`; ValueError with `lookup`'s reason when there is none."""
    emitter, reason = lookup(layer)
    if emitter is None:
        raise ValueError(reason)
    return emitter
