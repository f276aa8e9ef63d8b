"""EncoderOnlyTransformer: a bidirectional encoder (BERT style) with an optional task head."""

import keras
from keras import ops

from keras_transformer.layers import EncoderBlock, OutputBias, TokenAndPositionEmbedding, activations, padding_mask
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

    Graph: `token_embedding` [+ `segment_embedding` of `segment_ids`] [-> `embedding_norm` ->
    `embedding_dropout`] -> `encoder_block_0..L-1` (padding mask from `pad_id`) ->
    [`final_norm` when `norm_first`] -> head:

    * `None`: output `hidden_states` `(batch, length, d_model)`; with `pooler=True` the model
      returns `{"hidden_states": ..., "pooled_output": (batch, d_model)}`, `pooled_output`
      being Dense `pooler` + tanh of the first ([CLS]) position (BERT's pooler);
    * `"classification"`: pool (`"cls"`: the first position, through the `pooler` when
      `pooler=True`; `"mean"`: the mean over non-pad positions) -> `head_dropout` -> Dense
      `classifier` -> `logits` `(batch, num_classes)`;
    * `"token_classification"`: `head_dropout` -> Dense `classifier` -> `logits`
      `(batch, length, num_classes)`;
    * `"masked_lm"`: Dense `mlm_transform` (+activation) -> `mlm_norm` -> projection
      with the token embedding matrix (tied) [-> `mlm_output_bias`] -> `logits`
      `(batch, length, vocab_size)`.

    BERT (Devlin et al. 2019) is `positional="learned"`, `scale_embeddings=False`,
    `num_segments=2`, `embedding_norm=True`, `pooler=True`, `activation="gelu"`,
    `layer_norm_epsilon=1e-12`, and for its masked-LM head `mlm_output_bias=True`.

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
        num_segments: None, or the number of segment (token type) ids: adds a
            `segment_embedding` table and a `segment_ids` input (BERT: 2).
        embedding_norm: LayerNorm (`embedding_norm`) of the summed embeddings, before the
            embedding dropout (BERT).
        pooler: Dense + tanh on the first position (see the graph above).
        mlm_output_bias: `head="masked_lm"`: add a learned bias (`mlm_output_bias`) to the
            tied projection (BERT).
        preset_name: set by `from_preset`; kept in the config for export metadata.
        dtype: dtype policy of every layer; outputs are float32.
        name: model name.

    Inputs: `{"token_ids": (batch, length) int32}`, plus `"segment_ids"` (same shape, ids in
    `[0, num_segments)`) when `num_segments` is set.

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
        num_segments=None,
        embedding_norm=False,
        pooler=False,
        mlm_output_bias=False,
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

        check_positive_int("num_segments", num_segments, allow_none=True)
        if pooler and head not in (None, "classification"):
            raise ValueError(
                f"`pooler` feeds `pooled_output` (head=None) or the classifier (head='classification'); "
                f"received pooler={pooler!r} with head={head!r}."
            )
        if pooler and head == "classification" and pooling != "cls":
            raise ValueError(
                f"`pooler` pools the first ([CLS]) position; received pooler={pooler!r} with pooling={pooling!r}."
            )
        if mlm_output_bias and head != "masked_lm":
            raise ValueError(
                f"`mlm_output_bias` applies to head='masked_lm' only; received mlm_output_bias="
                f"{mlm_output_bias!r} with head={head!r}."
            )

        options = block_options(positional, num_key_value_heads, use_bias, normalization,
                                gated_feed_forward, rotary_max_wavelength, rotary_scaling_factor)

        # === Layers ===
        # BERT's embedding: tokens + positions + segments -> LayerNorm -> dropout (the dropout
        # moves out of TokenAndPositionEmbedding, after the sum and the norm).
        bert_embedding = bool(num_segments) or embedding_norm
        token_embedding = TokenAndPositionEmbedding(
            vocab_size, d_model, max_length=max_length, positional=embedding_positional(positional),
            scale=scale_embeddings, dropout=0.0 if bert_embedding else dropout, dtype=dtype,
            name="token_embedding",
        )
        segment_embedding = keras.layers.Embedding(
            num_segments, d_model, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            dtype=dtype, name="segment_embedding",
        ) if num_segments else None
        embedding_norm_layer = normalization_layer(
            normalization, layer_norm_epsilon, dtype, "embedding_norm") if embedding_norm else None
        blocks = [
            EncoderBlock(num_heads, d_ff, dropout=dropout, activation=activation, norm_first=norm_first,
                         layer_norm_epsilon=layer_norm_epsilon, dtype=dtype, name=f"encoder_block_{i}",
                         **options)
            for i in range(num_layers)
        ]

        # === Functional graph ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        inputs = {"token_ids": token_ids}
        mask = padding_mask(token_ids, pad_id)
        x = token_embedding(token_ids)
        if segment_embedding is not None:
            inputs["segment_ids"] = keras.Input(shape=(None,), dtype="int32", name="segment_ids")
            x = x + segment_embedding(inputs["segment_ids"])
        if embedding_norm_layer is not None:
            x = embedding_norm_layer(x)
        if bert_embedding:
            x = keras.layers.Dropout(dropout, dtype=dtype, name="embedding_dropout")(x)
        for block in blocks:
            x = block(x, padding_mask=mask)
        if norm_first:
            x = normalization_layer(normalization, layer_norm_epsilon, dtype, "final_norm")(x)
        pooled = None
        if pooler:
            pooled = keras.layers.Dense(d_model, activation="tanh", dtype=dtype, name="pooler")(x[:, 0, :])
        if head is None:
            outputs = output_layer("hidden_states")(x)
            if pooled is not None:
                outputs = {"hidden_states": outputs, "pooled_output": output_layer("pooled_output")(pooled)}
        elif head == "masked_lm":
            # the function, not the name: Keras's Dense does not know "gelu_approximate"
            x = keras.layers.Dense(d_model, activation=activations.get(activation), dtype=dtype,
                                   name="mlm_transform")(x)
            x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype, name="mlm_norm")(x)
            x = token_embedding(x, reverse=True)
            if mlm_output_bias:
                x = OutputBias(dtype=dtype, name="mlm_output_bias")(x)
            outputs = output_layer("logits")(x)
        else:
            if head == "classification":
                x = pooled if pooled is not None else x[:, 0, :] if pooling == "cls" else _masked_mean(x, mask)
            x = keras.layers.Dropout(dropout, dtype=dtype, name="head_dropout")(x)
            x = keras.layers.Dense(num_classes, dtype=dtype, name="classifier")(x)
            outputs = output_layer("logits")(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, trainable=trainable)

        # === Config ===
        self.token_embedding, self.encoder_blocks = token_embedding, blocks
        self.segment_embedding, self.embedding_norm = segment_embedding, embedding_norm_layer
        self.vocab_size, self.pad_id, self.head = vocab_size, pad_id, head
        self.num_segments = num_segments
        self._finish_init(dict(
            vocab_size=vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
            d_ff=d_ff, dropout=dropout, max_length=max_length, positional=positional,
            norm_first=norm_first, activation=activation, head=head, num_classes=num_classes,
            pooling=pooling, pad_id=pad_id, scale_embeddings=scale_embeddings,
            layer_norm_epsilon=layer_norm_epsilon,
            num_key_value_heads=num_key_value_heads, use_bias=use_bias, normalization=normalization,
            gated_feed_forward=gated_feed_forward, rotary_max_wavelength=rotary_max_wavelength,
            rotary_scaling_factor=rotary_scaling_factor,
            num_segments=num_segments, embedding_norm=embedding_norm, pooler=pooler,
            mlm_output_bias=mlm_output_bias,
            preset_name=preset_name, dtype=serializable_dtype(dtype),
        ))

    @property
    def input_value_ranges(self):
        """`{input_name: (low, high)}` of the integer inputs that are not token ids (for
        export validation sweeps): `segment_ids` in `[0, num_segments)`."""
        return {"segment_ids": (0, self.num_segments)} if self.num_segments else {}


def _masked_mean(x, mask):
    """Mean of `x` over the positions where `mask` is True (`(batch, d_model)`)."""
    weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
