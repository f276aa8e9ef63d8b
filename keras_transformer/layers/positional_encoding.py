"""PositionalEncoding: sinusoidal (Vaswani et al. 2017, section 3.5) or learned positions."""

import math

import keras
from keras import ops

from keras_transformer.layers._validation import (
    check_choice,
    check_last_dim,
    check_positive_int,
    check_rank,
)


@keras.saving.register_keras_serializable(package="keras_transformer")
class PositionalEncoding(keras.layers.Layer):
    """Adds position information to a sequence of vectors.

    Sinusoidal mode adds exactly `PE(pos, 2i) = sin(pos / max_wavelength^(2i/d))` and
    `PE(pos, 2i+1) = cos(pos / max_wavelength^(2i/d))`, computed on the fly, so any sequence
    length works, including lengths never seen in training. Learned mode adds a trainable
    `(max_length, d)` table and refuses longer inputs.

    Args:
        mode: `"sinusoidal"` or `"learned"`.
        max_length: number of learned positions (required for `"learned"`, ignored otherwise).
        max_wavelength: the base of the sinusoid wavelengths (10000 in the paper).
        offset: learned mode only: the table has `max_length + offset` rows and position `p`
            reads row `p + offset` (BART: 2, Hugging Face `BartLearnedPositionalEmbedding`);
            `max_length` positions stay usable.
        **kwargs: standard `keras.layers.Layer` arguments (name, dtype, ...).

    Call arguments:
        inputs: `(batch, length, d)` float tensor.
        start_index: absolute position of the first element (an int or scalar tensor); used by
            incremental decoding, where the new tokens follow `start_index` cached ones.

    Returns:
        `inputs + encoding`, same shape and dtype. A Keras mask on `inputs` passes through.

    Example:
    >>> x = keras.random.normal((2, 10, 16))
    >>> PositionalEncoding()(x).shape
    (2, 10, 16)
    """

    def __init__(self, mode="sinusoidal", max_length=None, max_wavelength=10000, offset=0, **kwargs):
        super().__init__(**kwargs)
        check_choice("mode", mode, ("sinusoidal", "learned"))
        check_positive_int("max_length", max_length, allow_none=mode == "sinusoidal")
        if isinstance(max_wavelength, bool) or not isinstance(max_wavelength, (int, float)) or max_wavelength <= 1:
            raise ValueError(
                f"`max_wavelength` must be a number > 1; received max_wavelength={max_wavelength!r}."
            )
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or (offset and mode != "learned"):
            raise ValueError(
                f"`offset` must be an integer >= 0, and 0 unless mode='learned'; received offset={offset!r} "
                f"with mode={mode!r}."
            )
        self.mode = mode
        self.max_length = max_length
        self.max_wavelength = max_wavelength
        self.offset = offset
        self.supports_masking = True

    def build(self, input_shape):
        check_rank("inputs", input_shape, 3)
        width = check_last_dim("inputs", input_shape)
        self._width = width
        if self.mode == "learned":
            self.position_embeddings = self.add_weight(
                name="position_embeddings",
                shape=(self.max_length + self.offset, width),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
            )
        self.built = True

    def _check_length(self, length, start_index):
        if self.mode != "learned":
            return
        length, start_index = _static_int(length), _static_int(start_index)
        if length is None or start_index is None:
            return  # symbolic (graph mode): the table slice itself fails past max_length
        if start_index + length > self.max_length:
            raise ValueError(
                f"Learned positional encoding covers {self.max_length} positions (max_length="
                f"{self.max_length}); received a sequence of length {length} starting at "
                f"start_index={start_index}, which needs {start_index + length}."
            )

    def call(self, inputs, start_index=0):
        check_rank("inputs", inputs, 3)
        length = ops.shape(inputs)[1]
        self._check_length(length, start_index)
        return inputs + ops.cast(self.encoding(length, start_index), inputs.dtype)

    def encoding(self, length, start_index=0):
        """The `(length, d)` encoding of positions `start_index .. start_index + length - 1`."""
        if self.mode == "learned":
            # Slice the variable's value, not the variable: JAX refuses to turn a variable into
            # an array while tracing (`__jax_array__` during abstractification).
            table = self.position_embeddings.value
            return ops.slice(table, (start_index + self.offset, 0), (length, self._width))
        return sinusoidal_encoding(length, self._width, start_index, self.max_wavelength)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, start_index=0, **kwargs):
        # Keras does not trace `call` for symbolic inputs: check a known length here too.
        check_rank("inputs", inputs, 3)
        self._check_length(inputs.shape[1], start_index)
        return super().compute_output_spec(inputs, start_index=start_index, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            mode=self.mode, max_length=self.max_length, max_wavelength=self.max_wavelength,
            offset=self.offset,
        )
        return config


def _static_int(value):
    """`value` as a Python int when it is known now (int or eager scalar), else None."""
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except Exception:  # noqa: BLE001 - each backend raises its own type for symbolic tensors
        return None  # a symbolic tensor inside tf.function / a functional model


def sinusoidal_encoding(length, width, start_index=0, max_wavelength=10000):
    """`(length, width)` float32 sinusoidal table; columns alternate sin, cos (paper 3.5)."""
    half = (width + 1) // 2
    # 1 / max_wavelength^(2i/d), i = 0 .. ceil(d/2) - 1
    inverse_frequencies = ops.exp(
        ops.arange(half, dtype="float32") * (-2.0 * math.log(max_wavelength) / width)
    )
    positions = ops.cast(ops.arange(length, dtype="int32") + ops.cast(start_index, "int32"), "float32")
    angles = positions[:, None] * inverse_frequencies[None, :]
    interleaved = ops.reshape(ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1), (-1, 2 * half))
    return interleaved[:, :width]
