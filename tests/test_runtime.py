"""export.runtime.OnnxModel: numpy in, numpy out, input checks, threads, no TensorFlow import."""

import concurrent.futures
import logging
import subprocess
import sys

import numpy as np
import pytest

import _onnx_graphs as graphs
from export.runtime import OnnxModel, resolve_providers


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return graphs.embedding_classifier(str(tmp_path_factory.mktemp("rt") / "model.onnx"))


def _feeds(batch=2, length=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"token_ids": rng.integers(0, graphs.VOCAB, (batch, length)).astype(np.int32),
            "bias": rng.normal(size=(batch, 1, graphs.CLASSES)).astype(np.float32)}


def test_importing_runtime_does_not_import_tensorflow_or_keras():
    code = ("import sys, export.runtime, export; "
            "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_call_with_dict_list_and_output_subset(model_path):
    model = OnnxModel(model_path)
    feeds = _feeds()
    want = graphs.reference(**feeds)
    assert model.input_names == ("token_ids", "bias") and model.output_names == ("logits",)
    np.testing.assert_allclose(model(feeds)["logits"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model([feeds["token_ids"], feeds["bias"]])["logits"], want, rtol=1e-5, atol=1e-5)
    assert list(model(feeds, output_names=["logits"])) == ["logits"]
    assert model.metadata == {}


def test_safe_casts(model_path):
    model = OnnxModel(model_path)
    feeds = _feeds()
    cast = {"token_ids": feeds["token_ids"].astype(np.int64), "bias": feeds["bias"].astype(np.float64)}
    np.testing.assert_allclose(model(cast)["logits"], graphs.reference(**feeds), rtol=1e-5, atol=1e-5)


def test_input_errors_are_clear(model_path):
    model = OnnxModel(model_path)
    feeds = _feeds()
    with pytest.raises(ValueError, match=r"unknown: \['extra'\]"):
        model({**feeds, "extra": feeds["bias"]})
    with pytest.raises(ValueError, match=r"missing: \['bias'\]"):
        model({"token_ids": feeds["token_ids"]})
    with pytest.raises(ValueError, match="'token_ids' must have rank 2"):
        model({**feeds, "token_ids": feeds["token_ids"][0]})
    with pytest.raises(ValueError, match="size 3 on axis 2"):
        model({**feeds, "bias": np.zeros((2, 1, 4), np.float32)})
    with pytest.raises(ValueError, match="outside int32"):
        model({**feeds, "token_ids": np.full((2, 5), 2**40, np.int64)})
    halves = feeds["token_ids"].astype(np.float32) + 0.5
    with pytest.raises(ValueError, match=r"inputs\['token_ids'\].*whole values\); received"):
        model({**feeds, "token_ids": halves})
    with pytest.raises(ValueError, match="hold 2 arrays"):
        model([feeds["token_ids"]])


def test_constructor_errors(model_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="graph_optimization_level"):
        OnnxModel(model_path, graph_optimization_level="max")


def test_providers_and_log_line(model_path, caplog):
    with caplog.at_level(logging.INFO, logger="export.runtime"):
        model = OnnxModel(model_path, intra_op_num_threads=1, graph_optimization_level="basic")
    expected = resolve_providers("auto")[0]
    assert model.providers[0] == expected
    assert any(expected in record.getMessage() for record in caplog.records)
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_shared_across_threads(model_path):
    model = OnnxModel(model_path)
    requests = [_feeds(batch=1 + i % 3, length=1 + i % 7, seed=i) for i in range(64)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda feeds: model(feeds)["logits"], requests))
    for feeds, got in zip(requests, results):
        np.testing.assert_allclose(got, graphs.reference(**feeds), rtol=1e-5, atol=1e-5)
