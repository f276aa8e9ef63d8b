"""DecoderOnlyTransformer: a causal language model (GPT-2 style with norm_first=True)."""

import keras
from keras import ops

from keras_transformer import generation
from keras_transformer.layers import DecoderBlock, TokenAndPositionEmbedding
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
)


@keras.saving.register_keras_serializable(package="keras_transformer")
class DecoderOnlyTransformer(TransformerModel):
    """Token ids -> next-token logits with a stack of causal decoder blocks (no cross-attention).

    Graph: `token_embedding` (tokens x sqrt(d_model) if `scale_embeddings`, + positions) ->
    `decoder_block_0 .. decoder_block_{L-1}` (causal self-attention + FFN) -> `final_norm`
    (only when `norm_first=True`, as in GPT-2) -> projection (the transposed token embedding
    when `tie_embeddings`, else the Dense `lm_head`) -> `logits` (float32).

    Right-padded batches need no mask: with causal attention no real token sees the padding
    after it (compute the loss with `training.MaskedSparseCategoricalCrossentropy`).

    Args:
        vocab_size: number of token ids.
        num_layers: number of decoder blocks.
        d_model: model width.
        num_heads: attention heads (`d_model` must be divisible by it).
        d_ff: feed-forward inner width.
        dropout: dropout on embeddings and residual branches.
        max_length: number of learned positions (required for `positional="learned"`); it is
            also the longest sequence `generate` can produce.
        positional: `"sinusoidal"`, `"learned"` or `"rotary"` (RoPE in every self-attention,
            nothing added to the embeddings; Llama/Mistral/Qwen2).
        norm_first: pre-norm blocks plus a final LayerNorm (GPT-2) instead of post-norm.
        activation: feed-forward activation (`"gelu"` in GPT-2).
        tie_embeddings: project to logits with the token embedding matrix.
        pad_id: padding token id (used by `generate` to pad finished rows).
        scale_embeddings: multiply token embeddings by sqrt(d_model) (the paper; GPT-2: False).
        layer_norm_epsilon: LayerNorm epsilon.
        num_key_value_heads: key/value heads of every attention (grouped-query attention;
            the KV cache holds only these); defaults to `num_heads`.
        use_bias: whether the attention and feed-forward projections have biases.
        normalization: `"layer_norm"` or `"rms_norm"` (every norm, the final one included).
        gated_feed_forward: gated feed-forward (`activation="silu"`: SwiGLU as in Llama).
        rotary_max_wavelength: rotary base `theta` when `positional="rotary"`.
        rotary_scaling_factor: linear position interpolation of the rotary embedding.
        qkv_bias: whether the attention query/key/value projections have biases; None follows
            `use_bias` (Qwen2: `use_bias=False, qkv_bias=True`).
        preset_name: set by `from_preset`; kept in the config for export metadata.
        dtype: dtype policy of every layer (e.g. `"mixed_float16"`); logits stay float32.
        name: model name.

    Inputs: `{"token_ids": (batch, length) int32}`. Output: `logits` `(batch, length, vocab)`.

    Example:
    >>> model = DecoderOnlyTransformer(vocab_size=20, num_layers=1, d_model=16, num_heads=2, d_ff=32)
    >>> model({"token_ids": np.array([[3, 4, 5]])}).shape
    TensorShape([1, 3, 20])
    >>> model.generate([[3, 4, 5]], max_new_tokens=4, temperature=0.0).shape
    (1, 7)
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
        tie_embeddings=True,
        pad_id=0,
        scale_embeddings=True,
        layer_norm_epsilon=1e-6,
        num_key_value_heads=None,
        use_bias=True,
        normalization="layer_norm",
        gated_feed_forward=False,
        rotary_max_wavelength=10000.0,
        rotary_scaling_factor=1.0,
        qkv_bias=None,
        preset_name=None,
        dtype=None,
        name=None,
        trainable=True,
        **kwargs,
    ):
        reject_unknown_arguments(type(self), kwargs)
        check_common_args(vocab_size, d_model, num_heads, d_ff, dropout, max_length, positional, pad_id)
        check_positive_int("num_layers", num_layers)
        options = block_options(positional, num_key_value_heads, use_bias, normalization,
                                gated_feed_forward, rotary_max_wavelength, rotary_scaling_factor,
                                qkv_bias=qkv_bias)

        # === Layers ===
        token_embedding = TokenAndPositionEmbedding(
            vocab_size, d_model, max_length=max_length, positional=embedding_positional(positional),
            scale=scale_embeddings, dropout=dropout, dtype=dtype, name="token_embedding",
        )
        blocks = [
            DecoderBlock(
                num_heads, d_ff, dropout=dropout, activation=activation, norm_first=norm_first,
                layer_norm_epsilon=layer_norm_epsilon, cross_attention=False, dtype=dtype,
                name=f"decoder_block_{i}", **options,
            )
            for i in range(num_layers)
        ]
        final_norm = None
        if norm_first:
            final_norm = normalization_layer(normalization, layer_norm_epsilon, dtype, "final_norm")
        lm_head = None
        if not tie_embeddings:
            lm_head = keras.layers.Dense(vocab_size, use_bias=False, dtype=dtype, name="lm_head")

        # === Functional graph ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        x = token_embedding(token_ids)
        for block in blocks:
            x = block(x, use_causal_mask=True)
        if final_norm is not None:
            x = final_norm(x)
        logits = token_embedding(x, reverse=True) if tie_embeddings else lm_head(x)
        logits = output_layer("logits")(logits)
        super().__init__(inputs={"token_ids": token_ids}, outputs=logits, name=name, trainable=trainable)

        # === Config ===
        self.token_embedding = token_embedding
        self.decoder_blocks = blocks
        self.final_norm = final_norm
        self.lm_head = lm_head
        self.vocab_size, self.num_layers, self.d_model = vocab_size, num_layers, d_model
        self.num_heads, self.max_length, self.pad_id = num_heads, max_length, pad_id
        self.tie_embeddings = tie_embeddings
        self._finish_init(dict(
            vocab_size=vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
            d_ff=d_ff, dropout=dropout, max_length=max_length, positional=positional,
            norm_first=norm_first, activation=activation, tie_embeddings=tie_embeddings,
            pad_id=pad_id, scale_embeddings=scale_embeddings,
            layer_norm_epsilon=layer_norm_epsilon,
            num_key_value_heads=num_key_value_heads, use_bias=use_bias, normalization=normalization,
            gated_feed_forward=gated_feed_forward, rotary_max_wavelength=rotary_max_wavelength,
            rotary_scaling_factor=rotary_scaling_factor, qkv_bias=qkv_bias,
            preset_name=preset_name, dtype=serializable_dtype(dtype),
        ))

    # -- incremental decoding -------------------------------------------------------------------

    def call_with_cache(self, token_ids, caches, cache_index):
        """Run `token_ids` (positions `cache_index ..`) through the model, reading and updating
        the KV caches. Returns the float32 logits of the *last* position `(batch, vocab)` and the
        updated caches. This is the whole per-token cost of generation."""
        x = self.token_embedding(token_ids, start_index=cache_index, training=False)
        new_caches = []
        for block, cache in zip(self.decoder_blocks, caches):
            x, cache = block(x, use_causal_mask=True, cache=cache, cache_index=cache_index, training=False)
            new_caches.append(cache)
        return self._project_last(x), tuple(new_caches)

    def _project_last(self, x):
        x = x[:, -1:, :]
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.token_embedding(x, reverse=True) if self.tie_embeddings else self.lm_head(x)
        return ops.cast(logits[:, 0, :], "float32")

    def _last_logits_without_cache(self, token_ids):
        return self({"token_ids": token_ids}, training=False)[:, -1, :]

    def _steppers(self, use_cache):
        import tensorflow as tf

        tokens = tf.TensorSpec((None, None), "int32")
        if not use_cache:
            full = self._compiled_function("full_forward", self._last_logits_without_cache, lambda: [tokens])
            return generation.FullRecomputeStepper(full)
        step = self._compiled_function(
            "cached_step", self.call_with_cache,
            lambda: [tokens, self._cache_signature(), tf.TensorSpec((), "int32")],
        )
        return generation.CachedStepper(step, self.initial_cache)

    def generate(
        self,
        prompt_token_ids,
        max_new_tokens,
        temperature=1.0,
        top_k=None,
        top_p=None,
        seed=None,
        end_id=None,
        use_cache=True,
        suppress_ids=None,
        allow_pad=False,
        return_lengths=False,
    ):
        """Continue each prompt by up to `max_new_tokens` tokens.

        Args:
            prompt_token_ids: one prompt (a list of ids) or a batch: a list of lists of
                different lengths, or a `(batch, length)` array right-padded with `pad_id`.
            max_new_tokens: tokens to add to each prompt.
            temperature: softmax temperature; `0.0` means greedy (argmax).
            top_k: sample only among the `top_k` most likely tokens.
            top_p: nucleus sampling: the smallest set of tokens whose probability reaches `top_p`.
            seed: seed of the host-side sampler (numpy), for reproducible sampling.
            end_id: a row stops after emitting this id; later positions hold `pad_id`.
            use_cache: use the KV cache (one step per token); False re-runs the whole sequence
                at every step (the reference the cache is tested against).
            suppress_ids: ids never to generate (besides `pad_id`).
            allow_pad: let the model generate `pad_id` (by default never: it pads the result).
            return_lengths: also return each row's length (prompt + new tokens).

        Returns:
            A numpy int32 array `(batch, length)` (or `(length,)` for a single prompt): each row
            is its prompt followed by its new tokens, right-padded with `pad_id`. With
            `return_lengths`, `(tokens, lengths)`; `tokens[i, :lengths[i]]` is row i's sequence.
        """
        prompts, lengths, single = generation.prepare_prompts(
            prompt_token_ids, self.vocab_size, self.pad_id
        )
        check_positive_int("max_new_tokens", max_new_tokens)
        end_id = generation.check_token_id("end_id", end_id, self.vocab_size, allow_none=True)
        suppress = generation.suppressed_ids(self.vocab_size, self.pad_id, end_id, suppress_ids, allow_pad)
        total = int(lengths.max()) + max_new_tokens
        if self.max_length is not None and total > self.max_length:
            raise ValueError(
                f"The longest prompt ({int(lengths.max())} tokens) plus max_new_tokens="
                f"{max_new_tokens} needs {total} positions, but this model has learned positions "
                f"for max_length={self.max_length}."
            )
        choose = generation.TokenChooser(temperature, top_k, top_p, seed)
        tokens, lengths = generation.decode(
            self._steppers(use_cache), prompts, lengths, max_new_tokens, choose, end_id, self.pad_id,
            suppress=suppress, return_lengths=True,
        )
        return generation.generation_results(tokens, lengths, single, return_lengths)
