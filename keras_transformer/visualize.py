"""Pictures of what a transformer does: attention heat maps and training curves (PNG files).

Attention probabilities are captured from the real forward pass: `capture_attention` runs a
model (or any callable) once while the chosen `MultiHeadAttention` layers are asked for
`return_attention_scores=True`, and hands back exactly the probabilities those layers used.
matplotlib is imported lazily (Agg backend, no display needed), so importing this module costs
nothing for users who never draw.

Example:
>>> scores = capture_attention(model, inputs, [block.self_attention])[0]  # doctest: +SKIP
>>> plot_attention(scores[0], source_tokens, target_tokens, "attention.png")  # doctest: +SKIP
>>> plot_training_curves(history, "curves.png")  # doctest: +SKIP
"""

import contextlib
import math
import os

import keras
import numpy as np
from keras import ops

from keras_transformer.layers.multi_head_attention import MultiHeadAttention


def _pyplot():
    """matplotlib.pyplot with the file-only Agg backend (works on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def attention_layers(model):
    """Every `MultiHeadAttention` inside `model` (nested layers included), in build order.

    Returns:
        A list of `(path, layer)` pairs, e.g. `("decoder_block_0/cross_attention", layer)`.
    """
    found = []

    def visit(layer, prefix):
        for child in getattr(layer, "_layers", []) or []:
            path = f"{prefix}{child.name}"
            if isinstance(child, MultiHeadAttention):
                found.append((path, child))
            visit(child, path + "/")

    visit(model, "")
    return found


@contextlib.contextmanager
def _recording(layer, sink):
    """While active, `layer` also computes its attention probabilities and appends them to `sink`."""
    if not isinstance(layer, MultiHeadAttention):
        raise TypeError(
            "`layers` must contain keras_transformer MultiHeadAttention layers; received "
            f"{type(layer).__name__} ({getattr(layer, 'name', layer)!r})."
        )
    original = layer.call

    def call_and_record(*args, **kwargs):
        wanted = kwargs.get("return_attention_scores", False)
        kwargs["return_attention_scores"] = True
        result = original(*args, **kwargs)
        sink.append(ops.convert_to_numpy(result[1]))
        if wanted:
            return result
        rest = (result[0],) + tuple(result[2:])
        return rest[0] if len(rest) == 1 else rest

    # An instance attribute shadows the class method for this layer only; removed afterwards.
    object.__setattr__(layer, "call", call_and_record)
    try:
        yield
    finally:
        object.__delattr__(layer, "call")


def capture_attention(model, inputs, layers):
    """Run `model(inputs)` once (inference mode) and return the attention probabilities used.

    Args:
        model: a Keras model or layer (called eagerly with `training=False`), or any callable
            that runs the layers.
        inputs: what `model` takes (array, dict of arrays, ...).
        layers: `MultiHeadAttention` layers inside `model` (see `attention_layers`).

    Returns:
        A list with one numpy array per layer, shape `(batch, num_heads, query_length,
        key_length)`; each row is a probability distribution (sums to 1). If a layer runs more
        than once per call, the probabilities of its last run are returned.

    Raises:
        ValueError: if a layer did not run during the call.
    """
    layers = list(layers)
    sinks = [[] for _ in layers]
    with contextlib.ExitStack() as stack:
        for layer, sink in zip(layers, sinks):
            stack.enter_context(_recording(layer, sink))
        if isinstance(model, keras.layers.Layer):
            model(inputs, training=False)
        else:
            model(inputs)
    for layer, sink in zip(layers, sinks):
        if not sink:
            raise ValueError(
                f"Layer {layer.name!r} did not run while calling the model; pass layers that "
                "belong to it (see `attention_layers(model)`)."
            )
    return [sink[-1] for sink in sinks]


def _check_scores(scores):
    scores = np.asarray(scores, dtype="float32")
    if scores.ndim == 2:
        scores = scores[None]
    if scores.ndim != 3:
        raise ValueError(
            "`scores` must have shape (num_heads, query_length, key_length) or (query_length, "
            f"key_length) for one example; received shape {scores.shape}."
        )
    return scores


def _save(fig, path):
    plt = _pyplot()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _heat(axis, matrix, key_labels, query_labels, title):
    image = axis.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_title(title, fontsize=9)
    if key_labels is not None:
        axis.set_xticks(range(len(key_labels)))
        axis.set_xticklabels(key_labels, rotation=90, fontsize=7)
    if query_labels is not None:
        axis.set_yticks(range(len(query_labels)))
        axis.set_yticklabels(query_labels, fontsize=7)
    return image


def plot_attention(scores, key_labels=None, query_labels=None, path="attention.png", title=None,
                   per_head=True):
    """Save an attention heat map: the head average, and (optionally) one panel per head.

    Args:
        scores: one example's probabilities, `(num_heads, query_length, key_length)` (e.g.
            `capture_attention(...)[i][example]`) or `(query_length, key_length)`.
        key_labels: tokens on the x axis (what is attended to), `key_length` strings.
        query_labels: tokens on the y axis (who attends), `query_length` strings.
        path: PNG file to write; parent folders are created.
        title: figure title.
        per_head: also draw each head.

    Returns:
        `path`.
    """
    scores = _check_scores(scores)
    heads, query_length, key_length = scores.shape
    for name, labels, size in (("key_labels", key_labels, key_length),
                               ("query_labels", query_labels, query_length)):
        if labels is not None and len(labels) != size:
            raise ValueError(
                f"`{name}` must have {size} entries to match the scores; received {len(labels)}."
            )
    panels = [("average of %d heads" % heads, scores.mean(axis=0))]
    if per_head and heads > 1:
        panels += [(f"head {i}", scores[i]) for i in range(heads)]
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    cell = 0.25
    width = max(3.0, key_length * cell + 1.5)
    height = max(2.5, query_length * cell + 1.2)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for axis, (name, matrix) in zip(axes.flat, panels):
        image = _heat(axis, matrix, key_labels, query_labels, name)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention probability")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_training_curves(history, path="training_curves.png", title=None):
    """Save loss and metrics per epoch from a `keras.callbacks.History` (or its `.history` dict).

    Each quantity gets its own panel; `val_<name>` is drawn in the same panel as `<name>`.

    Returns:
        `path`.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ValueError(
            "`history` must be a keras History (from `model.fit`) or a non-empty dict of "
            f"per-epoch lists; received {type(history).__name__}."
        )
    names = [name for name in logs if not name.startswith("val_") and name != "learning_rate"]
    names += [name[4:] for name in logs if name.startswith("val_") and name[4:] not in logs]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for axis, name in zip(axes.flat, names):
        for key, style in ((name, "o-"), ("val_" + name, "s--")):
            if key in logs:
                values = [float(v) for v in logs[key]]
                axis.plot(range(1, len(values) + 1), values, style, label=key, markersize=3)
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        fig.suptitle(title, y=1.03)
    return _save(fig, path)


def plot_confusion_matrix(matrix, labels, path="confusion_matrix.png", title=None):
    """Save a confusion matrix (rows: true class, columns: predicted) with counts in the cells.

    Returns:
        `path`.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(labels):
        raise ValueError(
            f"`matrix` must be square with one row per label ({len(labels)}); received shape "
            f"{matrix.shape}."
        )
    plt = _pyplot()
    size = max(3.5, 0.45 * len(labels) + 2)
    fig, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(labels)))
    axis.set_xticklabels(labels, rotation=90, fontsize=8)
    axis.set_yticks(range(len(labels)))
    axis.set_yticklabels(labels, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    limit = matrix.max() / 2 if matrix.size else 0
    for (row, column), value in np.ndenumerate(matrix):
        axis.text(column, row, str(value), ha="center", va="center", fontsize=7,
                  color="white" if value > limit else "black")
    if title:
        axis.set_title(title)
    return _save(fig, path)


def plot_bars(values, path, title=None, ylabel=None):
    """Save a horizontal bar chart of `{label: value}` (used by the benchmarks).

    Returns:
        `path`.
    """
    if not values:
        raise ValueError("`values` must be a non-empty dict of {label: number}; received none.")
    plt = _pyplot()
    labels = list(values)
    fig, axis = plt.subplots(figsize=(7.5, 0.45 * len(labels) + 1.2))
    bars = axis.barh(range(len(labels)), [float(values[k]) for k in labels], color="tab:blue")
    axis.set_yticks(range(len(labels)))
    axis.set_yticklabels(labels, fontsize=8)
    axis.invert_yaxis()
    axis.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    if ylabel:
        axis.set_xlabel(ylabel)
    if title:
        axis.set_title(title, fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    return _save(fig, path)
