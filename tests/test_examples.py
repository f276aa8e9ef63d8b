"""Every example (and the demo) runs end to end in `--smoke` mode and writes what it promises.

Each runs in a fresh subprocess, exactly as a user would start it, with tiny sizes and a few
training steps: real training, real saving, real export and real onnxruntime sessions.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.tensorflow  # the examples run with the TensorFlow backend (tf.data, SavedModel)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_DIR = os.path.join(ROOT, "examples")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# example -> (files it must write under --output, lines its output must contain)
EXPECTED = {
    "translate_dates.py": (
        ["date_translator.keras", "training_curves.png", "attention.png", "date_translator.onnx",
         "date_translator.int8.onnx", "generation/encoder.onnx", "generation/decoder.onnx"],
        ["Exact match on", "per input format:", "'2021-03-05'", "int8 weights, top-1 agreement",
         "TensorFlow was never imported in this process"],
    ),
    "language_model.py": (
        ["docstring_lm.keras", "tokenizer.json", "training_curves.png", "docstring_lm.onnx",
         "generation/decoder_with_past.onnx", "genai_int4/model.onnx", "genai_int4/genai_config.json"],
        ["Validation perplexity", "token for token identical to Keras", "held-out perplexity"],
    ),
    "classify.py": (
        ["docstring_classifier.keras", "tokenizer.json", "training_curves.png", "confusion_matrix.png",
         "docstring_classifier.onnx"],
        ["Test accuracy", "100.0% of predictions identical to Keras"],
    ),
    "fine_tune.py": (
        ["pretrained_hf/config.json", "pretrained_hf/model.safetensors", "pretrained_hf/tokenizer.json",
         "loss_curve.png", "fine_tuned.onnx", "generation/decoder_with_past.onnx"],
        ["max |logit difference| 0.0e+00", "before -> after fine-tuning", "token for token identical to Keras"],
    ),
    "custom_layer.py": (
        ["gated_classifier.keras", "training_curves.png", "gated_classifier.onnx"],
        ["the reloaded model gives the same logits", "max |onnxruntime - Keras|"],
    ),
    "demo.py": (
        ["dates/training_curves.png", "dates/attention.png", "dates/date_translator.onnx",
         "dates/savedmodel/saved_model.pb", "families/encoder_only.onnx", "families/decoder_only.onnx",
         "families/encoder_only_training_curves.png", "families/decoder_only_training_curves.png"],
        ["Keras vs SavedModel vs ONNX Runtime", "encoder-only", "decoder-only", "per input format:",
         "examples right in Keras"],
    ),
}


def _run(arguments, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", COLUMNS="160")
    return subprocess.run([sys.executable, *arguments], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_in_smoke_mode_and_writes_its_files(name, tmp_path):
    files, phrases = EXPECTED[name]
    result = _run([os.path.join(EXAMPLES_DIR, name), "--smoke", "--output", str(tmp_path)])
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    for relative in files:
        path = tmp_path / relative
        assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {relative}"
        if relative.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{relative} is not a PNG"
    for phrase in phrases:
        assert phrase in result.stdout, f"{name} output lacks {phrase!r}:\n{result.stdout[-3000:]}"


def test_every_example_has_help():
    for name in sorted(EXPECTED):
        result = _run([os.path.join(EXAMPLES_DIR, name), "--help"], timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "--smoke" in result.stdout and "--output" in result.stdout, name
