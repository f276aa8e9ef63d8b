"""Held-out perplexity of an exported language model, in onnxruntime alone (numpy, no Keras).

The quality gate of a lower-precision export that top-1 agreement cannot give: a graph can pick
the same top token while spreading probability worse. `perplexity(path, blocks)` runs a
decoder-only generation graph (`decoder_with_past.onnx`, or a `to_genai` folder's `model.onnx`)
over token blocks with an empty cache and returns `exp(mean cross-entropy)` of each next token,
the same number as `keras_transformer.training.Perplexity` on the Keras model.

Example:
>>> from export.quality import perplexity, check_perplexity
>>> fp32 = perplexity("out/generation", blocks)  # doctest: +SKIP
>>> int4 = perplexity("out/genai_int4", blocks)  # doctest: +SKIP
>>> check_perplexity(int4, fp32, max_increase=0.05)  # doctest: +SKIP
"""

import os

import numpy as np

_GRAPH_FILES = ("decoder_with_past.onnx", "model.onnx")


def _graph_path(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in _GRAPH_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise ValueError(f"`path` must be a generation graph or a folder holding one of {list(_GRAPH_FILES)}; "
                         f"received path={path!r}.")
    if not os.path.isfile(path):
        raise ValueError(f"`path` must be an existing .onnx file or folder; received path={path!r}.")
    return path


def perplexity(path, blocks, pad_id=0, batch_size=16):
    """`exp(mean cross-entropy)` of each block's next tokens under the graph at `path`.

    Args:
        path: a decoder-only generation graph, or a folder holding one.
        blocks: int `(N, L + 1)` token ids; positions `0..L-1` are the input, `1..L` the targets.
            Targets equal to `pad_id` are not counted (as in training).
        pad_id: the padding id.
        batch_size: blocks per onnxruntime run.

    Returns:
        A Python float.
    """
    import onnxruntime

    blocks = np.asarray(blocks)
    if blocks.ndim != 2 or blocks.shape[1] < 2 or not np.issubdtype(blocks.dtype, np.integer):
        raise ValueError(f"`blocks` must be an integer array (N, L + 1) with L >= 1; received dtype "
                         f"{blocks.dtype} and shape {blocks.shape}.")
    session = onnxruntime.InferenceSession(_graph_path(path), providers=["CPUExecutionProvider"])
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        chunk = blocks[start:start + batch_size].astype(np.int64)
        inputs, targets = chunk[:, :-1], chunk[:, 1:]
        batch, length = inputs.shape
        feeds = {"input_ids": inputs, "attention_mask": np.ones((batch, length), np.int64),
                 "position_ids": np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy()}
        for entry in past:  # (batch, kv_heads, 0, head_dim): an empty cache
            feeds[entry.name] = np.zeros((batch, entry.shape[1], 0, entry.shape[3]), np.float32)
        logits = session.run(["logits"], feeds)[0].astype(np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        chosen = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        counted = targets != pad_id
        total -= float(chosen[counted].sum())
        count += int(counted.sum())
    if count == 0:
        raise ValueError(f"`blocks` has no target other than pad_id={pad_id}; nothing to measure.")
    return float(np.exp(total / count))


def check_perplexity(candidate, reference, max_increase):
    """Raises `ValueError` when `candidate` perplexity exceeds `reference * (1 + max_increase)`,
    saying by how much and what to change; returns the relative increase otherwise."""
    if isinstance(max_increase, bool) or not isinstance(max_increase, (int, float)) or max_increase < 0:
        raise ValueError(f"`max_increase` must be a number >= 0; received max_increase={max_increase!r}.")
    increase = candidate / reference - 1.0
    if increase > max_increase:
        raise ValueError(
            f"Held-out perplexity {candidate:.3f} is {increase:+.2%} against float32's {reference:.3f}, more than "
            f"the allowed {max_increase:.2%}. Allow more (max_increase / --max-perplexity-increase), or export "
            "at a higher precision (int8, fp16) or with a smaller int4 block_size (16)."
        )
    return increase
