"""Backends: a missing backend or a TensorFlow-only feature gives one clear error; `.keras` files
move between backends with the same outputs; JAX generation reuses its compiled step."""

import importlib.util
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import export
from _workers import launch
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer

BACKEND = keras.backend.backend()
OTHER = next((b for b in ("jax", "tensorflow") if b != BACKEND and importlib.util.find_spec(b)), None)


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=launch.REPO, env=launch.worker_env(**env))


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax", "mxnet"])
def test_choosing_a_backend_that_is_not_installed_names_it_and_the_install_command(backend):
    if backend != "mxnet" and importlib.util.find_spec(backend):
        pytest.skip(f"{backend} is installed here")
    result = _run("import keras_transformer.models", KERAS_BACKEND=backend)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError") and repr(backend) in last, last
    if backend != "mxnet":
        assert f"pip install 'keras-transformer-zoo[{backend}]'" in last, last


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the TensorFlow-only features work on TensorFlow")
def test_tensorflow_only_features_refuse_before_any_work(tmp_path):
    model = DecoderOnlyTransformer(30, 1, 16, 2, 32)
    with pytest.raises(ImportError, match=r"SavedModel export .*needs TensorFlow.*Alternative.*to_onnx"):
        export.to_savedmodel(model, tmp_path / "saved")
    with pytest.raises(ImportError, match=r"tracing.*needs TensorFlow.*method='native'"):
        export.to_onnx(model, tmp_path / "model.onnx", method="tracing")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a staging folder


def test_native_export_validates_off_tensorflow(tmp_path):
    if BACKEND == "tensorflow":
        pytest.skip("this run's backend is TensorFlow")
    model = EncoderDecoderTransformer(30, 1, 1, d_model=16, num_heads=2, d_ff=32, max_length=12,
                                      positional="learned")
    report = export.to_onnx(model, tmp_path / "model.onnx")
    assert report.method == "native" and report.validation.passed
    assert len(report.validation.rows) == 6
    assert "tf2onnx" not in sys.modules
    # `make test-jax` runs this in a venv where TensorFlow is not installed at all.


LOAD_ON_OTHER = """
import json, sys, keras, numpy as np
from keras_transformer.saving import load_model
model = load_model(sys.argv[1])
ids = np.array(json.loads(sys.argv[2]), dtype="int32")
np.save(sys.argv[3], keras.ops.convert_to_numpy(model({"token_ids": ids}, training=False)))
print(json.dumps(model.generate([[3, 4, 5]], max_new_tokens=4, temperature=0.0).tolist()))
"""


@pytest.mark.skipif(OTHER is None, reason="needs a second backend installed (jax or tensorflow)")
def test_keras_file_saved_here_loads_on_the_other_backend_with_the_same_outputs(tmp_path):
    model = DecoderOnlyTransformer(30, 2, 16, 2, 32, dropout=0.0, positional="learned", max_length=16,
                                   norm_first=True)
    path = tmp_path / "model.keras"
    model.save(path)
    ids = [[3, 4, 5, 6, 7], [8, 9, 0, 0, 0]]
    result = subprocess.run([sys.executable, "-c", LOAD_ON_OTHER, str(path), json.dumps(ids), str(tmp_path / "o.npy")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=launch.worker_env(KERAS_BACKEND=OTHER))
    assert result.returncode == 0, result.stderr[-3000:]
    expected = keras.ops.convert_to_numpy(model({"token_ids": np.array(ids, "int32")}, training=False))
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, rtol=1e-5, atol=1e-5)
    tokens = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(tokens, model.generate([[3, 4, 5]], max_new_tokens=4, temperature=0.0))


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's stateless jit")
def test_jax_generation_reuses_its_compiled_step_and_sees_new_weights():
    model = DecoderOnlyTransformer(30, 1, 16, 2, 32, dropout=0.0)
    prompts = [[3, 4, 5], [6]]
    model.generate(prompts, max_new_tokens=4, temperature=0.0)
    traces = model.generation_trace_counts
    assert set(traces) == {"cached_step"} and traces["cached_step"] <= 2  # at most prompt + one-token steps
    model.generate([[7, 8, 9], [1]], max_new_tokens=4, temperature=0.0, top_k=3, seed=0)
    assert model.generation_trace_counts == traces  # same shapes: no new trace
    # The weights are an argument of the compiled step, not constants frozen into it: after
    # changing them, the cached step still agrees with a full (uncompiled-cache) recompute.
    keras.utils.set_random_seed(99)
    for variable in model.trainable_variables:
        variable.assign(keras.random.normal(variable.shape, stddev=0.5))
    cached = model.generate(prompts, max_new_tokens=4, temperature=0.0)
    np.testing.assert_array_equal(cached, model.generate(prompts, max_new_tokens=4, temperature=0.0, use_cache=False))
    assert model.generation_trace_counts["cached_step"] == traces["cached_step"]
