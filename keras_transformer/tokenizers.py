"""Tokenizers of checkpoint directories, as Hugging Face `tokenizers.Tokenizer` objects.

    tokenizer = keras_transformer.tokenizers.from_preset("path/to/checkpoint")
    ids = tokenizer.encode("Hello world").ids
    text = tokenizer.decode(ids)

`from_preset(path)` reads, in this order:
- `tokenizer.json` in Hugging Face's format (the whole tokenizer: normalizer, pre-tokenizer,
  model, special tokens);
- GPT-2's older `vocab.json` + `merges.txt` (byte-level BPE);
- BERT's `vocab.txt` (WordPiece; `do_lower_case` / `strip_accents` from `tokenizer_config.json`,
  lower-casing by default as in Hugging Face's BertTokenizer);
- keras-hub tokenizer assets: `tokenizer.json` naming a keras-hub class with its vocabulary
  under `assets/tokenizer/`: `GPT2Tokenizer` (`vocabulary.json` + `merges.txt`, byte-level BPE,
  `<|endoftext|>` unsplittable as in keras-hub) or `BertTokenizer` (`vocabulary.txt`, WordPiece
  with the saved `lowercase` / `strip_accents`).
The ids are those of the source tokenizer for the same text (tested against keras-hub).
WordPiece tokenizers add BERT's `[CLS] a [SEP]` / `[CLS] a [SEP] b [SEP]` (with `type_ids`, the
`segment_ids` of `EncoderOnlyTransformer`) unless `encode(..., add_special_tokens=False)`, which
gives keras-hub `BertTokenizer`'s ids. `build_byte_level_bpe(vocab, merges)` and
`build_wordpiece(vocab)` build the tokenizers from a vocabulary directly.
"""

import os

from keras_transformer.checkpoints.formats import read_json

__all__ = ["build_byte_level_bpe", "build_wordpiece", "from_preset"]

_GPT2_END = "<|endoftext|>"


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


def _read_vocab_txt(path):
    """vocab.txt: one token a line, its id the line number (from 0)."""
    with open(path, encoding="utf-8") as handle:
        tokens = handle.read().split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    vocab = {}
    for number, token in enumerate(tokens):
        if token in vocab:
            raise ValueError(f"{path}:{number + 1}: token {token!r} already has id {vocab[token]}.")
        vocab[token] = number
    if not vocab:
        raise ValueError(f"{path}: an empty vocabulary.")
    return vocab


def build_wordpiece(vocab, lowercase=True, strip_accents=None, unk_token="[UNK]", suffix="##"):
    """BERT's WordPiece tokenizer from `vocab` (`{token: id}` or a list of tokens in id order).

    `strip_accents=None` strips them when lower-casing (Hugging Face's rule); keras-hub's
    `BertTokenizer` saves `strip_accents=False`. `[CLS]`, `[SEP]`, `[PAD]`, `[MASK]` and the
    unknown token are never split; `[CLS]`/`[SEP]` are added around one text or a pair.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if not isinstance(vocab, dict):
        vocab = {token: index for index, token in enumerate(vocab)}
    if unk_token not in vocab:
        raise ValueError(f"The vocabulary has no unknown token; received unk_token={unk_token!r}.")
    tokenizer = Tokenizer(models.WordPiece(vocab=dict(vocab), unk_token=unk_token, continuing_subword_prefix=suffix))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=strip_accents, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=suffix)
    specials = [token for token in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", unk_token) if token in vocab]
    tokenizer.add_special_tokens(specials)
    if "[CLS]" in vocab and "[SEP]" in vocab:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    return tokenizer


def _token_text(token):
    """A token of tokenizer_config.json: a string, or an AddedToken as `{"content": ...}`."""
    return token.get("content") if isinstance(token, dict) else token


def _assets(path, class_name, names):
    files = [os.path.join(path, "assets", "tokenizer", name) for name in names]
    for file in files:
        if not os.path.isfile(file):
            raise ValueError(f"{path!r}: keras-hub {class_name} without {os.path.relpath(file, path)}.")
    return files


def _from_keras_hub(path, config):
    class_name = config.get("class_name")
    settings = config.get("config") or {}
    if class_name == "GPT2Tokenizer":
        vocabulary, merges = _assets(path, class_name, ("vocabulary.json", "merges.txt"))
        unsplittable = settings.get("unsplittable_tokens") or [_GPT2_END]
        return build_byte_level_bpe(read_json(vocabulary), _read_merges(merges), unsplittable)
    if class_name == "BertTokenizer":
        (vocabulary,) = _assets(path, class_name, ("vocabulary.txt",))
        return build_wordpiece(_read_vocab_txt(vocabulary), lowercase=bool(settings.get("lowercase", False)),
                               strip_accents=bool(settings.get("strip_accents", False)),
                               unk_token=settings.get("oov_token", "[UNK]"),
                               suffix=settings.get("suffix_indicator", "##"))
    raise ValueError(f"{os.path.join(path, 'tokenizer.json')}: keras-hub tokenizer {class_name!r} is not "
                     "supported (supported: GPT2Tokenizer, BertTokenizer; or a Hugging Face tokenizer.json).")


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
        config = read_json(tokenizer_json)
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
        return build_byte_level_bpe(read_json(vocab_json), _read_merges(merges_txt))
    vocab_txt = os.path.join(path, "vocab.txt")
    if os.path.isfile(vocab_txt):
        settings_file = os.path.join(path, "tokenizer_config.json")
        settings = read_json(settings_file) if os.path.isfile(settings_file) else {}
        return build_wordpiece(_read_vocab_txt(vocab_txt), lowercase=bool(settings.get("do_lower_case", True)),
                               strip_accents=settings.get("strip_accents"),
                               unk_token=_token_text(settings.get("unk_token", "[UNK]")))
    raise ValueError(
        f"{path!r} has no tokenizer we read: tokenizer.json (Hugging Face or keras-hub), "
        "vocab.json + merges.txt (GPT-2), or vocab.txt (BERT)."
    )
