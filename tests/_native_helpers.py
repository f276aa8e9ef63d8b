"""Helpers shared by the native-export tests: run an ONNX model in onnxruntime on CPU."""

import numpy as np
import onnxruntime as ort


def run_onnx(model, feeds):
    """Run a `ModelProto` with every onnxruntime optimization on; returns a list of outputs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {k: np.asarray(v) for k, v in feeds.items()})


def empty_past(batch, kv_heads, head_dim, layers):
    """Zero-length `past_key_values.*` feeds of a decoder-only KV-cache graph."""
    shape = (batch, kv_heads, 0, head_dim)
    return {f"past_key_values.{i}.{part}": np.zeros(shape, "float32") for i in range(layers) for part in ("key", "value")}


def run_in_chunks(session, chunks, make_feeds, past):
    """Feed the chunks one after the other, passing `present.*` back as `past_key_values.*`
    (`past`: the empty caches); returns the concatenated logits and the last caches."""
    names = [o.name for o in session.get_outputs()]
    logits, position = [], 0
    for chunk in chunks:
        outputs = dict(zip(names, session.run(names, {**make_feeds(chunk, position), **past})))
        logits.append(outputs["logits"])
        past = {name.replace("present", "past_key_values"): value
                for name, value in outputs.items() if name.startswith("present")}
        position += chunk.shape[1]
    return np.concatenate(logits, axis=1), past


def greedy_padded(session, prompts, new_tokens, side, kv_heads, head_dim, layers=2):
    """Greedy decoding of a padded batch the way the deployment runtimes drive the graph:
    padding hidden by `attention_mask`, positions `cumsum(attention_mask) - 1`; returns each
    row's new tokens and the logits of every step, `(batch, steps, vocab)`."""
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), "int64")
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        span = slice(width - len(prompt), width) if side == "left" else slice(0, len(prompt))
        ids[row, span], mask[row, span] = prompt, 1
    past = empty_past(len(prompts), kv_heads, head_dim, layers)
    names = [o.name for o in session.get_outputs()]
    chosen, logits_seen = [], []
    feed_ids, feed_mask = ids, mask
    last = np.array([width - 1 if side == "left" else len(p) - 1 for p in prompts])
    for step in range(new_tokens):
        positions = np.maximum(np.cumsum(feed_mask, axis=1) - 1, 0)[:, -feed_ids.shape[1]:]
        outputs = dict(zip(names, session.run(names, {"input_ids": feed_ids, "attention_mask": feed_mask,
                                                       "position_ids": positions, **past})))
        logits = outputs["logits"][np.arange(len(prompts)), last if step == 0 else -1]
        logits_seen.append(logits)
        chosen.append(logits.argmax(-1))
        past = {name.replace("present", "past_key_values"): value
                for name, value in outputs.items() if name.startswith("present")}
        feed_ids = chosen[-1][:, None].astype("int64")
        feed_mask = np.concatenate([feed_mask, np.ones((len(prompts), 1), "int64")], axis=1)
    return np.stack(chosen, 1), np.stack(logits_seen, 1)
