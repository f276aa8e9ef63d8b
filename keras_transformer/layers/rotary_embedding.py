"""RotaryEmbedding: rotary position embedding (RoPE, Su et al. 2021) for queries and keys."""

import keras
from keras import ops

from keras_transformer.layers._validation import check_rank


@keras.saving.register_keras_serializable(package="keras_transformer")
class RotaryEmbedding(keras.layers.Layer):
    """Rotates each pair of features by an angle proportional to the token's position.

    The "rotate half" convention of GPT-NeoX, Llama, Mistral and Qwen2 (and keras-hub): feature
    `i` is paired with feature `i + d/2`; with `inv_freq_i = max_wavelength^(-2i/d)` and
    `angle = position / scaling_factor * inv_freq_i`,
    `out_i = x_i cos(angle) - x_{i+d/2} sin(angle)` and
    `out_{i+d/2} = x_{i+d/2} cos(angle) + x_i sin(angle)`. Computed in float32, returned in the
    input dtype. No weights.

    Args:
        max_wavelength: the base `theta` (10000 in Llama 2, 500000 in Llama 3, 1e6 in Qwen2).
        scaling_factor: linear position interpolation; positions are divided by it.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, heads, length, head_dim)` or `(batch, length, head_dim)`; the length
            axis is the second to last. `head_dim` must be even.
        start_index: position of the first token (the number of cached positions while
            decoding); ignored when `position_ids` is given.
        position_ids: optional `(batch, length)` integer positions (e.g. left-padded prompts).

    Example:
    >>> rope = RotaryEmbedding(max_wavelength=10000)
    >>> rope(keras.random.normal((2, 4, 6, 8)), start_index=3).shape
    (2, 4, 6, 8)
    """

    def __init__(self, max_wavelength=10000.0, scaling_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("max_wavelength", max_wavelength), ("scaling_factor", scaling_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number; received {name}={value!r}.")
        self.max_wavelength = float(max_wavelength)
        self.scaling_factor = float(scaling_factor)
        self.built = True

    def call(self, inputs, start_index=0, position_ids=None):
        check_rank("inputs", inputs, (3, 4))
        head_dim = inputs.shape[-1]
        if head_dim is not None and head_dim % 2:
            raise ValueError(
                f"RotaryEmbedding needs an even last dimension; received shape {tuple(inputs.shape)}."
            )
        cos, sin = self.cos_sin(ops.shape(inputs)[-2], head_dim, start_index, position_ids)
        if len(inputs.shape) == 4:  # (batch|1, length, d) -> (batch|1, 1, length, d)
            cos, sin = ops.expand_dims(cos, 1), ops.expand_dims(sin, 1)
        x = ops.cast(inputs, "float32")
        first, second = ops.split(x, 2, axis=-1)
        rotated = ops.concatenate([-second, first], axis=-1)
        return ops.cast(x * cos + rotated * sin, inputs.dtype)

    def cos_sin(self, length, head_dim, start_index=0, position_ids=None):
        """float32 `(batch|1, length, head_dim)` cosines and sines of the rotation angles."""
        if position_ids is None:
            positions = ops.arange(length, dtype="float32") + ops.cast(start_index, "float32")
            positions = ops.expand_dims(positions, 0)
        else:
            positions = ops.cast(position_ids, "float32")
        exponents = ops.arange(0, head_dim, 2, dtype="float32") / float(head_dim)
        inverse_frequencies = 1.0 / ops.power(self.max_wavelength, exponents)
        angles = ops.expand_dims(positions / self.scaling_factor, -1) * inverse_frequencies
        angles = ops.concatenate([angles, angles], axis=-1)
        return ops.cos(angles), ops.sin(angles)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(max_wavelength=self.max_wavelength, scaling_factor=self.scaling_factor)
        return config
