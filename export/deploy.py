"""Folders that the deployment runtimes load as they are: onnxruntime-genai and optimum-onnx.

`to_genai(model, folder)` and `to_optimum(model, folder)` write the same folder, which serves
both consumers (and `export.decoding.generate`):

* `model.onnx`: the decoder-only KV-cache graph (`export.native.build_decoder_with_past`) in the
  runtimes' convention: int64 `input_ids`, `attention_mask` (past + new), `position_ids`,
  `past_key_values.{i}.key|value` `(batch, kv_heads, past, head_dim)`; outputs `logits`,
  `present.{i}.key|value`. Positions come from `position_ids`, so left-padded batches (what both
  runtimes build from prompts of different lengths) give each row its own tokens.
* `genai_config.json`: onnxruntime-genai's `"decoder"` model type, the names and sizes above,
  search defaults (greedy, `max_length` = the model's context), eos/pad/bos ids.
  `past_present_share_buffer` is true where the graph allows it (`export.native.cache`: every
  past feeds `GroupQueryAttention`, which takes the cache length from `attention_mask`): genai then
  keeps one `(batch, kv_heads, max_length, head_dim)` buffer per cache tensor, past and present
  alike, instead of copying the cache every step.
* `config.json` + `generation_config.json`: a Hugging Face config (`model_type` "llama", whose
  cache layout and `position_ids` are those of the graph) for optimum's
  `ORTModelForCausalLM.from_pretrained(folder)`.
* `tokenizer.json` (+ `tokenizer_config.json`) when a Hugging Face `tokenizers.Tokenizer` (or
  the path of a `tokenizer.json`) is given.

The graph is validated before anything is written (`validate_generation`): a left-padded batch
of prompts with lengths up to the model's `max_length` is prefilled and decoded for a few steps,
and every real position's logits are compared with the Keras model run on each row alone:
float32 within 1e-4; `precision="fp16"` within 1e-2 of the largest logit; `"int8"` / `"int4"` by
top-1 agreement (`min_top1`, default 0.99 / 0.95) and equal greedy tokens on the prompts.

Example:
>>> import export
>>> export.to_genai(model, "out/genai", tokenizer="out/tokenizer.json")  # doctest: +SKIP
>>> import onnxruntime_genai as og
>>> og.Model("out/genai")  # doctest: +SKIP
"""

import json
import os

import numpy as np

MODEL_FILE = "model.onnx"
DEFAULT_CONTEXT = 2048  # context length written for models without learned positions
VALIDATION_STEPS = 4


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; received {name}={value!r}.")


def _check_fraction(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1]; received {name}={value!r}.")
    return float(value)


def context_length(model, max_length=None):
    """The longest sequence the folder declares: `max_length`, else the model's learned
    positions (`max_length` of its config), else `DEFAULT_CONTEXT`."""
    declared = model.get_config().get("max_length")
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"`max_length` must be an integer >= 2; received max_length={max_length!r}.")
        if declared is not None and max_length > declared:
            raise ValueError(f"`max_length` must be at most the model's max_length={declared} (its learned "
                             f"positions); received max_length={max_length}.")
        return max_length
    return declared or DEFAULT_CONTEXT


def _shares_buffer(proto):
    from export.decoding import GENERATION_METADATA_KEY

    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    return bool(json.loads(metadata[GENERATION_METADATA_KEY]).get("past_present_share_buffer", False))


def genai_config(model, context, end_id=None, bos_id=None, file_name=MODEL_FILE, share_buffer=False):
    """onnxruntime-genai's `genai_config.json` for `model`'s decoder graph (a dict)."""
    spec = model.cache_spec
    pad = int(model.pad_id)
    return {
        "model": {
            "bos_token_id": int(pad if bos_id is None else bos_id),
            "context_length": int(context),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": file_name,
                "head_size": int(spec.head_dim),
                "hidden_size": int(model.get_config()["d_model"]),
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": int(model.num_heads),
                "num_hidden_layers": int(spec.num_layers),
                "num_key_value_heads": int(spec.num_key_value_heads),
            },
            "eos_token_id": int(model.pad_id if end_id is None else end_id),  # genai needs one in range
            "pad_token_id": pad,
            "type": "decoder",
            "vocab_size": int(model.vocab_size),
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": int(context), "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": bool(share_buffer), "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def hf_config(model, context, end_id=None, bos_id=None):
    """`(config.json, generation_config.json)` dicts that optimum's ORTModelForCausalLM reads."""
    config = model.get_config()
    spec = model.cache_spec
    eos = None if end_id is None else int(end_id)
    bos = int(model.pad_id if bos_id is None else bos_id)
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(model.vocab_size),
        "hidden_size": int(config["d_model"]),
        "intermediate_size": int(config["d_ff"]),
        "num_hidden_layers": int(spec.num_layers),
        "num_attention_heads": int(model.num_heads),
        "num_key_value_heads": int(spec.num_key_value_heads),
        "head_dim": int(spec.head_dim),
        "max_position_embeddings": int(context),
        "pad_token_id": int(model.pad_id),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "use_cache": True,
        "tie_word_embeddings": bool(config.get("tie_embeddings", True)),
        "torch_dtype": "float32",
        "keras_transformer": {"class": type(model).__name__, "name": model.name},
    }
    generation = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": int(model.pad_id),
                  "do_sample": False, "max_length": int(context)}
    return hf, generation


def _tokenizer_json(tokenizer):
    """The `tokenizer.json` text of a `tokenizers.Tokenizer` or of a path to one."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, (str, os.PathLike)):
        path = os.fspath(tokenizer)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise ValueError(f"`tokenizer` must be a tokenizers.Tokenizer or the path of a tokenizer.json; "
                             f"received tokenizer={tokenizer!r}, which is not a file.")
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    if hasattr(tokenizer, "to_str"):
        return tokenizer.to_str()
    raise ValueError(f"`tokenizer` must be a tokenizers.Tokenizer or the path of a tokenizer.json; received "
                     f"{type(tokenizer).__name__}.")


def _tokenizer_config(context):
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(context),
            "clean_up_tokenization_spaces": False}


# -- validation ------------------------------------------------------------------------------------


def validation_prompts(model, context, vocab_size, steps=VALIDATION_STEPS, seed=0):
    """Prompts of different lengths up to the context (minus `steps`), ids in `[1, vocab)`
    without the pad id: 1 token, a middle length and the longest (at most 64 tokens)."""
    rng = np.random.default_rng(seed)
    longest = max(1, min(64, context - steps))
    lengths = sorted({1, max(1, longest // 2), longest}, reverse=True)
    pad = int(model.pad_id)
    prompts = []
    for length in lengths:
        ids = rng.integers(1, max(2, vocab_size), size=length)
        prompts.append([int(i) if i != pad else (pad + 1) % vocab_size for i in ids])
    return prompts


def run_left_padded(session, prompts, steps, kv_heads, head_dim, layers, pad_id=0):
    """Greedy decoding of left-padded `prompts` through a generation graph, as the deployment
    runtimes drive it. Returns `(tokens (batch, steps), logits)` where `logits[i]` holds row i's
    logits at each of its real prompt positions followed by each decoding step."""
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = np.full((batch, width), pad_id, np.int64)
    mask = np.zeros((batch, width), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, 1
    past = {f"past_key_values.{i}.{part}": np.zeros((batch, kv_heads, 0, head_dim), np.float32)
            for i in range(layers) for part in ("key", "value")}
    names = [o.name for o in session.get_outputs()]
    logits_per_row = [[] for _ in prompts]
    tokens = []
    feed_ids, full_mask = ids, mask
    for step in range(steps + 1):
        positions = np.maximum(np.cumsum(full_mask, axis=1) - 1, 0)[:, -feed_ids.shape[1]:]
        outputs = dict(zip(names, session.run(names, {"input_ids": feed_ids, "attention_mask": full_mask,
                                                       "position_ids": positions, **past})))
        logits = outputs["logits"]
        for row, prompt in enumerate(prompts):
            logits_per_row[row].append(logits[row, -len(prompt):] if step == 0 else logits[row, -1:])
        if step == steps:
            break
        chosen = logits[:, -1].argmax(-1)
        tokens.append(chosen)
        past = {n.replace("present", "past_key_values"): v for n, v in outputs.items() if n.startswith("present")}
        feed_ids = chosen[:, None].astype(np.int64)
        full_mask = np.concatenate([full_mask, np.ones((batch, 1), np.int64)], axis=1)
    return np.stack(tokens, 1), [np.concatenate(rows, 0) for rows in logits_per_row]


def keras_logits(model, prompts, tokens):
    """The Keras model's logits of each prompt followed by its new tokens (one row at a time)."""
    from keras import ops

    results = []
    for prompt, new in zip(prompts, tokens):
        sequence = np.asarray([list(prompt) + [int(t) for t in new]], np.int32)
        results.append(ops.convert_to_numpy(model({"token_ids": sequence}))[0])  # torch: no np.asarray
    return results


def check_prompts(prompts, vocab_size, pad_id, longest):
    """`prompts` as a list of lists of ints, or a ValueError naming what is wrong."""
    problem = None
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or len(prompts) == 0:
        problem = "a non-empty list of token-id lists"
    else:
        prompts = [[int(t) for t in prompt] for prompt in prompts]
        if any(not 1 <= len(p) <= longest for p in prompts):
            problem = f"prompts of 1 to {longest} tokens (the context minus the {VALIDATION_STEPS} decoding steps)"
        elif any(t == pad_id or not 0 <= t < vocab_size for p in prompts for t in p):
            problem = f"ids in [0, {vocab_size}) other than the pad id {pad_id}"
    if problem:
        raise ValueError(f"`validation_prompts` must be {problem}; received {str(prompts)[:200]}.")
    return prompts


def validate_generation(model, proto, precision=None, context=None, min_top1=None, atol=None, rtol=None,
                        steps=VALIDATION_STEPS, prompts=None):
    """Compare the generation graph `proto` with the Keras `model` (see the module docstring).

    `prompts` (token-id lists, e.g. held-out text) replace the random validation prompts: a
    trained model's top-1 choices on random tokens are near-ties that any rounding reorders,
    while on its own kind of text they are what the user deploys.

    Returns:
        A `ValidationTable` (one row per prompt); `.raise_if_failed()` raises
        `ExportValidationError` with a message saying what to change.
    """
    import onnxruntime

    from export import validate

    context = context or context_length(model)
    spec = model.cache_spec
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    if prompts is None:
        prompts = validation_prompts(model, context, model.vocab_size, steps)
    tokens, graph_logits = run_left_padded(session, prompts, steps, spec.num_key_value_heads, spec.head_dim,
                                           spec.num_layers, int(model.pad_id))
    reference = keras_logits(model, prompts, tokens)
    comparator = validate.comparator_for(precision, atol, rtol, min_top1)
    rows = []
    for prompt, expected, actual in zip(prompts, reference, graph_logits):
        # The reference follows the graph's own tokens, so every position compares like with like.
        result = comparator(expected[: len(actual)], actual)
        rows.append(validate.ComparisonRow(f"left-padded batch, prompt of {len(prompt)}", "logits", actual.shape,
                                           result.max_abs_diff, result.detail, result.ok, result.counts))
    return validate.ValidationTable(rows, getattr(comparator, "name", ""), getattr(comparator, "aggregate", None))


# -- writing ---------------------------------------------------------------------------------------


def _build(model, precision, attention, opset, block_size, accuracy_level, shared_cache):
    from export.native.cache import build_decoder_with_past, mark_cache_sharing
    from export.precision import convert

    proto = build_decoder_with_past(model, opset=opset, attention=attention, shared_cache=shared_cache)
    if precision in (None, "fp32"):
        return proto
    return mark_cache_sharing(convert(proto, precision, block_size=block_size, accuracy_level=accuracy_level))


def to_genai(model, directory, tokenizer=None, precision=None, *, end_id=None, bos_id=None, max_length=None,
             attention="fused", opset=None, validate=True, min_top1=None, atol=None, rtol=None, block_size=32,
             accuracy_level=4, validation_prompts=None, overwrite=False, shared_cache=True):
    """Write a folder that `onnxruntime_genai.Model(folder)` and optimum's
    `ORTModelForCausalLM.from_pretrained(folder)` load as they are (see the module docstring).

    Args:
        model: a `DecoderOnlyTransformer`.
        directory: the folder to create (written atomically: all files or none).
        tokenizer: a `tokenizers.Tokenizer`, the path of its `tokenizer.json`, or None.
        precision: None/"fp32", "fp16", "int8" (dynamic int8 MatMuls) or "int4" (blockwise 4-bit
            `MatMulNBits` weights, the vocabulary projection and the embedding
            `GatherBlockQuantized` included).
        end_id: the end-of-sequence id the runtimes stop at (None: genai gets the pad id, which
            `generate` never emits; optimum gets none).
        bos_id: the beginning-of-sequence id recorded in the configs (None: the pad id).
        max_length: the context length to declare (default: the model's `max_length`, else 2048).
        attention: "fused" or "portable" (see `export.native`).
        opset: default-domain opset (default 17).
        validate: compare with Keras before writing (default True; see `validate_generation`).
        min_top1: top-1 agreement an int8/int4 graph must reach (default 0.99 / 0.95).
        atol, rtol: float32/fp16 tolerances (defaults as `export.to_onnx`).
        block_size, accuracy_level: int4 options (`MatMulNBits` block size, a power of two >= 16;
            `accuracy_level` 0-4, 4 = int8 activations, the fastest on CPU).
        validation_prompts: token-id lists to validate with (e.g. held-out text) instead of
            random prompts of a few lengths.
        overwrite: replace an existing `directory`.
        shared_cache: a cache buffer that past and present share (genai's
            `past_present_share_buffer`; see `export.native.cache.build_decoder_with_past`).
            Pass False for float32 on a GPU: onnxruntime's CUDA `GroupQueryAttention` takes
            float16/bfloat16 only.

    Returns:
        The list of files written.

    Raises:
        ExportValidationError: the graph disagrees with Keras; nothing was written.
    """
    from export import files
    from export.native.models import DEFAULT_OPSET
    from keras_transformer.models import DecoderOnlyTransformer

    if not isinstance(model, DecoderOnlyTransformer):
        raise ValueError(f"`model` must be a DecoderOnlyTransformer (the runtimes' causal-LM form); received "
                         f"{type(model).__name__}.")
    _check_choice("precision", precision, (None, "fp32", "fp16", "int8", "int4"))
    min_top1 = _check_fraction("min_top1", min_top1)
    for name, value in (("end_id", end_id), ("bos_id", bos_id)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or not 0 <= value < model.vocab_size):
            raise ValueError(f"`{name}` must be a token id in [0, {model.vocab_size}); received {name}={value!r}.")
    context = context_length(model, max_length)
    if validation_prompts is not None:
        validation_prompts = check_prompts(validation_prompts, model.vocab_size, int(model.pad_id),
                                           context - VALIDATION_STEPS)
    tokenizer_text = _tokenizer_json(tokenizer)
    directory = os.path.abspath(os.fspath(directory))
    files.check_target(directory, overwrite)
    proto = _build(model, precision, attention, opset or DEFAULT_OPSET, block_size, accuracy_level, shared_cache)
    if validate:
        validate_generation(model, proto, precision, context, min_top1, atol, rtol,
                            prompts=validation_prompts).raise_if_failed(
            f"{precision or 'fp32'} generation graph (min_top1 / --min-top1 sets the int8/int4 threshold; a "
            "lower precision or int4 block_size=16 agrees more)")
    hf, generation = hf_config(model, context, end_id, bos_id)
    documents = {
        "genai_config.json": genai_config(model, context, end_id, bos_id, share_buffer=_shares_buffer(proto)),
        "config.json": hf,
        "generation_config.json": generation,
    }
    return write_folder(directory, {MODEL_FILE: proto}, documents, tokenizer_text, context, overwrite)


def write_folder(directory, graphs, documents, tokenizer_text, context, overwrite):
    """Write `{file: ModelProto}` graphs, `{file: dict}` JSON documents and the tokenizer files
    into `directory`, atomically (all files or none). Returns the paths written."""
    from export import files

    with files.atomic_output([directory], overwrite=overwrite) as staging:
        folder = staging[directory]
        os.makedirs(folder)
        for name, proto in graphs.items():
            files.save_onnx(proto, os.path.join(folder, name))
        if tokenizer_text is not None:
            documents = {**documents, "tokenizer_config.json": _tokenizer_config(context)}
            with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as handle:
                handle.write(tokenizer_text)
        for name, document in documents.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
        written = sorted(os.listdir(folder))
    return [os.path.join(directory, name) for name in written]


def to_optimum(model, directory, tokenizer=None, precision=None, **options):
    """A folder that optimum-onnx loads as it is.

    A `DecoderOnlyTransformer` gets the folder of `to_genai` (it serves optimum too):
    `model.onnx` + `config.json` for `ORTModelForCausalLM.from_pretrained(directory)`. An
    `EncoderDecoderTransformer` gets `encoder_model.onnx`, `decoder_model.onnx` and
    `decoder_with_past_model.onnx` for `ORTModelForSeq2SeqLM.from_pretrained(directory)`; it needs
    `start_id=` (see `export.deploy_seq2seq.to_optimum_seq2seq`).
    """
    from keras_transformer.models import EncoderDecoderTransformer

    if isinstance(model, EncoderDecoderTransformer):
        from export.deploy_seq2seq import to_optimum_seq2seq

        options.pop("shared_cache", None)  # the seq2seq decoders copy their cache (MultiHeadAttention)
        return to_optimum_seq2seq(model, directory, tokenizer, precision, **options)
    if options.get("start_id") is not None:
        raise ValueError(f"`start_id` is the decoder's first token of an EncoderDecoderTransformer; a "
                         f"{type(model).__name__} takes none; received start_id={options['start_id']!r}.")
    options.pop("start_id", None)
    return to_genai(model, directory, tokenizer, precision, **options)

