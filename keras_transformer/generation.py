"""Autoregressive decoding for the Keras models: greedy, sampling and beam search.

The decoding *loop* runs on the host in numpy (`keras_transformer.search`, shared with ONNX
Runtime generation in `export.decoding`, which therefore reproduces it token for token; the
algorithm is documented there). This module adds the Keras side: steppers whose per-token model
*step* is a compiled function of the model (`tf.function` with a fixed signature of dynamic
shapes, traced once per model) that reads and updates the KV cache, so each new token costs one
step, and a reference stepper that recomputes the whole sequence.

Example:
>>> model = DecoderOnlyTransformer(vocab_size=50, num_layers=1, d_model=16, num_heads=2,
...                                d_ff=32)  # doctest: +SKIP
>>> model.generate([[5, 6, 7], [8]], max_new_tokens=4, temperature=0.0)  # doctest: +SKIP
"""

from keras_transformer import backend as _backend

_backend.check_installed()  # before Keras: a missing backend gets the install command

import numpy as np
from keras import ops

from keras_transformer import search
from keras_transformer.search import *  # noqa: F403 - re-exports the shared loop (`search.__all__`)

__all__ = ["CachedStepper", "FullRecomputeStepper", *search.__all__]


class CachedStepper:
    """Stepper (see `keras_transformer.search`) over a compiled step with a KV cache.

    The caches stay on the device between steps; only the last position's logits come back.

    Args:
        step: `step(tokens, caches, cache_index, *extra) -> (last_logits, caches)`.
        initial_cache: `initial_cache(batch, total_length) -> caches` (preallocated).
        extra: further tensors passed to every step (e.g. cross-attention caches).
    """

    def __init__(self, step, initial_cache, extra=()):
        self.compiled_step, self.initial_cache, self.extra = step, initial_cache, tuple(extra)

    def reset(self, batch, total_length):
        self.caches = self.initial_cache(batch, total_length)

    def step(self, new_tokens, index):
        logits, self.caches = self.compiled_step(
            ops.convert_to_tensor(new_tokens, "int32"), self.caches,
            ops.convert_to_tensor(index, "int32"), *self.extra,
        )
        return ops.convert_to_numpy(logits)

    def reorder(self, rows):
        rows = ops.convert_to_tensor(rows, "int32")
        self.caches = tuple(ops.take(cache, rows, axis=0) for cache in self.caches)


class FullRecomputeStepper:
    """Reference stepper without a cache: re-runs the model on the whole sequence every step.

    Args:
        full: `full(tokens, *extra) -> (batch, vocab)` logits of the last position.
        extra: further tensors passed to every call (e.g. the source ids).
    """

    def __init__(self, full, extra=()):
        self.full, self.extra = full, tuple(extra)

    def reset(self, batch, total_length):
        del total_length
        self.history = np.zeros((batch, 0), dtype=np.int32)

    def step(self, new_tokens, index):
        self.history = np.concatenate([self.history[:, :index], new_tokens], axis=1).astype(np.int32)
        return ops.convert_to_numpy(self.full(ops.convert_to_tensor(self.history, "int32"), *self.extra))

    def reorder(self, rows):
        self.history = self.history[rows]
