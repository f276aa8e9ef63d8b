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


def _unpaired(entry):
    """The layer of an `attention_layers` `(path, layer)` pair, or `entry` itself."""
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
        return entry[1]
    return entry


def capture_attention(model, inputs, layers):
    """Run `model(inputs)` once (inference mode) and return the attention probabilities used.

    Args:
        model: a Keras model or layer (called eagerly with `training=False`), or any callable
            that runs the layers.
        inputs: what `model` takes (array, dict of arrays, ...).
        layers: `MultiHeadAttention` layers inside `model`, or the `(path, layer)` pairs of
            `attention_layers(model)` as they are.

    Returns:
        A list with one numpy array per layer, shape `(batch, num_heads, query_length,
        key_length)`; each row is a probability distribution (sums to 1). If a layer runs more
        than once per call, the probabilities of its last run are returned.

    Raises:
        ValueError: if a layer did not run during the call.
    """
    layers = [_unpaired(entry) for entry in layers]
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


def _tick_labels(axis, which, labels):
    """Labels of the x or y ticks; short tokens (characters) stay upright, longer ones turn."""
    if labels is None:
        return
    upright = which == "y" or max((len(str(label)) for label in labels), default=0) <= 2
    getattr(axis, f"set_{which}ticks")(range(len(labels)))
    getattr(axis, f"set_{which}ticklabels")(labels, rotation=0 if upright else 90, fontsize=8)


def _heat(axis, matrix, key_labels, query_labels, title, axis_titles):
    image = axis.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_title(title, fontsize=9)
    _tick_labels(axis, "x", key_labels)
    _tick_labels(axis, "y", query_labels)
    axis.set_xlabel(axis_titles[0], fontsize=8)
    axis.set_ylabel(axis_titles[1], fontsize=8)
    return image


def _head_columns(heads):
    """Columns of the per-head grid with no empty slot: the largest divisor of `heads` up to 4
    (a prime number of heads above 3 gets one row)."""
    columns = max(c for c in range(1, min(heads, 4) + 1) if heads % c == 0)
    return heads if columns == 1 else columns


def attention_figure(scores, key_labels=None, query_labels=None, title=None, per_head=True,
                     key_title="attended to (keys)", query_title="attending (queries)"):
    """The figure of `plot_attention` (not saved): the head average centred on top, then one
    panel per head in a grid without empty slots. Arguments as `plot_attention`.

    Returns:
        A matplotlib `Figure`; close it with `matplotlib.pyplot.close(fig)`.
    """
    scores = _check_scores(scores)
    heads, query_length, key_length = scores.shape
    for name, labels, size in (("key_labels", key_labels, key_length),
                               ("query_labels", query_labels, query_length)):
        if labels is not None and len(labels) != size:
            raise ValueError(
                f"`{name}` must have {size} entries to match the scores; received {len(labels)}."
            )
    head_panels = [(f"head {i}", scores[i]) for i in range(heads)] if per_head and heads > 1 else []
    columns = _head_columns(heads) if head_panels else 1
    rows = 1 + math.ceil(len(head_panels) / columns)
    width = max(3.5, key_length * 0.25 + 1.8)
    height = max(2.8, query_length * 0.25 + 1.6)
    plt = _pyplot()
    # Constrained layout keeps the suptitle, panel titles, axis titles and colour bar apart.
    fig = plt.figure(figsize=(width * columns + 1.0, height * rows + (0.5 if title else 0.0)), layout="constrained")
    # Half-width grid cells: each head spans two, and the average the two in the middle, so it
    # is centred above the heads at the size of one head panel.
    grid = fig.add_gridspec(rows, 2 * columns)
    panels = [(fig.add_subplot(grid[0, columns - 1:columns + 1]), f"average of {heads} heads", scores.mean(axis=0))]
    panels += [(fig.add_subplot(grid[1 + i // columns, 2 * (i % columns):2 * (i % columns) + 2]), name, matrix)
               for i, (name, matrix) in enumerate(head_panels)]
    for axis, name, matrix in panels:
        image = _heat(axis, matrix, key_labels, query_labels, name, (key_title, query_title))
    fig.colorbar(image, ax=[axis for axis, _, _ in panels], shrink=0.8, label="attention probability")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_attention(scores, key_labels=None, query_labels=None, path="attention.png", title=None,
                   per_head=True, key_title="attended to (keys)", query_title="attending (queries)"):
    """Save an attention heat map: the head average, and (optionally) one panel per head.

    Args:
        scores: one example's probabilities, `(num_heads, query_length, key_length)` (e.g.
            `capture_attention(...)[i][example]`) or `(query_length, key_length)`.
        key_labels: tokens on the x axis (what is attended to), `key_length` strings.
        query_labels: tokens on the y axis (who attends), `query_length` strings.
        path: PNG file to write; parent folders are created.
        title: figure title.
        per_head: also draw each head.
        key_title, query_title: the x and y axis titles (e.g. "source" and "output" for
            cross-attention).

    Returns:
        `path`.
    """
    return _save(attention_figure(scores, key_labels, query_labels, title, per_head, key_title, query_title), path)


def plot_training_curves(history, path="training_curves.png", title=None):
    """Save loss and metrics per epoch from a `keras.callbacks.History` (or its `.history` dict).

    Each quantity gets its own panel; `val_<name>` is drawn in the same panel as `<name>`.

    Returns:
        `path`.
    """
    return _save(training_curves_figure(history, title), path)


def training_curves_figure(history, title=None):
    """The figure of `plot_training_curves` (not saved); close it with `pyplot.close(fig)`."""
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ValueError(
            "`history` must be a keras History (from `model.fit`) or a non-empty dict of "
            f"per-epoch lists; received {type(history).__name__}."
        )
    names = [name for name in logs if not name.startswith("val_") and name != "learning_rate"]
    names += [name[4:] for name in logs if name.startswith("val_") and name[4:] not in logs]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False, layout="constrained")
    for axis, name in zip(axes.flat, names):
        for key, style in ((name, "o-"), ("val_" + name, "s--")):
            if key in logs:
                values = [float(v) for v in logs[key]]
                axis.plot(range(1, len(values) + 1), values, style, label=key, markersize=3)
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


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
