"""EncoderDecoderTransformer: the sequence-to-sequence model of "Attention Is All You Need"."""

import keras
import numpy as np
from keras import ops

from keras_transformer import generation
from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    PositionalEncoding,
    TokenAndPositionEmbedding,
    padding_mask,
)
from keras_transformer.layers._validation import check_positive_int
from keras_transformer.models._base import (
    TransformerModel,
    block_options,
    check_common_args,
    embedding_positional,
    normalization_layer,
    reject_unknown_arguments,
    output_layer,
    serializable_dtype,
    tensor_spec,
)


@keras.saving.register_keras_serializable(package="keras_transformer")
class EncoderDecoderTransformer(TransformerModel):
    """Source ids + shifted target ids -> target logits (Vaswani et al. 2017, figure 1).

    Graph: `token_embedding` [-> `encoder_position_encoding`] [-> `encoder_embedding_norm` ->
    `encoder_embedding_dropout`] -> `encoder_block_0..N-1` (padding mask from `pad_id`) ->
    [`encoder_final_norm`]; target ids -> `token_embedding` (or `decoder_token_embedding` when
    the target vocabulary differs) [-> `decoder_position_encoding`] [-> `decoder_embedding_norm`
    -> `decoder_embedding_dropout`] -> `decoder_block_0..N-1` (causal self-attention,
    cross-attention over the encoder output) -> [`decoder_final_norm`] -> projection ->
    `logits` (float32). The final norms exist only with `norm_first=True`, the per-stack
    position tables with `share_positions=False`, the embedding norms with `embedding_norm`.

    BART (Lewis et al. 2020) is `positional="learned"`, `share_positions=False`,
    `position_offset=2` (Hugging Face's tables; keras-hub's `BartBackbone` drops the two rows:
    0), `embedding_norm=True`, `scale_embeddings=False`, `activation="gelu"`, post-norm,
    `layer_norm_epsilon=1e-5`.

    With one shared vocabulary (`target_vocab_size=None`) the source embedding, the target
    embedding and, when `tie_embeddings`, the pre-softmax projection share one matrix (paper
    3.4). Decoder inputs are right-padded: causal attention keeps real positions from seeing
    the padding, so the decoder needs no padding mask (and `start_id` may equal `pad_id`).

    Args:
        vocab_size: source vocabulary size (the shared vocabulary by default).
        num_encoder_layers, num_decoder_layers: stack depths `N`.
        d_model, num_heads, d_ff: widths (512, 8, 2048 in the base model).
        dropout: dropout on embeddings and residual branches (`P_drop`).
        max_length: number of learned positions (required for `positional="learned"`).
        positional: `"sinusoidal"` (the paper), `"learned"` or `"rotary"` (RoPE in every
            self-attention).
        norm_first: pre-norm blocks plus final LayerNorms instead of the paper's post-norm.
        activation: feed-forward activation.
        target_vocab_size: a separate target vocabulary size; None shares `vocab_size`.
        tie_embeddings: project to logits with the (target) embedding matrix.
        pad_id: padding token id of source (and target) sequences.
        layer_norm_epsilon: LayerNorm epsilon.
        scale_embeddings: multiply token embeddings by sqrt(d_model) (the paper; BART: False).
        embedding_norm: a LayerNorm per stack on the embeddings (token + position), before the
            embedding dropout (BART's `layernorm_embedding`).
        share_positions: one learned position table for both stacks (False: each stack has its
            own, `encoder_position_encoding` / `decoder_position_encoding`, as in BART); only
            `positional="learned"` can have separate tables.
        position_offset: rows of each learned position table before position 0 (BART: 2).
        num_key_value_heads, use_bias, normalization, gated_feed_forward,
            rotary_max_wavelength, rotary_scaling_factor: the modern-decoder options, as in
            `DecoderOnlyTransformer`.
        preset_name: set by `from_preset`; kept in the config for export metadata.
        dtype: dtype policy of every layer; logits stay float32.
        name: model name.

    Inputs: `{"encoder_token_ids": (batch, S), "decoder_token_ids": (batch, T)}` int32.
    Output: `logits` `(batch, T, target_vocab)`.

    Example:
    >>> model = EncoderDecoderTransformer(20, 1, 1, d_model=16, num_heads=2, d_ff=32)
    >>> model({"encoder_token_ids": np.array([[5, 6, 0]]), "decoder_token_ids": np.array([[1, 5]])}).shape
    TensorShape([1, 2, 20])
    """

    def __init__(
        self,
        vocab_size,
        num_encoder_layers=6,
        num_decoder_layers=6,
        d_model=512,
        num_heads=8,
        d_ff=2048,
        dropout=0.1,
        max_length=None,
        positional="sinusoidal",
        norm_first=False,
        activation="relu",
        target_vocab_size=None,
        tie_embeddings=True,
        pad_id=0,
        layer_norm_epsilon=1e-6,
        num_key_value_heads=None,
        use_bias=True,
        normalization="layer_norm",
        gated_feed_forward=False,
        rotary_max_wavelength=10000.0,
        rotary_scaling_factor=1.0,
        scale_embeddings=True,
        embedding_norm=False,
        share_positions=True,
        position_offset=0,
        preset_name=None,
        dtype=None,
        name=None,
        trainable=True,
        **kwargs,
    ):
        reject_unknown_arguments(type(self), kwargs)
        check_common_args(vocab_size, d_model, num_heads, d_ff, dropout, max_length, positional, pad_id)
        check_positive_int("num_encoder_layers", num_encoder_layers)
        check_positive_int("num_decoder_layers", num_decoder_layers)
        check_positive_int("target_vocab_size", target_vocab_size, allow_none=True)
        output_vocab = target_vocab_size or vocab_size
        if not share_positions and positional != "learned":
            raise ValueError(
                f"Separate position tables per stack need positional='learned'; received "
                f"share_positions={share_positions!r} with positional={positional!r}."
            )

        options = block_options(positional, num_key_value_heads, use_bias, normalization,
                                gated_feed_forward, rotary_max_wavelength, rotary_scaling_factor)

        # === Layers ===
        # With separate position tables or embedding norms the embedding dropout moves after
        # them (a Dropout per stack) and TokenAndPositionEmbedding looks tokens up only.
        plain_embedding = share_positions and not embedding_norm

        def embedding(size, layer_name):
            return TokenAndPositionEmbedding(
                size, d_model, max_length=max_length,
                positional=embedding_positional(positional) if share_positions else "none",
                scale=scale_embeddings, dropout=dropout if plain_embedding else 0.0,
                position_offset=position_offset, dtype=dtype, name=layer_name,
            )

        def stack_layers(stack, token_layer):
            """`(token embedding, position table, embedding norm, dropout)` of one stack."""
            if plain_embedding:
                return (token_layer, None, None, None)
            position = None if share_positions else PositionalEncoding(
                "learned", max_length=max_length, offset=position_offset, dtype=dtype,
                name=f"{stack}_position_encoding",
            )
            norm = normalization_layer(normalization, layer_norm_epsilon, dtype,
                                       f"{stack}_embedding_norm") if embedding_norm else None
            drop = keras.layers.Dropout(dropout, dtype=dtype, name=f"{stack}_embedding_dropout")
            return (token_layer, position, norm, drop)

        def block_args():
            return dict(dropout=dropout, activation=activation, norm_first=norm_first,
                        layer_norm_epsilon=layer_norm_epsilon, dtype=dtype, **options)

        def final_norm(layer_name):
            if not norm_first:
                return None
            return normalization_layer(normalization, layer_norm_epsilon, dtype, layer_name)

        source_embedding = embedding(vocab_size, "token_embedding")
        shared_vocabulary = output_vocab == vocab_size
        target_embedding = source_embedding if shared_vocabulary else embedding(output_vocab, "decoder_token_embedding")
        source_stack = stack_layers("encoder", source_embedding)
        target_stack = stack_layers("decoder", target_embedding)
        encoder_blocks = [EncoderBlock(num_heads, d_ff, name=f"encoder_block_{i}", **block_args())
                          for i in range(num_encoder_layers)]
        decoder_blocks = [DecoderBlock(num_heads, d_ff, name=f"decoder_block_{i}", **block_args())
                          for i in range(num_decoder_layers)]
        encoder_norm, decoder_norm = final_norm("encoder_final_norm"), final_norm("decoder_final_norm")
        lm_head = None if tie_embeddings else keras.layers.Dense(
            output_vocab, use_bias=False, dtype=dtype, name="lm_head"
        )

        # === Functional graph ===
        encoder_ids = keras.Input(shape=(None,), dtype="int32", name="encoder_token_ids")
        decoder_ids = keras.Input(shape=(None,), dtype="int32", name="decoder_token_ids")
        source_mask = padding_mask(encoder_ids, pad_id)
        x = _embed(source_stack, encoder_ids)
        for block in encoder_blocks:
            x = block(x, padding_mask=source_mask)
        encoder_outputs = encoder_norm(x) if encoder_norm is not None else x
        y = _embed(target_stack, decoder_ids)
        for block in decoder_blocks:
            y = block(y, encoder_outputs, encoder_padding_mask=source_mask, use_causal_mask=True)
        if decoder_norm is not None:
            y = decoder_norm(y)
        logits = target_embedding(y, reverse=True) if tie_embeddings else lm_head(y)
        logits = output_layer("logits")(logits)
        super().__init__(
            inputs={"encoder_token_ids": encoder_ids, "decoder_token_ids": decoder_ids},
            outputs=logits, name=name, trainable=trainable,
        )

        # === Config ===
        self.token_embedding, self.target_embedding = source_embedding, target_embedding
        self.source_stack, self.target_stack = source_stack, target_stack
        self.encoder_blocks, self.decoder_blocks = encoder_blocks, decoder_blocks
        self.encoder_final_norm, self.decoder_final_norm, self.lm_head = encoder_norm, decoder_norm, lm_head
        self.vocab_size, self.target_vocab_size, self.d_model = vocab_size, output_vocab, d_model
        self.num_heads, self.max_length, self.pad_id = num_heads, max_length, pad_id
        self.tie_embeddings = tie_embeddings
        self._finish_init(dict(
            vocab_size=vocab_size, num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers, d_model=d_model, num_heads=num_heads, d_ff=d_ff,
            dropout=dropout, max_length=max_length, positional=positional, norm_first=norm_first,
            activation=activation, target_vocab_size=target_vocab_size,
            tie_embeddings=tie_embeddings, pad_id=pad_id, layer_norm_epsilon=layer_norm_epsilon,
            num_key_value_heads=num_key_value_heads, use_bias=use_bias, normalization=normalization,
            gated_feed_forward=gated_feed_forward, rotary_max_wavelength=rotary_max_wavelength,
            rotary_scaling_factor=rotary_scaling_factor,
            scale_embeddings=scale_embeddings, embedding_norm=embedding_norm,
            share_positions=share_positions, position_offset=position_offset,
            preset_name=preset_name,
            dtype=serializable_dtype(dtype),
        ))

    # -- incremental decoding -------------------------------------------------------------------

    def encode(self, encoder_token_ids):
        """Encode once for decoding: returns `(cross_attention_caches, source_padding_mask)`,
        one precomputed cross-attention K/V cache per decoder block."""
        source_mask = padding_mask(encoder_token_ids, self.pad_id)
        x = _embed(self.source_stack, encoder_token_ids, training=False)
        for block in self.encoder_blocks:
            x = block(x, padding_mask=source_mask, training=False)
        if self.encoder_final_norm is not None:
            x = self.encoder_final_norm(x)
        caches = tuple(block.compute_cross_attention_cache(x) for block in self.decoder_blocks)
        return caches, source_mask

    def call_with_cache(self, token_ids, caches, cache_index, cross_caches, source_mask):
        """Decode `token_ids` at positions `cache_index ..`; returns the float32 logits of the
        last position `(batch, target_vocab)` and the updated self-attention caches."""
        y = _embed(self.target_stack, token_ids, start_index=cache_index, training=False)
        new_caches = []
        for block, cache, cross in zip(self.decoder_blocks, caches, cross_caches):
            y, cache = block(y, encoder_padding_mask=source_mask, use_causal_mask=True, cache=cache,
                             cache_index=cache_index, cross_attention_cache=cross, training=False)
            new_caches.append(cache)
        y = y[:, -1:, :]
        if self.decoder_final_norm is not None:
            y = self.decoder_final_norm(y)
        logits = self.target_embedding(y, reverse=True) if self.tie_embeddings else self.lm_head(y)
        return ops.cast(logits[:, 0, :], "float32"), tuple(new_caches)

    def _last_logits_without_cache(self, decoder_token_ids, encoder_token_ids):
        inputs = {"encoder_token_ids": encoder_token_ids, "decoder_token_ids": decoder_token_ids}
        return self(inputs, training=False)[:, -1, :]

    def _stepper(self, encoder_token_ids, use_cache):
        def ids():
            return tensor_spec((None, None), "int32")

        source = ops.convert_to_tensor(encoder_token_ids, "int32")
        if not use_cache:
            full = self._compiled_function("full_forward", self._last_logits_without_cache, lambda: [ids(), ids()])
            return generation.FullRecomputeStepper(full, extra=(source,))
        encode = self._compiled_function("encode", self.encode, lambda: [ids()])
        step = self._compiled_function(
            "cached_step", self.call_with_cache,
            lambda: [ids(), self._cache_signature(), tensor_spec((), "int32"),
                     self._cache_signature(), tensor_spec((None, None), "bool")],
        )
        cross_caches, source_mask = encode(source)
        return generation.CachedStepper(step, self.initial_cache, extra=(cross_caches, source_mask))

    def generate(self, encoder_token_ids, max_length, start_id, end_id, num_beams=1, length_penalty=0.6,
                 use_cache=True, suppress_ids=None, allow_pad=False, return_lengths=False):
        """Translate: greedy decoding (`num_beams=1`) or beam search with the GNMT length penalty.

        Args:
            encoder_token_ids: one source sequence (1-D) or a batch: a `(batch, S)` array
                right-padded with `pad_id`, or a list of lists of different lengths.
            max_length: most target tokens to generate per row (`end_id` included).
            start_id: the id that starts every target sequence (fed first, not returned).
            end_id: generation of a row stops after this id; later positions hold `pad_id`.
            num_beams: 1 for greedy; the paper used 4.
            length_penalty: GNMT `alpha` in `((5 + length) / 6) ** alpha` (paper: 0.6).
            use_cache: False re-runs the decoder on the whole prefix every step (reference).
            suppress_ids: ids never to generate (besides `pad_id`).
            allow_pad: let the model generate `pad_id` (by default never: it pads the result).
            return_lengths: also return each row's length (`end_id` included).

        Returns:
            numpy int32 `(batch, length)` (or `(length,)` for one sequence) of generated ids,
            right-padded with `pad_id`; `length <= max_length`. With `return_lengths`,
            `(tokens, lengths)`.
        """
        sources, _, single = generation.prepare_prompts(
            encoder_token_ids, self.vocab_size, self.pad_id, name="encoder_token_ids"
        )
        check_positive_int("max_length", max_length)
        check_positive_int("num_beams", num_beams)
        start_id = generation.check_token_id("start_id", start_id, self.target_vocab_size)
        end_id = generation.check_token_id("end_id", end_id, self.target_vocab_size)
        suppress = generation.suppressed_ids(self.target_vocab_size, self.pad_id, end_id, suppress_ids, allow_pad)
        if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
            raise ValueError(f"`length_penalty` must be a number; received length_penalty={length_penalty!r}.")
        if self.max_length is not None and max(max_length + 1, sources.shape[1]) > self.max_length:
            raise ValueError(
                f"max_length={max_length} target tokens (plus the start token) or a source of "
                f"{sources.shape[1]} tokens exceed the {self.max_length} learned positions of this model."
            )
        batch = sources.shape[0]
        if num_beams == 1:
            starts = np.full((batch, 1), start_id, dtype=np.int32)
            tokens, lengths = generation.decode(
                self._stepper(sources, use_cache), starts, np.ones(batch, dtype=np.int64), max_length,
                generation.TokenChooser(temperature=0.0), end_id, self.pad_id, suppress=suppress, return_lengths=True,
            )
            tokens, lengths = tokens[:, 1:], lengths - 1  # without the start token
        else:
            stepper = self._stepper(np.repeat(sources, num_beams, axis=0), use_cache)
            tokens, lengths = generation.beam_search(
                stepper, batch, num_beams, max_length, start_id, end_id, self.pad_id, length_penalty,
                suppress=suppress, return_lengths=True,
            )
        return generation.generation_results(tokens, lengths, single, return_lengths)


def _embed(stack, token_ids, start_index=0, training=None):
    """One stack's embedding of `token_ids` at positions `start_index ..`: tokens (+ the shared
    positions) [+ the stack's own positions] [-> embedding norm] [-> dropout]."""
    token_layer, position, norm, dropout = stack
    x = token_layer(token_ids, start_index=start_index, training=training)
    if position is not None:
        x = position(x, start_index=start_index)
    if norm is not None:
        x = norm(x)
    if dropout is not None:
        x = dropout(x, training=training)
    return x
