"""Text generation in onnxruntime with the native KV-cache graphs: numpy only, no TensorFlow/Keras.

Write the graphs with `export.native.save_generation_graphs(model, folder)` (decoder-only:
`decoder_with_past.onnx`; encoder-decoder: `encoder.onnx` + `decoder.onnx`), then call
`generate(folder, ...)` with the same arguments as the Keras model's `generate`:

* decoder-only: `generate(folder, prompt_token_ids, max_new_tokens, temperature=1.0,
  top_k=None, top_p=None, seed=None, end_id=None, suppress_ids=None, allow_pad=False,
  return_lengths=False)`: greedy (`temperature=0`) or sampled;
  batched prompts of different lengths (a list of lists, or a right-padded array);
* encoder-decoder: `generate(folder, encoder_token_ids, max_length, start_id, end_id,
  num_beams=1, length_penalty=0.6, temperature=0.0, top_k=None, top_p=None, seed=None,
  suppress_ids=None, allow_pad=False, return_lengths=False)`: greedy,
  sampled (`temperature > 0`, `num_beams=1`) or beam search.

Sampling and beam search run the loops the Keras models run (`keras_transformer.search`), so a
seed draws the same tokens. Greedy decoder-only decoding left-pads the batch and prefills every
prompt in one run, then runs once per new token (`greedy_left_padded`): the same tokens as
Keras's loop, which feeds the longer prompts one position at a time, with
`max(lengths) - min(lengths)` fewer runs. Between steps the cache lives in numpy
(`export.kv_cache`): in one preallocated buffer per cache tensor that onnxruntime updates in
place, where the graph allows it (decoder-only graphs in the fused form), else in the `present.*`
arrays each run returns.

Example:
>>> from export.decoding import generate
>>> generate("out/lm", [[5, 6, 7], [8, 9]], max_new_tokens=8, temperature=0.0)  # doctest: +SKIP
"""

import json
import os

import numpy as np
import onnxruntime

from export.kv_cache import cached_session
from export.seq2seq_decoding import SEQ2SEQ_FILES, OptimumSeq2SeqStepper
from keras_transformer import search  # numpy only: loads no Keras/TensorFlow

GENERATION_METADATA_KEY = "keras_transformer.generation"
_PRECISION_KEY = "keras_transformer.precision"  # written by export.precision
_ONE_THREAD_PRECISIONS = ("int8",)  # default to one intra-op thread (see `_session`)
_DECODER_ONLY_FILE = "decoder_with_past.onnx"
_DEPLOY_FILE = "model.onnx"  # export.to_genai / export.to_optimum
_ENCODER_FILE, _DECODER_FILE = "encoder.onnx", "decoder.onnx"


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; received {name}={value!r}.")
    return int(value)


def _session(path, providers, intra_op_num_threads):
    """An onnxruntime session for one generation graph.

    A decoding step is a few small operators, then the host picks a token. Worker threads spin
    between the operators of a run but stop at its end (`session.force_spinning_stop`), so that
    they leave the cores to the host and to other processes between steps.
    `intra_op_num_threads=None` takes all cores, except for int8 graphs, whose steps are too
    small to share. Measured on 2 idle cores (`bench/onnx_inference.py`'s model, ms per token,
    median of interleaved runs): fp32 1.27 this way, 1.65 with 1 thread, 1.77 with 2 threads that
    never spin; int8 0.63-0.66 with 1 thread, 0.65-0.97 with 2; int4 (block 32, accuracy_level
    4) 0.59-0.69 with 2, 0.73-0.76 with 1. On a machine whose cores other processes hold, one
    thread wins for every precision (int4 0.52x, fp32 0.53x of the 2-thread time): spinning
    workers wait for busy cores; pass `intra_op_num_threads=1` there.
    """
    session = _new_session(path, providers, 0 if intra_op_num_threads is None else intra_op_num_threads)
    precision = session.get_modelmeta().custom_metadata_map.get(_PRECISION_KEY)
    if intra_op_num_threads is None and precision in _ONE_THREAD_PRECISIONS:
        session = _new_session(path, providers, 1)
    return session


def _new_session(path, providers, intra_op_num_threads):
    from export.runtime import resolve_providers  # runtime re-exports generate: import lazily

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(intra_op_num_threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return onnxruntime.InferenceSession(os.fspath(path), options, providers=resolve_providers(providers))


def _metadata(session):
    raw = session.get_modelmeta().custom_metadata_map.get(GENERATION_METADATA_KEY)
    if raw is None:
        raise ValueError(
            "This ONNX file is not a generation graph (no generation metadata); write one with "
            "export.native.save_generation_graphs(model, folder)."
        )
    return json.loads(raw)


class DecoderOnlyStepper:
    """Stepper (see `keras_transformer.search`) over `decoder_with_past.onnx`.

    The int64 `attention_mask` and `position_ids` of every step are views of buffers made once
    per sequence (`reset`), so a step allocates nothing on the host but what onnxruntime returns.
    """

    def __init__(self, cached_session):
        self.graph = cached_session

    def reset(self, batch, total_length):
        self.graph.reset(batch, total_length)
        self._ones = np.ones(batch * total_length, np.int64)  # any (batch, n <= total) mask is a view
        self._positions = np.tile(np.arange(total_length, dtype=np.int64), (batch, 1))

    def step(self, new_tokens, index):
        del index  # the rows are never padded here: every row is at the cached length
        batch, length = new_tokens.shape
        past = self.graph.cached_length
        if "position_ids" not in self.graph.input_names:  # a folder written before position_ids
            mask = np.ones((batch, past + length), np.int32)
            return self.graph.run({"token_ids": new_tokens.astype(np.int32), "attention_mask": mask})
        positions = self._positions[:, past:past + length]
        return self.graph.run({"input_ids": new_tokens.astype(np.int64),
                               "attention_mask": self._ones[:batch * (past + length)].reshape(batch, past + length),
                               "position_ids": positions if batch == 1 else np.ascontiguousarray(positions)})

    def reorder(self, rows):
        self.graph.reorder(rows)


def greedy_left_padded(graph, prompts, lengths, max_new_tokens, end_id, pad_id, suppress):
    """Greedy decoding with the whole batch prefilled in one run: `search.decode`'s tokens.

    The prompts are left-padded (`attention_mask` 0 on the padding, `position_ids` counting each
    row's real tokens), so every row ends at the last prefilled position and each later run
    feeds one new token per row. `search.decode` teacher-forces the longer prompts one position
    at a time instead (the loop the Keras models share, and the one sampling keeps, so that a
    seed draws the same tokens), which costs `max(lengths) - min(lengths)` more runs. A row
    sees the same tokens at the same positions either way, so the argmax is the same up to
    float32 rounding in the two ways of computing the same logits.

    Args:
        graph: an `export.kv_cache.CachedSession` over a graph with `position_ids`.
        prompts, lengths: the right-padded prompt buffer and lengths (`search.prepare_prompts`).
        max_new_tokens, end_id, pad_id, suppress: as in `search.decode`.

    Returns:
        `(tokens, lengths)` as `search.decode(..., return_lengths=True)` returns them.
    """
    batch, width = prompts.shape
    real = np.arange(width)[None, :] >= (width - lengths)[:, None]  # left-padded layout
    ids = np.full((batch, width), pad_id, np.int64)
    ids[real] = prompts[np.arange(width)[None, :] < lengths[:, None]]
    mask = np.ones((batch, width + max_new_tokens), np.int64)
    mask[:, :width] = real
    graph.reset(batch, width + max_new_tokens)
    logits = graph.run({"input_ids": ids, "attention_mask": mask[:, :width],
                        "position_ids": np.maximum(np.cumsum(real, axis=1) - 1, 0)})
    # Each step's tokens go to row `step` of `chosen_ids`; rows of the batch that emitted end_id
    # stop counting (`generated`), and the tokens are placed after the prompts once, at the end.
    chosen_ids = np.empty((max_new_tokens, batch), np.int64)
    generated = np.full(batch, max_new_tokens, np.int64)
    running = np.ones(batch, bool)
    positions = lengths.astype(np.int64)[:, None]
    suppress = None if suppress is None or not len(suppress) else suppress
    for step in range(max_new_tokens):
        if suppress is not None:
            logits[:, suppress] = -np.inf  # `run` returns a fresh array
        chosen = chosen_ids[step] = logits.argmax(axis=-1)
        if end_id is not None:
            ended = running & (chosen == end_id)
            if ended.any():
                generated[ended] = step + 1
                running &= ~ended
                if not running.any():
                    break
        if step + 1 == max_new_tokens:
            break
        logits = graph.run({"input_ids": chosen[:, None],
                            "attention_mask": np.ascontiguousarray(mask[:, :width + step + 1]),
                            "position_ids": positions + step})
    tokens = np.full((batch, width + max_new_tokens), pad_id, np.int32)
    tokens[:, :width] = prompts
    offsets = np.arange(max_new_tokens)
    kept = offsets[None, :] < generated[:, None]
    rows = np.broadcast_to(np.arange(batch)[:, None], kept.shape)
    tokens[rows[kept], (lengths[:, None] + offsets[None, :])[kept]] = chosen_ids.T[kept]
    lengths = lengths + generated
    return tokens[:, :int(lengths.max())], lengths


class EncoderDecoderStepper(DecoderOnlyStepper):
    """Stepper over `decoder.onnx`; the cross-attention keys/values come from one encoder run."""

    def __init__(self, encoder_session, cached_session, sources):
        super().__init__(cached_session)
        names = [o.name for o in encoder_session.get_outputs()]
        self.encoded = dict(zip(names, encoder_session.run(names, {"encoder_token_ids": sources})))

    def step(self, new_tokens, index):
        del index
        return self.graph.run(dict(self.encoded, decoder_token_ids=new_tokens.astype(np.int32)))


class OnnxGenerator:
    """The generation graphs in a folder written by `export.native.save_generation_graphs`.

    Args:
        path: that folder (or the `decoder_with_past.onnx` file of a decoder-only model), or a
            folder from `export.to_genai` / `export.to_optimum` (its `model.onnx`).
        providers: "auto" (CUDA when onnxruntime-gpu sees a GPU, else CPU) or a provider list.
        intra_op_num_threads: onnxruntime threads per operator; None (default): all cores,
            1 for int8 and int4 graphs (measured fastest, see `_session`); 0 = all cores.

    Example:
    >>> generator = OnnxGenerator("out/lm")  # doctest: +SKIP
    >>> generator.generate([[5, 6, 7]], max_new_tokens=4, temperature=0.0)  # doctest: +SKIP
    """

    def __init__(self, path, providers="auto", intra_op_num_threads=None):
        path = os.fspath(path)
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        single = [os.path.join(folder, name) for name in (_DECODER_ONLY_FILE, _DEPLOY_FILE)]
        if os.path.isfile(path) or any(os.path.isfile(candidate) for candidate in single):
            decoder_path = path if os.path.isfile(path) else next(c for c in single if os.path.isfile(c))
            self.encoder = None
        elif all(os.path.isfile(os.path.join(folder, name)) for name in SEQ2SEQ_FILES):  # export.to_optimum
            self.seq2seq = {name: _session(os.path.join(folder, name), providers, intra_op_num_threads)
                            for name in SEQ2SEQ_FILES}
            decoder_path, self.encoder = None, None
        elif os.path.isfile(os.path.join(folder, _DECODER_FILE)) and os.path.isfile(os.path.join(folder, _ENCODER_FILE)):
            decoder_path = os.path.join(folder, _DECODER_FILE)
            self.encoder = _session(os.path.join(folder, _ENCODER_FILE), providers, intra_op_num_threads)
        else:
            raise FileNotFoundError(
                f"`path` must be a folder holding {_DECODER_ONLY_FILE!r} or {_ENCODER_FILE!r} + "
                f"{_DECODER_FILE!r} (from export.native.save_generation_graphs), {_DEPLOY_FILE!r} (from "
                f"export.to_genai) or {' + '.join(SEQ2SEQ_FILES)} (from export.to_optimum); received path={path!r}."
            )
        if decoder_path is None:
            self.metadata = _metadata(self.seq2seq[SEQ2SEQ_FILES[-1]])
            self.family, self.decoder = self.metadata["family"], None
            return
        self.seq2seq = None
        decoder = _session(decoder_path, providers, intra_op_num_threads)
        self.metadata = _metadata(decoder)
        self.family = self.metadata["family"]
        self.decoder = cached_session(decoder, self.metadata)

    def generate(self, *args, **kwargs):
        """Decoder-only or encoder-decoder generation (see the module docstring)."""
        if self.family == "decoder_only":
            return self._generate_continuation(*args, **kwargs)
        return self._generate_translation(*args, **kwargs)

    def _check_positions(self, needed, what):
        limit = self.metadata.get("max_length")
        if limit is not None and needed > limit:
            raise ValueError(f"{what} needs {needed} positions, but this model has learned positions "
                             f"for max_length={limit}.")

    def _generate_continuation(self, prompt_token_ids, max_new_tokens, temperature=1.0, top_k=None,
                               top_p=None, seed=None, end_id=None, suppress_ids=None, allow_pad=False,
                               return_lengths=False):
        meta = self.metadata
        prompts, lengths, single = search.prepare_prompts(prompt_token_ids, meta["vocab_size"], meta["pad_id"])
        max_new_tokens = _check_positive_int("max_new_tokens", max_new_tokens)
        end_id = search.check_token_id("end_id", end_id, meta["vocab_size"], allow_none=True)
        suppress = search.suppressed_ids(meta["vocab_size"], meta["pad_id"], end_id, suppress_ids, allow_pad)
        self._check_positions(int(lengths.max()) + max_new_tokens,
                              f"The longest prompt plus max_new_tokens={max_new_tokens}")
        choose = search.TokenChooser(temperature, top_k, top_p, seed)
        if choose.temperature == 0.0 and "position_ids" in self.decoder.input_names:
            tokens, lengths = greedy_left_padded(self.decoder, prompts, lengths, max_new_tokens, end_id,
                                                 meta["pad_id"], suppress)
        else:
            tokens, lengths = search.decode(DecoderOnlyStepper(self.decoder), prompts, lengths, max_new_tokens,
                                            choose, end_id, meta["pad_id"], suppress=suppress, return_lengths=True)
        return search.generation_results(tokens, lengths, single, return_lengths)

    def _generate_translation(self, encoder_token_ids, max_length, start_id, end_id, num_beams=1,
                              length_penalty=0.6, temperature=0.0, top_k=None, top_p=None, seed=None,
                              suppress_ids=None, allow_pad=False, return_lengths=False):
        meta = self.metadata
        sources, _, single = search.prepare_prompts(encoder_token_ids, meta["vocab_size"], meta["pad_id"],
                                                  name="encoder_token_ids")
        max_length = _check_positive_int("max_length", max_length)
        num_beams = _check_positive_int("num_beams", num_beams)
        start_id = search.check_token_id("start_id", start_id, meta["target_vocab_size"])
        end_id = search.check_token_id("end_id", end_id, meta["target_vocab_size"])
        suppress = search.suppressed_ids(meta["target_vocab_size"], meta["pad_id"], end_id, suppress_ids, allow_pad)
        if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
            raise ValueError(f"`length_penalty` must be a number; received length_penalty={length_penalty!r}.")
        if num_beams > 1 and temperature != 0.0:
            raise ValueError(f"Beam search is deterministic: pass temperature=0.0 with num_beams={num_beams}; "
                             f"received temperature={temperature!r}.")
        self._check_positions(max(max_length + 1, sources.shape[1]), f"max_length={max_length} or the source")
        batch, pad = sources.shape[0], meta["pad_id"]
        if num_beams == 1:
            stepper = self._translation_stepper(sources)
            starts = np.full((batch, 1), start_id, dtype=np.int32)
            choose = search.TokenChooser(temperature, top_k, top_p, seed)
            tokens, lengths = search.decode(stepper, starts, np.ones(batch, np.int64), max_length, choose, end_id,
                                            pad, suppress=suppress, return_lengths=True)
            tokens, lengths = tokens[:, 1:], lengths - 1  # without the start token
        else:
            stepper = self._translation_stepper(np.repeat(sources, num_beams, axis=0))
            tokens, lengths = search.beam_search(stepper, batch, num_beams, max_length, start_id, end_id, pad,
                                                 length_penalty, suppress=suppress, return_lengths=True)
        return search.generation_results(tokens, lengths, single, return_lengths)


    def _translation_stepper(self, sources):
        if self.seq2seq is not None:
            return OptimumSeq2SeqStepper(self.seq2seq, sources, self.metadata["pad_id"])
        return EncoderDecoderStepper(self.encoder, self.decoder, sources)


def generate(path, *args, providers="auto", intra_op_num_threads=None, **kwargs):
    """Load the generation graphs at `path` and generate (see the module docstring).

    Args:
        path: a folder from `export.native.save_generation_graphs`, or an `OnnxGenerator`.
        *args, **kwargs: the arguments of the Keras model's `generate`.
        providers, intra_op_num_threads: onnxruntime session settings.

    Returns:
        numpy int32 token ids, as the Keras `generate` returns them.
    """
    generator = path if isinstance(path, OnnxGenerator) else OnnxGenerator(path, providers, intra_op_num_threads)
    return generator.generate(*args, **kwargs)
