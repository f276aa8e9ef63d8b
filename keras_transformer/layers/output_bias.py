"""OutputBias: a learned bias added over the last axis (BERT's masked-LM output bias)."""

import keras
from keras import ops

from keras_transformer.layers._validation import check_last_dim


@keras.saving.register_keras_serializable(package="keras_transformer")
class OutputBias(keras.layers.Layer):
    """`inputs + bias`, one learned bias per unit of the last axis (zeros at initialisation).

    BERT's masked-LM head projects with the tied token embedding, which has no bias of its own,
    then adds this one (Hugging Face `cls.predictions.bias`, keras-hub `MaskedLMHead`
    `output_bias`).

    Example:
    >>> OutputBias()(ops.ones((2, 3, 5))).shape
    (2, 3, 5)
    """

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(check_last_dim("inputs", input_shape),), initializer="zeros")
        self.built = True

    def call(self, inputs):
        return inputs + ops.cast(self.bias, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
