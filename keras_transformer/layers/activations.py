"""Activations by name, including GELU's tanh approximation under the name `"gelu_approximate"`.

Keras names `"gelu"` the exact (erf) form; GPT-2, BERT's original code and keras-hub's GPT-2
use the tanh approximation, which Keras only reaches through `gelu(x, approximate=True)`.
Registering it under a name keeps configs serializable and lets the ONNX emitters recognise it.
"""

import keras


@keras.saving.register_keras_serializable(package="keras_transformer", name="gelu_approximate")
def gelu_approximate(x):
    """GELU with the tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`."""
    return keras.activations.gelu(x, approximate=True)


_NAMED = {"gelu_approximate": gelu_approximate}


def get(identifier):
    """`keras.activations.get`, plus `"gelu_approximate"` (also as a serialized function)."""
    if isinstance(identifier, str) and identifier in _NAMED:
        return _NAMED[identifier]
    if isinstance(identifier, dict) and identifier.get("config") in _NAMED:
        return _NAMED[identifier["config"]]
    return keras.activations.get(identifier)


def serialize(activation):
    """The config form of an activation: its name when it has one, else Keras's serialization."""
    if isinstance(activation, str):
        return activation
    for name, function in _NAMED.items():
        if activation is function:
            return name
    return keras.activations.serialize(activation)
