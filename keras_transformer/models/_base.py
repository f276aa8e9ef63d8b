"""What the three models share: config round-trip, presets, output naming, compiled functions.

Each model is a *functional* `keras.Model` subclass: it builds its graph from our layers in
`__init__` and hands inputs/outputs to `keras.Model.__init__`, so `summary()`, `plot_model`,
`.keras` saving and export see every layer. Its config is exactly its constructor arguments.
"""

import inspect
import os
import types

import keras

from keras_transformer.layers._validation import check_choice, check_positive_int, check_rate
from keras_transformer.layers.cache import CacheSpec

__all__ = ["TransformerModel"]


class TransformerModel(keras.Model):
    """Base class: stores constructor arguments, `get_config`/`from_config`, `from_preset`.

    Subclasses call `self._finish_init(config)` after `super().__init__(inputs=..., outputs=...)`.
    """

    def _finish_init(self, config):
        self._constructor_config = dict(config)
        self.preset_name = config.get("preset_name")
        # Compiled generation functions live in a plain object: SavedModel tracking ignores it,
        # so exporting a model never traces or saves them.
        self._compiled = types.SimpleNamespace(functions={}, trace_counts={})

    def __call__(self, *args, **kwargs):
        # A single-input model takes its one array as is (`model(ids)`, `fit(ids, labels)`):
        # named here, Keras does not warn that the structure of `inputs` is not its dict.
        structure = getattr(self, "_inputs_struct", None)
        if args and isinstance(structure, dict) and len(structure) == 1 and not isinstance(args[0], dict):
            args = ({next(iter(structure)): args[0]}, *args[1:])
        return super().__call__(*args, **kwargs)

    # -- config ------------------------------------------------------------------------------

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(self._constructor_config)
        quantized = self._quantized_policy_map()
        if quantized is not None:
            config["dtype"] = keras.dtype_policies.serialize(quantized)
        if getattr(self, "_lora", None):
            config["lora"] = dict(self._lora)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        lora = config.pop("lora", None)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        model = cls(**config)
        if lora:
            model.enable_lora(**lora)
        return model

    def _quantized_policy_map(self):
        """A `DTypePolicyMap` of the quantized layers (by path), or None when none is quantized:
        passed back as `dtype`, it rebuilds each quantized sub-layer with its integer weights."""
        layers = [layer for layer in self._flatten_layers(include_self=False) if layer.quantization_mode]
        if not layers:
            return None
        default = self._constructor_config.get("dtype")
        if isinstance(default, dict):  # already a map: its default policy
            default = keras.dtype_policies.deserialize(default).default_policy
        policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=default)
        for layer in layers:
            policy = layer.dtype_policy
            if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
                policy = policy[layer.path]
            policy_map[layer.path] = policy
        return policy_map

    # -- LoRA ----------------------------------------------------------------------------------

    def enable_lora(self, rank, target_names=("query", "value"), lora_alpha=None):
        """Freeze the model and train low-rank adapters on the named projections (LoRA).

        Like keras-hub's backbones: every weight becomes non-trainable, then each projection
        sub-layer whose name is in `target_names` gets Keras's own LoRA adapters
        (`EinsumDense.enable_lora` / `Dense.enable_lora`), which are then the only trainable
        weights. `fit` trains them; `.keras` files save and reload them; `export.to_onnx`
        writes the merged kernels.

        Args:
            rank: rank of the adapters.
            target_names: projection names: attention `"query"`, `"key"`, `"value"`,
                `"attention_output"`; feed-forward `"intermediate_dense"`, `"gate_dense"`,
                `"output_dense"`; `"lm_head"`.
            lora_alpha: scale numerator (`lora_alpha / rank`); defaults to `rank`.
        """
        check_positive_int("rank", rank)
        if isinstance(target_names, str) or not target_names or not all(isinstance(n, str) for n in target_names):
            raise ValueError(
                f"`target_names` must be a non-empty list of layer names; received target_names={target_names!r}."
            )
        if getattr(self, "_lora", None):
            raise ValueError(f"LoRA is already enabled on this model (rank {self._lora['rank']}).")
        layers = [layer for layer in self._flatten_layers(include_self=False) if hasattr(layer, "enable_lora")]
        targets = [layer for layer in layers if layer.name in target_names]
        if not targets:
            raise ValueError(
                f"No projection of this model is named one of target_names={list(target_names)!r}; "
                f"projection names: {sorted({layer.name for layer in layers})}."
            )
        self.trainable = True
        for layer in self._flatten_layers(include_self=False):
            layer.trainable = False
        for layer in targets:
            layer.trainable = True
            layer.enable_lora(rank, lora_alpha=lora_alpha)
            if getattr(layer, "bias", None) is not None:
                layer.bias.trainable = False  # only the adapters train
        self._lora = {"rank": rank, "target_names": list(target_names), "lora_alpha": lora_alpha}
        self._forget_compiled_functions()

    def quantize(self, *args, **kwargs):
        """Keras's `Model.quantize`; compiled generation functions are rebuilt afterwards."""
        super().quantize(*args, **kwargs)
        self._forget_compiled_functions()

    def _forget_compiled_functions(self):
        """Drop every compiled function: ones traced before LoRA or quantization changed the
        projections would keep computing with the old kernels."""
        self.train_function = self.test_function = self.predict_function = None
        self._compiled.functions.clear()

    @classmethod
    def from_preset(cls, name, **overrides):
        """Build preset `name`, or load a local checkpoint directory.

        Args:
            name: a name from `keras_transformer.presets.list()` for this model class (the
                architecture only: nothing is downloaded), or the path of a local **keras-hub
                preset directory** or **Hugging Face checkpoint directory** (format detected;
                see `keras_transformer.checkpoints`).
            **overrides: constructor arguments that replace the preset's or checkpoint's
                (e.g. `dropout`, `dtype`).

        Returns:
            For a preset name, a freshly initialised model whose `preset_name` attribute (and
            config) is `name`; for a directory, the model holding the checkpoint's weights.
        """
        if isinstance(name, os.PathLike) or (isinstance(name, str) and (os.sep in name or os.path.isdir(name))):
            from keras_transformer import checkpoints

            return checkpoints.load(name, model_class=cls, **overrides)
        from keras_transformer import presets  # presets imports the models: import lazily

        config = presets.get_config(name, model_class=cls)
        config.update(overrides)
        config["preset_name"] = name
        return cls(**config)

    def save_to_preset(self, path):
        """Write this model as a keras-hub preset directory (`config.json`, `model.weights.h5`)
        that keras-hub's `Backbone.from_preset(path)` loads (GPT-2, Llama family, ...). Needs
        keras-hub installed. Written atomically."""
        from keras_transformer import checkpoints

        checkpoints.save_to_preset(self, path)

    def export_to_transformers(self, path, tokenizer=None):
        """Write this model as a Hugging Face checkpoint directory (`config.json`,
        `model.safetensors`, and `tokenizer.json` from a `tokenizers.Tokenizer`). Written
        atomically."""
        from keras_transformer import checkpoints

        checkpoints.export_to_transformers(self, path, tokenizer=tokenizer)

    # -- compiled generation functions --------------------------------------------------------

    def _compiled_function(self, key, python_function, input_signature):
        """`python_function` compiled once per model (a `tf.function` with a fixed signature of
        dynamic shapes, so new batch sizes or lengths never retrace); plain on other backends."""
        functions, counts = self._compiled.functions, self._compiled.trace_counts
        if key not in functions:
            counts[key] = 0

            def counted(*args):
                counts[key] += 1  # runs only while tracing
                return python_function(*args)

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                functions[key] = tf.function(counted, input_signature=input_signature(), autograph=False)
            else:
                functions[key] = counted
        return functions[key]

    # -- KV caches (models with `decoder_blocks`) ------------------------------------------------

    @property
    def cache_spec(self):
        """The `CacheSpec` of the decoder's self-attention caches (one per decoder block)."""
        attention = self.decoder_blocks[0].self_attention
        return CacheSpec(
            len(self.decoder_blocks), attention.kv_heads, attention.head_dim,
            self.decoder_blocks[0].compute_dtype,
        )

    def initial_cache(self, batch_size, max_length):
        """Zeroed self-attention KV caches, one `(batch, 2, kv_heads, max_length, head_dim)`
        tensor per decoder block, in the blocks' compute dtype (Keras casts a float cache
        passed to a block to that dtype anyway)."""
        return self.cache_spec.zeros(batch_size, max_length)

    def _cache_signature(self):
        """`tf.TensorSpec`s of the caches: batch and cache length stay dynamic (no retracing)."""
        import tensorflow as tf

        spec = self.cache_spec
        return tuple(tf.TensorSpec(spec.shape(None, None), spec.dtype) for _ in range(spec.num_layers))

    @property
    def generation_trace_counts(self):
        """How often each compiled generation function was traced (`{name: count}`)."""
        return dict(self._compiled.trace_counts)


POSITIONALS = ("sinusoidal", "learned", "rotary")


def reject_unknown_arguments(model_class, kwargs):
    """ValueError naming the arguments `model_class.__init__` does not take (a typo such as
    `scale_embedding=False` must not be silently ignored)."""
    if kwargs:
        valid = [p for p in inspect.signature(model_class.__init__).parameters if p not in ("self", "kwargs")]
        raise ValueError(
            f"{model_class.__name__} got unknown argument(s) {sorted(kwargs)}; it takes: {', '.join(valid)}."
        )


def block_options(positional, num_key_value_heads, use_bias, normalization, gated_feed_forward,
                  rotary_max_wavelength, rotary_scaling_factor, qkv_bias=None):
    """The modern-decoder options every block of a model shares (rotary only when
    `positional="rotary"`)."""
    return dict(
        num_key_value_heads=num_key_value_heads, use_bias=use_bias, normalization=normalization,
        gated_feed_forward=gated_feed_forward,
        rotary_max_wavelength=rotary_max_wavelength if positional == "rotary" else None,
        rotary_scaling_factor=rotary_scaling_factor, qkv_bias=qkv_bias,
    )


def embedding_positional(positional):
    """What the embedding adds: rotary positions enter inside attention instead."""
    return "none" if positional == "rotary" else positional


def normalization_layer(normalization, epsilon, dtype, name):
    """The final norm of pre-norm stacks: LayerNorm or RMSNorm."""
    if normalization == "rms_norm":
        return keras.layers.RMSNormalization(epsilon=epsilon, dtype=dtype, name=name)
    return keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)


def check_common_args(vocab_size, d_model, num_heads, d_ff, dropout, max_length, positional, pad_id):
    """Validate the arguments every model has; raise early with the argument and the value."""
    check_positive_int("vocab_size", vocab_size)
    check_positive_int("d_model", d_model)
    check_positive_int("num_heads", num_heads)
    check_positive_int("d_ff", d_ff)
    check_rate("dropout", dropout)
    check_choice("positional", positional, POSITIONALS)
    check_positive_int("max_length", max_length, allow_none=positional != "learned")
    if d_model % num_heads:
        raise ValueError(
            f"`d_model` must be divisible by `num_heads`; received d_model={d_model}, "
            f"num_heads={num_heads}."
        )
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not 0 <= pad_id < vocab_size:
        raise ValueError(
            f"`pad_id` must be an integer in [0, vocab_size={vocab_size}); received pad_id={pad_id!r}."
        )


def output_layer(name):
    """A float32 identity that names the model output (`logits` / `hidden_states`): exporters
    find outputs by this name, and float32 keeps logits exact under mixed precision."""
    return keras.layers.Activation("linear", dtype="float32", name=name)


def serializable_dtype(dtype):
    """The `dtype` constructor argument in a JSON-friendly form (None, a name, or a policy config)."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    return keras.dtype_policies.serialize(dtype)
