"""TokenAndPositionEmbedding: token embedding x sqrt(d_model) + positions + dropout (paper 3.4)."""

import math

import keras
from keras import ops

from keras_transformer.layers._validation import (
    check_choice, check_positive_int, check_rank, check_rate, check_token_ids,
)
from keras_transformer.layers.positional_encoding import PositionalEncoding


@keras.saving.register_keras_serializable(package="keras_transformer")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Embeds token ids and adds positional encodings.

    The token embedding is multiplied by `sqrt(d_model)` (paper section 3.4) before the positional
    encoding is added, then dropout is applied. With `reverse=True` the same matrix projects
    hidden states back to vocabulary logits (`hidden @ embeddings^T`), which is how tied
    input/output embeddings are shared.

    Args:
        vocab_size: number of token ids.
        d_model: embedding width.
        max_length: number of positions for `positional="learned"`.
        positional: `"sinusoidal"`, `"learned"`, or `"none"` (no position added: rotary models
            rotate queries and keys inside attention instead).
        scale: multiply token embeddings by `sqrt(d_model)`.
        position_offset: learned positions only: rows of the position table before position 0
            (BART: 2); see `PositionalEncoding(offset=...)`.
        mask_zero: produce a Keras mask that is False where the token id is 0.
        dropout: dropout rate applied to the sum.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, length)` integer token ids, or with `reverse=True` a
            `(batch, length, d_model)` hidden state.
        start_index: absolute position of the first token (incremental decoding).
        reverse: project hidden states to logits with the transposed embedding matrix.
        training: whether dropout is active.

    Example:
    >>> layer = TokenAndPositionEmbedding(vocab_size=100, d_model=16, mask_zero=True)
    >>> layer(ops.array([[5, 7, 0]])).shape
    (1, 3, 16)
    """

    def __init__(
        self,
        vocab_size,
        d_model,
        max_length=None,
        positional="sinusoidal",
        scale=True,
        mask_zero=False,
        dropout=0.0,
        position_offset=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("d_model", d_model)
        check_choice("positional", positional, ("sinusoidal", "learned", "none"))
        check_positive_int("max_length", max_length, allow_none=positional != "learned")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.max_length = max_length
        self.positional = positional
        self.scale = bool(scale)
        self.mask_zero = bool(mask_zero)
        self.dropout = check_rate("dropout", dropout)
        self.position_offset = position_offset
        self.supports_masking = True
        # Sub-layers exist from construction (so `token_embedding` can be reached, e.g. to share
        # it, before the first call); `build` creates their weights.
        self.token_embedding = keras.layers.Embedding(
            self.vocab_size,
            self.d_model,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=self.d_model**-0.5),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.position_encoding = None
        if positional != "none":  # "none": positions enter elsewhere (rotary attention)
            self.position_encoding = PositionalEncoding(
                mode=self.positional,
                max_length=self.max_length,
                offset=position_offset,
                dtype=self.dtype_policy,
                name="position_encoding",
            )
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.token_embedding.build((None, None))
        if self.position_encoding is not None:
            self.position_encoding.build((None, None, self.d_model))
        self.built = True

    @property
    def embeddings(self):
        """The `(vocab_size, d_model)` float token embedding matrix (LoRA merged; for a
        quantized embedding, its stored integers divided by their per-token scales)."""
        layer = self.token_embedding
        if layer.quantization_mode is None:
            return layer.embeddings
        # Looking every id up dequantizes exactly as the lookups do, in every quantized mode.
        return layer(ops.arange(self.vocab_size, dtype="int32"))

    def call(self, inputs, start_index=0, reverse=False, training=None):
        if reverse:
            check_rank("inputs", inputs, 3)
            return ops.matmul(inputs, ops.transpose(ops.cast(self.embeddings, inputs.dtype)))
        check_rank("inputs", inputs, 2)
        check_token_ids("inputs", inputs, self.vocab_size)
        x = self.token_embedding(inputs)
        if self.scale:
            x = x * ops.cast(math.sqrt(self.d_model), x.dtype)
        if self.position_encoding is not None:
            x = self.position_encoding(x, start_index=start_index)
        return self.dropout_layer(x, training=training)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero or "int" not in str(inputs.dtype):
            return None
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.d_model,)

    def compute_output_spec(self, inputs, start_index=0, reverse=False, training=None):
        if reverse:
            return keras.KerasTensor(tuple(inputs.shape[:-1]) + (self.vocab_size,), dtype=self.compute_dtype)
        check_rank("inputs", inputs, 2)
        if self.position_encoding is not None:
            self.position_encoding._check_length(inputs.shape[1], start_index)  # known lengths only
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            max_length=self.max_length,
            positional=self.positional,
            scale=self.scale,
            mask_zero=self.mask_zero,
            dropout=self.dropout,
            position_offset=self.position_offset,
        )
        return config
