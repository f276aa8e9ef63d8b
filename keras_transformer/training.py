"""The paper's training recipe (section 5.3/5.4) as Keras objects usable in `compile()`/`fit()`.

Example:
>>> model.compile(
...     optimizer=keras.optimizers.Adam(NoamSchedule(d_model=512), beta_1=0.9, beta_2=0.98, epsilon=1e-9),
...     loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1, pad_id=0),
...     metrics=[MaskedAccuracy(pad_id=0), Perplexity(pad_id=0)],
... )
"""

from keras_transformer import backend as _backend

_backend.check_installed()  # before Keras: a missing backend gets the install command

import keras
import numpy as np
from keras import ops

__all__ = [
    "MaskedAccuracy",
    "MaskedSparseCategoricalCrossentropy",
    "NoamSchedule",
    "Perplexity",
    "paper_optimizer",
    "shift_right",
]


def _set_keras_mask(tensor, mask):
    """Attach a Keras mask; `Loss.__call__` then averages over the masked-in entries only."""
    try:  # Keras 3 keeps the setter internal (the public losses use it the same way)
        from keras.src.backend.common.masking import set_keras_mask
    except ImportError:  # pragma: no cover - other Keras layouts
        tensor._keras_mask = mask
        return
    set_keras_mask(tensor, mask)


def _check_pad_id(pad_id):
    if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0):
        raise ValueError(f"`pad_id` must be a non-negative integer or None; received pad_id={pad_id!r}.")
    return pad_id


@keras.saving.register_keras_serializable(package="keras_transformer")
class NoamSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)` (paper eq. 3).

    Linear warm-up for `warmup_steps`, then decay with the inverse square root of the step.
    `step` is `optimizer.iterations + 1`, so the first update uses step 1 (never 0).

    Args:
        d_model: model width.
        warmup_steps: warm-up length (4000 in the paper).
        scale: a constant factor (1.0 in the paper).
    """

    def __init__(self, d_model, warmup_steps=4000, scale=1.0):
        for name, value in (("d_model", d_model), ("warmup_steps", warmup_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer; received {name}={value!r}.")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"`scale` must be a positive number; received scale={scale!r}.")
        self.d_model, self.warmup_steps, self.scale = d_model, warmup_steps, float(scale)

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        return self.scale * self.d_model**-0.5 * ops.minimum(
            ops.rsqrt(step), step * self.warmup_steps**-1.5
        )

    def get_config(self):
        return {"d_model": self.d_model, "warmup_steps": self.warmup_steps, "scale": self.scale}


def paper_optimizer(d_model, warmup_steps=4000):
    """Adam(beta_1=0.9, beta_2=0.98, epsilon=1e-9) with the Noam schedule (paper 5.3)."""
    return keras.optimizers.Adam(NoamSchedule(d_model, warmup_steps), beta_1=0.9, beta_2=0.98, epsilon=1e-9)


def _token_cross_entropy(y_true, y_pred, label_smoothing):
    """Per-token cross-entropy of logits against smoothed one-hot targets (float32).

    The target puts `1 - label_smoothing` on the true id plus `label_smoothing / vocab` on every
    id (Szegedy et al. 2016), so `loss = -(1 - eps) log p[y] - eps * mean(log p)`.
    """
    log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
    labels = ops.cast(y_true, "int32")
    true_log_prob = ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1), -1)
    loss = -(1.0 - label_smoothing) * true_log_prob
    if label_smoothing:
        loss = loss - label_smoothing * ops.mean(log_probs, axis=-1)
    return loss


def _not_pad(y_true, pad_id):
    if pad_id is None:
        return ops.ones(ops.shape(y_true), dtype="bool")
    return ops.not_equal(ops.cast(y_true, "int32"), pad_id)


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy from logits, with label smoothing, ignoring padding.

    The loss is the mean over non-pad target tokens: the per-token losses carry a Keras mask,
    so `compile()`/`fit()` average over real tokens only. A `sample_weight` of shape
    `(batch, length)` multiplies per token (the mean is still over the real tokens).

    Args:
        label_smoothing: `eps_ls` (0.1 in the paper).
        pad_id: target id to ignore; None ignores nothing.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.

    Example:
    >>> loss = MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
    >>> float(loss(np.array([[3, 0]]), np.zeros((1, 2, 5))))  # the pad position is ignored
    1.6094379
    """

    def __init__(self, label_smoothing=0.1, pad_id=0, name="masked_sparse_categorical_crossentropy",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        valid = isinstance(label_smoothing, (int, float)) and not isinstance(label_smoothing, bool)
        if not valid or not 0 <= label_smoothing < 1:
            raise ValueError(
                f"`label_smoothing` must be in [0, 1); received label_smoothing={label_smoothing!r}."
            )
        self.label_smoothing = float(label_smoothing)
        self.pad_id = _check_pad_id(pad_id)

    def call(self, y_true, y_pred):
        loss = _token_cross_entropy(y_true, y_pred, self.label_smoothing)
        mask = _not_pad(y_true, self.pad_id)
        loss = ops.where(mask, loss, 0.0)
        _set_keras_mask(loss, mask)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(label_smoothing=self.label_smoothing, pad_id=self.pad_id)
        return config


class _MaskedMean(keras.metrics.Metric):
    """A running `sum(value * weight) / sum(weight)` over non-pad target tokens."""

    def __init__(self, pad_id=0, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.pad_id = _check_pad_id(pad_id)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def token_values(self, y_true, y_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        weights = ops.cast(_not_pad(y_true, self.pad_id), "float32")
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, "float32")
            while len(sample_weight.shape) < len(weights.shape):
                sample_weight = ops.expand_dims(sample_weight, -1)
            weights = weights * sample_weight
        values = ops.cast(self.token_values(y_true, y_pred), "float32")
        self.total.assign_add(ops.sum(values * weights))
        self.count.assign_add(ops.sum(weights))

    def mean(self):
        return ops.divide_no_nan(self.total, self.count)

    def result(self):
        return self.mean()

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedAccuracy(_MaskedMean):
    """Token accuracy (`argmax(logits) == target`) over non-pad target tokens."""

    def __init__(self, pad_id=0, name="masked_accuracy", dtype=None):
        super().__init__(pad_id=pad_id, name=name, dtype=dtype)

    def token_values(self, y_true, y_pred):
        predicted = ops.argmax(y_pred, axis=-1)
        return ops.equal(ops.cast(predicted, "int32"), ops.cast(y_true, "int32"))


@keras.saving.register_keras_serializable(package="keras_transformer")
class Perplexity(_MaskedMean):
    """`exp(mean cross-entropy)` over non-pad target tokens, from logits, without smoothing."""

    def __init__(self, pad_id=0, name="perplexity", dtype=None):
        super().__init__(pad_id=pad_id, name=name, dtype=dtype)

    def token_values(self, y_true, y_pred):
        return _token_cross_entropy(y_true, y_pred, 0.0)

    def result(self):
        return ops.exp(self.mean())


def shift_right(target_token_ids, start_id, pad_id=0):
    """Teacher-forcing decoder inputs: `[start_id] + target[:-1]` per row (numpy, host side).

    Args:
        target_token_ids: `(batch, length)` targets, right-padded with `pad_id`.
        start_id: the id every decoder input starts with.
        pad_id: unused positions stay `pad_id`.

    Returns:
        `(batch, length)` int32 decoder inputs; train with
        `({"encoder_token_ids": source, "decoder_token_ids": shift_right(target, ...)}, target)`.
    """
    target = np.asarray(target_token_ids)
    if target.ndim != 2:
        raise ValueError(f"`target_token_ids` must be 2-D (batch, length); received shape {target.shape}.")
    shifted = np.full(target.shape, pad_id, dtype=np.int32)
    shifted[:, 0] = start_id
    shifted[:, 1:] = target[:, :-1]
    return shifted
