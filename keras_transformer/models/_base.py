"""What the three models share: config round-trip, presets, output naming, compiled functions.

Each model is a *functional* `keras.Model` subclass: it builds its graph from our layers in
`__init__` and hands inputs/outputs to `keras.Model.__init__`, so `summary()`, `plot_model`,
`.keras` saving and export see every layer. Its config is exactly its constructor arguments.
"""

import types

import keras
from keras import ops

from keras_transformer import backend
from keras_transformer.layers._validation import check_choice, check_positive_int, check_rate

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

    # -- config ------------------------------------------------------------------------------

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(self._constructor_config)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, name, **overrides):
        """Build the architecture registered under preset `name` (no weights are downloaded).

        Args:
            name: a name from `keras_transformer.presets.list()` for this model class.
            **overrides: constructor arguments that replace the preset's (e.g. `vocab_size`,
                `dropout`).

        Returns:
            A freshly initialised model whose `preset_name` attribute (and config) is `name`.
        """
        from keras_transformer import presets  # presets imports the models: import lazily

        config = presets.get_config(name, model_class=cls)
        config.update(overrides)
        config["preset_name"] = name
        return cls(**config)

    @staticmethod
    def get_layout_map(device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"):
        """The `keras.distribution.LayoutMap` for `ModelParallel` (see
        `keras_transformer.distribution.get_layout_map`, which documents the arguments)."""
        from keras_transformer import distribution

        return distribution.get_layout_map(device_mesh, model_parallel_dim_name, data_parallel_dim_name)

    # -- compiled generation functions --------------------------------------------------------

    def _compiled_function(self, key, python_function, input_signature):
        """`python_function` compiled once per model for the running backend (see
        `keras_transformer.backend.compile_function`: on TensorFlow a `tf.function` with the fixed
        signature `input_signature()` of dynamic shapes, so new batch sizes or lengths never
        retrace; on JAX a stateless `jax.jit`, traced once per distinct input shape)."""
        functions, counts = self._compiled.functions, self._compiled.trace_counts
        if key not in functions:
            counts[key] = 0

            def counted(*args):
                counts[key] += 1  # runs only while tracing (on TF and JAX)
                return python_function(*args)

            functions[key] = backend.compile_function(counted, self, input_signature)
        return functions[key]

    # -- KV caches (models with `decoder_blocks`, `num_heads`, `d_model`) ---------------------

    def initial_cache(self, batch_size, max_length):
        """Zeroed self-attention KV caches, one `(batch, 2, num_heads, max_length, head_dim)`
        tensor per decoder block, in the blocks' compute dtype (Keras casts a float cache
        passed to a block to that dtype anyway)."""
        shape = (batch_size, 2, self.num_heads, max_length, self.d_model // self.num_heads)
        dtype = self.decoder_blocks[0].compute_dtype
        return tuple(ops.zeros(shape, dtype=dtype) for _ in self.decoder_blocks)

    def _cache_signature(self):
        """`tf.TensorSpec`s of the caches: batch and cache length stay dynamic (no retracing)."""
        shape = (None, 2, self.num_heads, None, self.d_model // self.num_heads)
        dtype = self.decoder_blocks[0].compute_dtype
        return tuple(tensor_spec(shape, dtype) for _ in self.decoder_blocks)

    @property
    def generation_trace_counts(self):
        """How often each compiled generation function was traced (`{name: count}`)."""
        return dict(self._compiled.trace_counts)


def tensor_spec(shape, dtype):
    """A `tf.TensorSpec` for a TensorFlow signature (only ever called on the TensorFlow backend)."""
    import tensorflow as tf

    return tf.TensorSpec(shape, dtype)


def check_common_args(vocab_size, d_model, num_heads, d_ff, dropout, max_length, positional, pad_id):
    """Validate the arguments every model has; raise early with the argument and the value."""
    check_positive_int("vocab_size", vocab_size)
    check_positive_int("d_model", d_model)
    check_positive_int("num_heads", num_heads)
    check_positive_int("d_ff", d_ff)
    check_rate("dropout", dropout)
    check_choice("positional", positional, ("sinusoidal", "learned"))
    check_positive_int("max_length", max_length, allow_none=positional == "sinusoidal")
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
