"""An optimum-onnx folder for an `EncoderDecoderTransformer` (`export.to_optimum` calls it).

The folder holds the three graphs of `export.native.seq2seq` (`encoder_model.onnx`,
`decoder_model.onnx`, `decoder_with_past_model.onnx`, optimum's names and caches), a Hugging Face
`config.json` (`model_type` "bart": optimum reads the layer, head and size fields from it; no
BART weights or code are involved), `generation_config.json` (start/end/pad ids, greedy) and the
tokenizer files when given, so that

    ORTModelForSeq2SeqLM.from_pretrained(folder).generate(input_ids, attention_mask=...)

generates the tokens of the Keras model. Before anything is written the graphs are run the way
optimum runs them (encoder, first step, cached steps) on a right-padded batch of sources of
different lengths, and every decoding step's logits are compared with the Keras model's: float32
within 1e-4, fp16 within 1e-2 of the largest logit, int8/int4 by top-1 agreement (`min_top1`).
"""

import os

import numpy as np

from export.deploy import (
    VALIDATION_STEPS,
    _check_choice,
    _check_fraction,
    _tokenizer_json,
    context_length,
    write_folder,
)
from export.native.seq2seq import DECODER_FILE, DECODER_WITH_PAST_FILE, ENCODER_FILE, build_seq2seq_graphs


def _check_token_id(name, value, vocab_size, required=False):
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < vocab_size:
        raise ValueError(f"`{name}` must be a token id in [0, {vocab_size}) (the decoder's vocabulary); "
                         f"received {name}={value!r}.")
    return int(value)


def seq2seq_hf_config(model, context, start_id, end_id=None):
    """`(config.json, generation_config.json)` dicts that optimum's ORTModelForSeq2SeqLM reads."""
    config = model.get_config()
    spec = model.cache_spec
    eos = None if end_id is None else int(end_id)
    pad = int(model.pad_id)
    hf = {
        "architectures": ["BartForConditionalGeneration"],
        "model_type": "bart",
        "is_encoder_decoder": True,
        "vocab_size": int(model.target_vocab_size),
        "d_model": int(config["d_model"]),
        "encoder_layers": len(model.encoder_blocks),
        "decoder_layers": spec.num_layers,
        "encoder_attention_heads": int(model.num_heads),
        "decoder_attention_heads": int(model.num_heads),
        "encoder_ffn_dim": int(config["d_ff"]),
        "decoder_ffn_dim": int(config["d_ff"]),
        "max_position_embeddings": int(context),
        "pad_token_id": pad,
        "bos_token_id": int(start_id),
        "eos_token_id": eos,
        "decoder_start_token_id": int(start_id),
        "forced_bos_token_id": None,
        "forced_eos_token_id": None,  # BartConfig's default (2) would force a token at max_length
        "use_cache": True,
        "torch_dtype": "float32",
        "keras_transformer": {"class": type(model).__name__, "name": model.name},
    }
    generation = {"decoder_start_token_id": int(start_id), "bos_token_id": int(start_id), "eos_token_id": eos,
                  "pad_token_id": pad, "forced_eos_token_id": None, "do_sample": False, "num_beams": 1,
                  "max_length": int(context)}
    return hf, generation


def validation_sources(model, context, seed=0):
    """A right-padded batch of sources (1 token, a middle length, the longest, at most 64),
    ids in `[1, vocab)` without the pad id, and its attention mask."""
    rng = np.random.default_rng(seed)
    longest = max(1, min(64, context))
    lengths = sorted({1, max(1, longest // 2), longest}, reverse=True)
    pad, vocab = int(model.pad_id), int(model.vocab_size)
    ids = np.full((len(lengths), longest), pad, np.int64)
    for row, length in enumerate(lengths):
        tokens = rng.integers(1, max(2, vocab), size=length)
        ids[row, :length] = np.where(tokens == pad, (pad + 1) % vocab, tokens)
    return ids, (ids != pad).astype(np.int64)


def run_as_optimum(sessions, input_ids, attention_mask, start_id, steps):
    """Greedy decoding through the three graphs the way optimum drives them.

    Returns:
        `(decoder_ids (batch, steps + 1), logits (batch, steps + 1, vocab))`: the start token and
        the chosen tokens, and the logits of every step.
    """
    hidden = sessions[ENCODER_FILE].run(["last_hidden_state"],
                                        {"input_ids": input_ids, "attention_mask": attention_mask})[0]
    ids = np.full((len(input_ids), 1), start_id, np.int64)
    first, later = sessions[DECODER_FILE], sessions[DECODER_WITH_PAST_FILE]
    names = [o.name for o in first.get_outputs()]
    outputs = dict(zip(names, first.run(names, {"input_ids": ids, "encoder_attention_mask": attention_mask,
                                                "encoder_hidden_states": hidden})))
    past = {n.replace("present", "past_key_values"): v for n, v in outputs.items() if n.startswith("present")}
    logits = [outputs["logits"][:, -1]]
    later_names = [o.name for o in later.get_outputs()]
    for _ in range(steps):
        ids = np.concatenate([ids, logits[-1].argmax(-1)[:, None].astype(np.int64)], axis=1)
        outputs = dict(zip(later_names, later.run(later_names, {"input_ids": ids[:, -1:],
                                                                 "encoder_attention_mask": attention_mask, **past})))
        past.update({n.replace("present", "past_key_values"): v for n, v in outputs.items() if n.startswith("present")})
        logits.append(outputs["logits"][:, -1])
    return ids, np.stack(logits, axis=1)


def validate_seq2seq(model, graphs, precision=None, context=None, start_id=1, min_top1=None, atol=None, rtol=None,
                     steps=VALIDATION_STEPS):
    """Compare the three graphs with the Keras `model` (see the module docstring).

    Returns:
        A `ValidationTable` (one row per source); `.raise_if_failed()` raises
        `ExportValidationError` with a message saying what to change.
    """
    import onnxruntime
    from keras import ops

    from export import validate

    context = context or context_length(model)
    sessions = {name: onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
                for name, proto in graphs.items()}
    sources, mask = validation_sources(model, context)
    decoder_ids, graph_logits = run_as_optimum(sessions, sources, mask, start_id, steps)
    reference = ops.convert_to_numpy(model({"encoder_token_ids": sources.astype(np.int32),
                                            "decoder_token_ids": decoder_ids.astype(np.int32)}))
    comparator = validate.comparator_for(precision, atol, rtol, min_top1)
    rows = []
    for row in range(len(sources)):
        result = comparator(reference[row], graph_logits[row])
        rows.append(validate.ComparisonRow(f"source of {int(mask[row].sum())} tokens, {steps + 1} decoder steps",
                                           "logits", graph_logits[row].shape, result.max_abs_diff, result.detail,
                                           result.ok, result.counts))
    return validate.ValidationTable(rows, getattr(comparator, "name", ""), getattr(comparator, "aggregate", None))


def to_optimum_seq2seq(model, directory, tokenizer=None, precision=None, *, start_id=None, end_id=None,
                       max_length=None, attention="fused", opset=None, validate=True, min_top1=None, atol=None,
                       rtol=None, block_size=32, accuracy_level=4, overwrite=False):
    """Write the optimum seq2seq folder of an `EncoderDecoderTransformer` (see the module docstring).

    Args:
        model: an `EncoderDecoderTransformer`.
        directory: the folder to create (written atomically: all files or none).
        tokenizer: a `tokenizers.Tokenizer`, the path of its `tokenizer.json`, or None.
        precision: None/"fp32", "fp16", "int8" or "int4" (as `export.to_genai`).
        start_id: the decoder's first token (`decoder_start_token_id`); required.
        end_id: the end-of-sequence id generation stops at (None: none).
        max_length: the context length to declare (default: the model's `max_length`, else 2048).
        attention, opset, validate, min_top1, atol, rtol, block_size, accuracy_level, overwrite:
            as `export.to_genai`.

    Returns:
        The list of files written.

    Raises:
        ExportValidationError: the graphs disagree with Keras; nothing was written.
    """
    from export import files
    from export.native.models import DEFAULT_OPSET
    from export.precision import convert
    from keras_transformer.models import EncoderDecoderTransformer

    if not isinstance(model, EncoderDecoderTransformer):
        raise ValueError(f"`model` must be an EncoderDecoderTransformer; received {type(model).__name__}.")
    _check_choice("precision", precision, (None, "fp32", "fp16", "int8", "int4"))
    min_top1 = _check_fraction("min_top1", min_top1)
    if start_id is None:
        raise ValueError("`start_id` is required for an EncoderDecoderTransformer (the decoder's first token, "
                         "optimum's decoder_start_token_id); received start_id=None.")
    start_id = _check_token_id("start_id", start_id, model.target_vocab_size, required=True)
    end_id = _check_token_id("end_id", end_id, model.target_vocab_size)
    context = context_length(model, max_length)
    tokenizer_text = _tokenizer_json(tokenizer)
    directory = os.path.abspath(os.fspath(directory))
    files.check_target(directory, overwrite)
    graphs = build_seq2seq_graphs(model, opset or DEFAULT_OPSET, attention)
    if precision not in (None, "fp32"):
        graphs = {name: convert(proto, precision, block_size=block_size, accuracy_level=accuracy_level)
                  for name, proto in graphs.items()}
    if validate:
        validate_seq2seq(model, graphs, precision, context, start_id, min_top1, atol, rtol).raise_if_failed(
            f"{precision or 'fp32'} seq2seq graphs (min_top1 / --min-top1 sets the int8/int4 threshold; a "
            "lower precision or int4 block_size=16 agrees more)")
    hf, generation = seq2seq_hf_config(model, context, start_id, end_id)
    documents = {"config.json": hf, "generation_config.json": generation}
    return write_folder(directory, graphs, documents, tokenizer_text, context, overwrite)
