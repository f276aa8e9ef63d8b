"""Tracing export of exact-GELU models: TF's `Erfc` becomes `1 - Erf` and the file validates."""

import collections
import logging

import keras
import numpy as np
import onnx
import pytest

import export
from export import graph_cleanup
from export.runtime import OnnxModel
from keras_transformer import layers
from keras_transformer.models import DecoderOnlyTransformer
import _export_fixtures as fx


def _op_counts(path):
    return collections.Counter(node.op_type for node in onnx.load(path).graph.node)


@pytest.mark.tensorflow  # tf2onnx tracing
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_gpt_tiny_preset_exports_through_tracing(tmp_path, policy, caplog):
    model = DecoderOnlyTransformer.from_preset("gpt_tiny", dropout=0.0, dtype=policy)
    fx.randomize(model)
    ids = np.random.default_rng(0).integers(1, 64, (2, 5)).astype(np.int32)
    path = tmp_path / "gpt.onnx"
    # mixed precision is the documented fallback of the auto mode; fp32 forces tracing
    report = export.to_onnx(model, path, method="auto" if policy != "float32" else "tracing", max_length=8)
    assert report.method == "tracing" and report.validation.passed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no "Erfc is not supported"
    counts = _op_counts(path)
    assert counts["Erfc"] == 0 and counts["Erf"] == 2  # one GELU per block
    onnx.checker.check_model(onnx.load(path), full_check=True)
    expected = np.asarray(model({"token_ids": ids}), np.float32)
    actual = OnnxModel(path)({"token_ids": ids})["logits"]
    tolerance = 1e-4 if policy == "float32" else 5e-2
    np.testing.assert_allclose(actual, expected, atol=tolerance * max(1.0, np.abs(expected).max()), rtol=tolerance)


@pytest.mark.tensorflow  # a user layer has no native emitter: tf2onnx tracing
def test_user_layer_in_a_gelu_model_exports(tmp_path):
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = layers.TokenAndPositionEmbedding(fx.VOCAB, 16, max_length=fx.MAX_LENGTH, positional="learned")(ids)
    x = layers.EncoderBlock(2, 32, dropout=0.0, activation="gelu")(x)
    x = fx.GatedResidual()(x)
    model = fx.randomize(keras.Model({"token_ids": ids}, keras.layers.Dense(5)(x)))
    report = export.to_onnx(model, tmp_path / "m.onnx", max_length=6)
    assert report.method == "tracing" and report.validation.passed
    assert _op_counts(tmp_path / "m.onnx")["Erfc"] == 0


def test_erfc_rewrite_leaves_graphs_without_erfc_alone():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Erf", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = onnx.helper.make_model(graph)
    before = model.SerializeToString()
    assert graph_cleanup.rewrite_erfc(model) == 0
    assert model.SerializeToString() == before
