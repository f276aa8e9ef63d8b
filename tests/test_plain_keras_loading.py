"""After `import keras_transformer` (before or after Keras), plain `keras.saving.load_model` loads
our models, compiled ones included, in a fresh process; numpy-only imports stay Keras-free."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_transformer import training
from keras_transformer.models import EncoderDecoderTransformer

ROOT = pathlib.Path(__file__).parents[1]
LOAD = """
import sys
{imports}
model = keras.saving.load_model(sys.argv[1])
assert type(model).__name__ == "EncoderDecoderTransformer", type(model)
assert type(model.loss).__name__ == "MaskedSparseCategoricalCrossentropy", model.loss
schedule = model.optimizer.get_config()["learning_rate"]
assert schedule["class_name"] == "NoamSchedule" and schedule["config"]["warmup_steps"] == 10, schedule
import numpy as np
feeds = {{"encoder_token_ids": np.array([[3, 4, 5]], "int32"), "decoder_token_ids": np.array([[1, 6]], "int32")}}
np.save(sys.argv[2], keras.ops.convert_to_numpy(model(feeds)))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = EncoderDecoderTransformer(30, 1, 1, d_model=16, num_heads=2, d_ff=32, dropout=0.0)
    model.compile(optimizer=training.paper_optimizer(16, warmup_steps=10),
                  loss=training.MaskedSparseCategoricalCrossentropy(pad_id=0),
                  metrics=[training.MaskedAccuracy(pad_id=0)])
    feeds = {"encoder_token_ids": np.array([[3, 4, 5]], "int32"), "decoder_token_ids": np.array([[1, 6]], "int32")}
    model.fit(feeds, np.array([[6, 2]], "int32"), verbose=0)
    path = tmp_path_factory.mktemp("plain") / "mt.keras"
    model.save(path)
    return path, keras.ops.convert_to_numpy(model(feeds))


@pytest.mark.parametrize("imports", [
    "import keras_transformer\nimport keras",
    "import keras\nimport keras_transformer",
    pytest.param("import keras_transformer\nimport tensorflow\nimport keras",  # TensorFlow probes for keras first
                 marks=pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                          reason="imports TensorFlow, which is not installed here")),
])
def test_plain_keras_load_model_after_importing_the_package(saved, tmp_path, imports):
    path, expected = saved
    result = subprocess.run(
        [sys.executable, "-c", LOAD.format(imports=imports), str(path), str(tmp_path / "out.npy")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-5)


def test_numpy_only_imports_load_no_keras_and_no_backend():
    code = ("import sys, keras_transformer, keras_transformer.search, export.runtime, export.decoding; "
            "bad = [m for m in ('keras', 'tensorflow', 'jax', 'torch', 'tf2onnx') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
