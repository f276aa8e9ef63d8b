"""Real English text that every Python installation has: the standard library's docstrings.

Shared by `language_model.py` and `classify.py` (and `custom_layer.py`). Nothing is downloaded:
the text is collected at run time with `importlib`, `pkgutil` and `inspect` from a fixed list
of pure-Python standard-library packages, and a byte-level BPE tokenizer is trained on it
locally with HF `tokenizers`.
"""

import importlib
import inspect
import pkgutil
import random
import warnings

# Packages whose docstrings are plentiful; their sub-modules are walked too (except __main__).
CLASSIFY_PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "unittest", "xml")
TEXT_MODULES = CLASSIFY_PACKAGES + (
    "argparse", "ast", "calendar", "collections", "configparser", "contextlib", "csv",
    "dataclasses", "difflib", "enum", "fractions", "functools", "gettext", "glob", "gzip",
    "inspect", "ipaddress", "json", "mailbox", "numbers", "optparse", "pathlib", "pickle",
    "pkgutil", "pprint", "queue", "random", "shlex", "shutil", "smtplib", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "tokenize",
    "traceback", "typing", "urllib", "uuid", "warnings", "zipfile",
)
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0, 1, 2, 3


def _modules(package_name):
    """The package and its importable sub-modules (never a `__main__`, which would run code)."""
    try:
        package = importlib.import_module(package_name)
    except ImportError:
        return []
    found = [package]
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), package_name + "."):
        if info.name.endswith("__main__") or ".test" in info.name:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found.append(importlib.import_module(info.name))
        except Exception:  # platform-specific modules (e.g. asyncio.windows_events)
            continue
    return found


def _docstrings_of(module):
    """Docstrings of a module, its functions and classes, and their methods (defined there)."""
    texts = [inspect.getdoc(module)]
    for _, member in inspect.getmembers(module):
        if getattr(member, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(member) or inspect.isfunction(member):
            texts.append(inspect.getdoc(member))
        if inspect.isclass(member):
            for name, attribute in vars(member).items():
                if inspect.isfunction(attribute) and not name.startswith("__"):
                    texts.append(inspect.getdoc(attribute))
    return [t.strip() for t in texts if t and len(t.strip()) >= 40]


def docstrings_by_package(packages=CLASSIFY_PACKAGES):
    """`{package: [docstring, ...]}`, de-duplicated, in a deterministic order."""
    seen, result = set(), {}
    for package in packages:
        texts = []
        for module in _modules(package):
            for text in _docstrings_of(module):
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
        result[package] = texts
    return result


def corpus_text(max_chars=400_000, seed=0):
    """The docstrings of `TEXT_MODULES`, shuffled and joined, capped at `max_chars` characters."""
    texts = [t for group in docstrings_by_package(TEXT_MODULES).values() for t in group]
    random.Random(seed).shuffle(texts)
    kept, total = [], 0
    for text in texts:
        if total >= max_chars:
            break
        kept.append(text)
        total += len(text) + 1
    return kept


def train_tokenizer(texts, vocab_size=2000):
    """A byte-level BPE tokenizer (HF `tokenizers`) trained on `texts`; specials get ids 0-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer
