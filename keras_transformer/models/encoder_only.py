"""EncoderOnlyTransformer: a bidirectional encoder (BERT style) with an optional task head."""

import keras
from keras import ops

from keras_transformer.layers import EncoderBlock, TokenAndPositionEmbedding, padding_mask
from keras_transformer.layers._validation import check_choice, check_positive_int, check_rate
from keras_transformer.models._base import (
    TransformerModel,
    block_options,
    check_common_args,
    embedding_positional,
    normalization_layer,
    reject_unknown_arguments,
    output_layer,
    serializable_dtype,
)

HEADS = (None, "classification", "token_classification", "masked_lm")


@keras.saving.register_keras_serializable(package="keras_transformer")
class EncoderOnlyTransformer(TransformerModel):
    """Token ids -> contextual hidden states, or the logits of a task head.

    Graph: `token_embedding` -> `encoder_block_0..L-1` (padding mask from `pad_id`) ->
    [`final_norm` when `norm_first`] -> head:

    * `None`: output `hidden_states` `(batch, length, d_model)`;
    * `"classification"`: pool (`"cls"`: the first position; `"mean"`: the mean over non-pad
      positions) -> `head_dropout` -> Dense `classifier` -> `logits` `(batch, num_classes)`;
    * `"token_classification"`: `head_dropout` -> Dense `classifier` -> `logits`
      `(batch, length, num_classes)`;
    * `"masked_lm"`: Dense `mlm_transform` (+activation) -> `mlm_norm` -> projection with the
      token embedding matrix (tied) -> `logits` `(batch, length, vocab_size)`.

    Args:
        vocab_size, num_layers, d_model, num_heads, d_ff: the architecture.
        dropout: dropout on embeddings, residual branches and the head input.
        max_length: number of learned positions (required for `positional="learned"`).
        positional: `"sinusoidal"`, `"learned"` (BERT: learned, 512) or `"rotary"`.
        norm_first: pre-norm blocks plus a final LayerNorm.
        activation: feed-forward activation (BERT: `"gelu"`).
        head: `None`, `"classification"`, `"token_classification"` or `"masked_lm"`.
        num_classes: classes of the classification heads.
        pooling: `"cls"` or `"mean"`, for `head="classification"`.
        pad_id: padding token id; padded positions are masked out of attention and pooling.
        scale_embeddings: multiply token embeddings by sqrt(d_model) (BERT: False).
        layer_norm_epsilon: LayerNorm epsilon.
        num_key_value_heads, use_bias, normalization, gated_feed_forward,
            rotary_max_wavelength, rotary_scaling_factor: the modern-decoder options, as in
            `DecoderOnlyTransformer`.
        preset_name: set by `from_preset`; kept in the config for export metadata.
        dtype: dtype policy of every layer; outputs are float32.
        name: model name.

    Inputs: `{"token_ids": (batch, length) int32}`.

    Example:
    >>> model = EncoderOnlyTransformer(30, 1, 16, 2, 32, head="classification", num_classes=2)
    >>> model({"token_ids": np.array([[2, 5, 6, 0]])}).shape
    TensorShape([1, 2])
    """

    def __init__(
        self,
        vocab_size,
        num_layers,
        d_model,
        num_heads,
        d_ff,
        dropout=0.1,
        max_length=None,
        positional="sinusoidal",
        norm_first=False,
        activation="relu",
        head=None,
        num_classes=None,
        pooling="cls",
        pad_id=0,
        scale_embeddings=True,
        layer_norm_epsilon=1e-6,
        num_key_value_heads=None,
        use_bias=True,
        normalization="layer_norm",
        gated_feed_forward=False,
        rotary_max_wavelength=10000.0,
        rotary_scaling_factor=1.0,
        preset_name=None,
        dtype=None,
        name=None,
        trainable=True,
        **kwargs,
    ):
        reject_unknown_arguments(type(self), kwargs)
        check_common_args(vocab_size, d_model, num_heads, d_ff, dropout, max_length, positional, pad_id)
        check_positive_int("num_layers", num_layers)
        check_choice("head", head, HEADS)
        check_choice("pooling", pooling, ("cls", "mean"))
        check_rate("dropout", dropout)
        if head in ("classification", "token_classification"):
            check_positive_int("num_classes", num_classes)
        elif num_classes is not None:
            raise ValueError(
                f"`num_classes` applies to the classification heads only; received "
                f"num_classes={num_classes!r} with head={head!r}."
            )

        options = block_options(positional, num_key_value_heads, use_bias, normalization,
                                gated_feed_forward, rotary_max_wavelength, rotary_scaling_factor)

        # === Layers ===
        token_embedding = TokenAndPositionEmbedding(
            vocab_size, d_model, max_length=max_length, positional=embedding_positional(positional),
            scale=scale_embeddings, dropout=dropout, dtype=dtype, name="token_embedding",
        )
        blocks = [
            EncoderBlock(num_heads, d_ff, dropout=dropout, activation=activation, norm_first=norm_first,
                         layer_norm_epsilon=layer_norm_epsilon, dtype=dtype, name=f"encoder_block_{i}",
                         **options)
            for i in range(num_layers)
        ]

        # === Functional graph ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        mask = padding_mask(token_ids, pad_id)
        x = token_embedding(token_ids)
        for block in blocks:
            x = block(x, padding_mask=mask)
        if norm_first:
            x = normalization_layer(normalization, layer_norm_epsilon, dtype, "final_norm")(x)
        if head is None:
            outputs = output_layer("hidden_states")(x)
        elif head == "masked_lm":
            x = keras.layers.Dense(d_model, activation=activation, dtype=dtype, name="mlm_transform")(x)
            x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype, name="mlm_norm")(x)
            outputs = output_layer("logits")(token_embedding(x, reverse=True))
        else:
            if head == "classification":
                x = x[:, 0, :] if pooling == "cls" else _masked_mean(x, mask)
            x = keras.layers.Dropout(dropout, dtype=dtype, name="head_dropout")(x)
            x = keras.layers.Dense(num_classes, dtype=dtype, name="classifier")(x)
            outputs = output_layer("logits")(x)
        super().__init__(inputs={"token_ids": token_ids}, outputs=outputs, name=name, trainable=trainable)

        # === Config ===
        self.token_embedding, self.encoder_blocks = token_embedding, blocks
        self.vocab_size, self.pad_id, self.head = vocab_size, pad_id, head
        self._finish_init(dict(
            vocab_size=vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
            d_ff=d_ff, dropout=dropout, max_length=max_length, positional=positional,
            norm_first=norm_first, activation=activation, head=head, num_classes=num_classes,
            pooling=pooling, pad_id=pad_id, scale_embeddings=scale_embeddings,
            layer_norm_epsilon=layer_norm_epsilon,
            num_key_value_heads=num_key_value_heads, use_bias=use_bias, normalization=normalization,
            gated_feed_forward=gated_feed_forward, rotary_max_wavelength=rotary_max_wavelength,
            rotary_scaling_factor=rotary_scaling_factor,
            preset_name=preset_name, dtype=serializable_dtype(dtype),
        ))


def _masked_mean(x, mask):
    """Mean of `x` over the positions where `mask` is True (`(batch, d_model)`)."""
    weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
