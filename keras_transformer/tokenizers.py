"""Tokenizers of checkpoint directories, as Hugging Face `tokenizers.Tokenizer` objects.

    tokenizer = keras_transformer.tokenizers.from_preset("path/to/checkpoint")
    ids = tokenizer.encode("Hello world").ids
    text = tokenizer.decode(ids)

`from_preset(path)` reads, in this order:
- `tokenizer.json` in Hugging Face's format (the whole tokenizer: normalizer, pre-tokenizer,
  model, special tokens);
- GPT-2's older `vocab.json` + `merges.txt` (byte-level BPE);
- keras-hub tokenizer assets: `tokenizer.json` naming a keras-hub class (`GPT2Tokenizer`) with
  `assets/tokenizer/vocabulary.json` + `merges.txt` (byte-level BPE, `<|endoftext|>`
  unsplittable as in keras-hub).
The ids are those of the source tokenizer for the same text (tested against keras-hub).
`build_byte_level_bpe(vocab, merges)` builds GPT-2's tokenizer from a vocabulary directly.
"""

import json
import os

__all__ = ["build_byte_level_bpe", "from_preset"]

_GPT2_END = "<|endoftext|>"


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({type(error).__name__}: {error}).") from None


def _read_merges(path):
    """merges.txt: one `a b` pair a line, an optional `#version` header."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = []
    for number, line in enumerate(lines, 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: a merge is two symbols separated by a space; found {line!r}.")
        merges.append((parts[0], parts[1]))
    return merges


def build_byte_level_bpe(vocab, merges, special_tokens=(_GPT2_END,)):
    """GPT-2's byte-level BPE tokenizer from `vocab` (`{token: id}`) and `merges` (pairs or
    `"a b"` strings); `special_tokens` present in `vocab` are never split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tokenizer = Tokenizer(models.BPE(vocab=dict(vocab), merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [token for token in special_tokens if token in vocab]
    if specials:
        tokenizer.add_special_tokens(specials)
    return tokenizer


def _from_keras_hub(path, config):
    class_name = config.get("class_name")
    assets = os.path.join(path, "assets", "tokenizer")
    if class_name == "GPT2Tokenizer":
        vocabulary, merges = os.path.join(assets, "vocabulary.json"), os.path.join(assets, "merges.txt")
        for file in (vocabulary, merges):
            if not os.path.isfile(file):
                raise ValueError(f"{path!r}: keras-hub {class_name} without {os.path.relpath(file, path)}.")
        unsplittable = config.get("config", {}).get("unsplittable_tokens") or [_GPT2_END]
        return build_byte_level_bpe(_read_json(vocabulary), _read_merges(merges), unsplittable)
    raise ValueError(f"{os.path.join(path, 'tokenizer.json')}: keras-hub tokenizer {class_name!r} is not "
                     "supported (supported: GPT2Tokenizer; or a Hugging Face tokenizer.json).")


def from_preset(path):
    """The `tokenizers.Tokenizer` of checkpoint directory `path` (formats in the module doc).

    Raises:
        ValueError: no tokenizer files we read, or files that are not what they claim.
    """
    from tokenizers import Tokenizer

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"No checkpoint directory at {path!r}.")
    tokenizer_json = os.path.join(path, "tokenizer.json")
    if os.path.isfile(tokenizer_json):
        config = _read_json(tokenizer_json)
        if isinstance(config, dict) and "model" in config:
            try:
                return Tokenizer.from_file(tokenizer_json)
            except Exception as error:
                raise ValueError(f"{tokenizer_json}: not a valid Hugging Face tokenizer ({error}).") from None
        if isinstance(config, dict) and str(config.get("module", "")).startswith("keras_hub"):
            return _from_keras_hub(path, config)
        raise ValueError(f"{tokenizer_json}: neither a Hugging Face tokenizer nor a keras-hub tokenizer config.")
    vocab_json, merges_txt = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    if os.path.isfile(vocab_json) and os.path.isfile(merges_txt):
        return build_byte_level_bpe(_read_json(vocab_json), _read_merges(merges_txt))
    raise ValueError(
        f"{path!r} has no tokenizer we read: tokenizer.json (Hugging Face or keras-hub), or "
        "vocab.json + merges.txt (GPT-2)."
    )
