"""The host-side decoding loops, in numpy only: greedy, sampling and beam search.

Both the Keras models (`keras_transformer.generation`, compiled `tf.function` steps) and ONNX
Runtime generation (`export.decoding`, onnxruntime sessions) run these loops, so both choose the
same tokens; this module imports nothing but numpy, so the ONNX side never loads Keras or
TensorFlow.

The model is reached through a *stepper*, an object with three methods:

* `reset(batch, total_length)`: forget the previous sequence (empty the KV cache); called once
  before the first step. `total_length` is the most positions the loop will feed.
* `step(new_tokens, index)`: feed `new_tokens` (`(batch, T)` int32) at positions
  `index .. index + T - 1` after everything fed before, and return the `(batch, vocab)` logits
  of the last position as a numpy array.
* `reorder(rows)`: beam search only: row `i` of the model state becomes old row `rows[i]`.

The algorithm:

* Prompts are right-padded into a `(batch, P)` buffer; `lengths[i]` is row i's prompt length
  (`prepare_prompts`).
* Prefill: the first `min(lengths)` tokens of every row are fed at once (`index=0`). Then
  position `index = min(lengths) .. P + max_new_tokens - 1` is filled one step at a time: a row
  whose prompt is longer than `index` takes its own prompt token (teacher forcing, so every row
  sees exactly its own prompt at its own positions), any other row takes the chosen token; the
  token is then fed at `index`.
* Greedy choice is `argmax` over the float32 logits of the last position; ties go to the lowest
  id (numpy's first maximum). Sampling (`TokenChooser`) applies temperature, then top-k, then
  top-p, and draws with `numpy.random.default_rng(seed)`.
* A row is finished after `max_new_tokens` new tokens or after emitting `end_id`; finished rows
  receive `pad_id`. The loop stops when every row is finished.
* The ids of `suppressed_ids(...)` are never chosen: by default `pad_id`, which right-pads the
  results (a generated pad would be indistinguishable from padding), plus any `suppress_ids`.
  With `return_lengths=True` the loops also return each row's length.
* Beam search (`beam_search`) keeps `num_beams` live hypotheses per example and scores finished
  ones with the GNMT length penalty `((5 + length) / 6) ** alpha` (Wu et al. 2016).

Example:
>>> import numpy as np
>>> class Uniform:  # a stepper whose model always prefers token 3
...     def reset(self, batch, total_length): pass
...     def step(self, new_tokens, index): return np.eye(5)[[3] * len(new_tokens)]
...     def reorder(self, rows): pass
>>> prompts, lengths, _ = prepare_prompts([[1, 2], [4]], vocab_size=5, pad_id=0)
>>> decode(Uniform(), prompts, lengths, 2, TokenChooser(temperature=0.0), None, 0).tolist()
[[1, 2, 3, 3], [4, 3, 3, 0]]
"""

import numpy as np

from keras_transformer.token_ids import (  # noqa: F401 - part of this module's API
    check_token_id, check_token_ids, prepare_prompts, suppressed_ids, whole_number_ids,
)

__all__ = [
    "TokenChooser",
    "beam_search",
    "check_token_id",
    "check_token_ids",
    "decode",
    "gnmt_length_penalty",
    "generation_results",
    "prepare_prompts",
    "suppressed_ids",
    "whole_number_ids",
]


# -- choosing the next token -------------------------------------------------------------------


class TokenChooser:
    """Greedy (`temperature=0`) or sampled choice of the next token from `(batch, vocab)` logits.

    Sampling runs on the host with `numpy.random.default_rng(seed)`: temperature, then top-k,
    then top-p (nucleus; the most likely token is always kept).

    Args:
        temperature: 0 for greedy argmax (lowest id on ties); > 0 divides the logits.
        top_k: keep only the `top_k` most likely tokens (None: all).
        top_p: keep the smallest set of most likely tokens whose mass reaches `top_p` (None: all).
        seed: seed of the numpy Generator; the same seed draws the same tokens.

    Call arguments:
        logits: `(batch, vocab)` logits of the last position.

    Returns:
        `(batch,)` chosen token ids.
    """

    def __init__(self, temperature=1.0, top_k=None, top_p=None, seed=None):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"`temperature` must be a number >= 0; received temperature={temperature!r}.")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"`top_k` must be a positive integer or None; received top_k={top_k!r}.")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
            raise ValueError(f"`top_p` must be in (0, 1] or None; received top_p={top_p!r}.")
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits):
        logits = np.asarray(logits, dtype=np.float32)
        if self.temperature == 0.0:
            return np.argmax(logits, axis=-1)
        scaled = logits.astype(np.float64) / self.temperature
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            kth = np.sort(scaled, axis=-1)[:, -self.top_k][:, None]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        if self.top_p is not None and self.top_p < 1.0:
            order = np.argsort(-probs, axis=-1, kind="stable")
            sorted_probs = np.take_along_axis(probs, order, axis=-1)
            # Keep a token if the mass before it is still below top_p (the first is always kept).
            keep_sorted = (np.cumsum(sorted_probs, axis=-1) - sorted_probs) < self.top_p
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, axis=-1)
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum(axis=-1, keepdims=True)
        return np.array([self.rng.choice(probs.shape[-1], p=row) for row in probs])


def _suppressed(logits, ids):
    """`logits` with the logits of `ids` set to -inf (a copy; unchanged when there are none)."""
    if ids is None or not len(ids):
        return logits
    logits = np.array(logits, dtype=np.float32)
    logits[:, ids] = -np.inf
    return logits


def generation_results(tokens, lengths, single, return_lengths):
    """What `generate` returns: `tokens` (one row for a single prompt), with `lengths` when asked."""
    lengths = np.asarray(lengths, dtype=np.int32)
    if single:
        tokens, lengths = tokens[0], lengths[0]
    return (tokens, lengths) if return_lengths else tokens


# -- the decoding loops ------------------------------------------------------------------------


def decode(stepper, prompts, lengths, max_new_tokens, choose, end_id, pad_id, suppress=None,
           return_lengths=False):
    """Greedy or sampled decoding with teacher-forced prompts (see the module docstring).

    Args:
        stepper: the model (see the module docstring).
        prompts: `(batch, P)` right-padded prompt buffer from `prepare_prompts`.
        lengths: `(batch,)` prompt lengths.
        max_new_tokens: most new tokens per row.
        choose: `choose(logits) -> ids`, e.g. a `TokenChooser`.
        end_id: a row stops after emitting this id (None: never).
        pad_id: fills the positions after a row has stopped.
        suppress: ids never chosen (`suppressed_ids(...)`), or None.
        return_lengths: also return each row's length (prompt + new tokens, `end_id` included).

    Returns:
        `(batch, length)` int32 prompts followed by the new tokens, right-padded with `pad_id`;
        `length` is at most `P + max_new_tokens`. With `return_lengths`, `(tokens, lengths)`.
    """
    batch, prompt_width = prompts.shape
    total = prompt_width + max_new_tokens
    tokens = np.full((batch, total), pad_id, dtype=np.int32)
    tokens[:, :prompt_width] = prompts
    start = int(lengths.min())
    stepper.reset(batch, total)
    logits = stepper.step(tokens[:, :start], 0)
    generated = np.zeros(batch, dtype=np.int64)
    finished = np.zeros(batch, dtype=bool)
    index = start
    for index in range(start, total):
        forced = index < lengths
        chosen = choose(_suppressed(logits, suppress))
        active = ~forced & ~finished
        tokens[:, index] = np.where(forced, tokens[:, index], np.where(active, chosen, pad_id))
        generated += active
        finished |= ~forced & (generated >= max_new_tokens)
        if end_id is not None:
            finished |= active & (chosen == end_id)
        if finished.all() or index + 1 == total:
            break
        logits = stepper.step(tokens[:, index : index + 1], index)
    if return_lengths:
        return tokens[:, : index + 1], lengths + generated
    return tokens[:, : index + 1]


def gnmt_length_penalty(length, alpha):
    """GNMT length penalty `((5 + length) / 6) ** alpha` (Wu et al. 2016); 1 when alpha = 0."""
    return ((5.0 + length) / 6.0) ** alpha


def _log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def beam_search(stepper, batch_size, num_beams, max_length, start_id, end_id, pad_id, length_penalty,
                suppress=None, return_lengths=False):
    """Beam search with the GNMT length penalty.

    Rows of the stepper are `batch_size * num_beams` (beam-major within each example). At each
    step the `2 * num_beams` best continuations (by summed log-probability) are examined in
    order: one ending in `end_id` (among the top `num_beams`) becomes a finished hypothesis
    scored `sum_log_prob / gnmt_length_penalty(length, alpha)` (length counts `end_id`), the
    others fill the `num_beams` live beams. An example is done when it holds `num_beams`
    finished hypotheses and none of its live beams can beat the worst of them at the current
    length; at `max_length` live beams are scored as they are. The best-scored hypothesis wins.

    Args:
        stepper: the model (see the module docstring), fed `batch_size * num_beams` rows.
        batch_size: number of examples.
        num_beams: live hypotheses per example.
        max_length: most tokens per hypothesis, after `start_id`.
        start_id: the first token of every hypothesis (not returned).
        end_id: ends a hypothesis.
        pad_id: right-pads the result.
        length_penalty: the GNMT `alpha` (0: plain summed log-probability).
        suppress: ids never chosen (`suppressed_ids(...)`), or None.
        return_lengths: also return each row's length (`end_id` included).

    Returns:
        `(batch_size, length)` int32 ids (without `start_id`), right-padded with `pad_id`; with
        `return_lengths`, `(tokens, lengths)`.
    """
    beams = num_beams
    tokens = np.full((batch_size * beams, max_length + 1), pad_id, dtype=np.int32)
    tokens[:, 0] = start_id
    stepper.reset(batch_size * beams, max_length + 1)
    logits = stepper.step(tokens[:, :1], 0)
    scores = np.zeros((batch_size, beams))
    scores[:, 1:] = -np.inf  # all beams start identical: expand only the first one
    finished = [[] for _ in range(batch_size)]  # (score, token list)
    done = np.zeros(batch_size, dtype=bool)
    for step in range(1, max_length + 1):
        log_probs = _log_softmax(_suppressed(logits, suppress)).reshape(batch_size, beams, -1)
        vocab = log_probs.shape[-1]
        candidates = (scores[:, :, None] + log_probs).reshape(batch_size, -1)
        order = np.argsort(-candidates, axis=-1, kind="stable")[:, : 2 * beams]
        rows = np.repeat(np.arange(batch_size)[:, None] * beams, beams, axis=1)  # keep in place
        next_tokens = np.full((batch_size, beams), pad_id, dtype=np.int32)
        next_scores = np.full((batch_size, beams), -np.inf)
        penalty = gnmt_length_penalty(step, length_penalty)
        for b in np.flatnonzero(~done):
            kept = 0
            for rank, flat in enumerate(order[b]):
                beam, token = divmod(int(flat), vocab)
                score = candidates[b, flat]
                if not np.isfinite(score):
                    break
                if token == end_id:
                    if rank < beams:
                        history = tokens[b * beams + beam, 1:step].tolist()
                        finished[b].append((score / penalty, history + [end_id]))
                    continue
                rows[b, kept] = b * beams + beam
                next_tokens[b, kept], next_scores[b, kept] = token, score
                kept += 1
                if kept == beams:
                    break
            finished[b].sort(key=lambda hypothesis: -hypothesis[0])
            del finished[b][beams:]
            best_live = next_scores[b].max() / penalty
            done[b] = len(finished[b]) == beams and finished[b][-1][0] >= best_live
        tokens = tokens[rows.reshape(-1)]
        tokens[:, step] = next_tokens.reshape(-1)
        scores = next_scores
        stepper.reorder(rows.reshape(-1))
        if done.all() or step == max_length:
            break
        logits = stepper.step(tokens[:, step : step + 1], step)
    for b in np.flatnonzero(~done):  # out of steps: live beams compete as they are
        for beam in range(beams):
            if np.isfinite(scores[b, beam]):
                history = tokens[b * beams + beam, 1 : step + 1].tolist()
                finished[b].append((scores[b, beam] / gnmt_length_penalty(step, length_penalty), history))
    best = [max(hypotheses, key=lambda hypothesis: hypothesis[0])[1] for hypotheses in finished]
    width = max(len(sequence) for sequence in best)
    output = np.full((batch_size, width), pad_id, dtype=np.int32)
    for b, sequence in enumerate(best):
        output[b, : len(sequence)] = sequence
    if return_lengths:
        return output, np.array([len(sequence) for sequence in best], dtype=np.int64)
    return output
