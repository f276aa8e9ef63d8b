"""OpenVINO (a runtime nobody here wrote) runs our graphs: the portable generation graphs
(prefill, then a step fed the present as its past) and the int8 graph, which quantizes MatMuls
only (no `com.microsoft.QAttention`). OpenVINO 2026.4 cannot convert `GroupQueryAttention` with
an `attention_bias`, which the fused cache graphs use: OpenVINO users write `attention="portable"`.
Float32 inference is requested: OpenVINO's CPU plugin defaults to bfloat16 where the CPU has it."""

import keras
import numpy as np
import onnx
import pytest

import export
from export.native import save_generation_graphs
from keras_transformer.models import DecoderOnlyTransformer

ov = pytest.importorskip("openvino")
VOCAB = 40


def _compile(path):
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def _model(shape):
    keras.utils.set_random_seed(11)
    if shape == "llama":
        return DecoderOnlyTransformer.from_preset("llama_tiny")  # grouped-query, rotary, RMSNorm, SwiGLU
    return DecoderOnlyTransformer(VOCAB, 2, 32, 2, 64, dropout=0.0, max_length=32, positional="learned",
                                  norm_first=True, tie_embeddings=False)


@pytest.mark.parametrize("shape", ["gpt", "llama"])
def test_openvino_runs_the_portable_generation_graph_like_keras(shape, tmp_path):
    model = _model(shape)
    save_generation_graphs(model, tmp_path / "graphs", attention="portable")
    compiled = _compile(tmp_path / "graphs" / "decoder_with_past.onnx")
    ids = np.random.default_rng(2).integers(1, min(VOCAB, model.vocab_size), size=(2, 7))
    expected = keras.ops.convert_to_numpy(model({"token_ids": ids.astype("int32")}))
    spec = model.cache_spec
    empty = np.zeros((2, spec.num_key_value_heads, 0, spec.head_dim), np.float32)
    past = {f"past_key_values.{i}.{part}": empty for i in range(spec.num_layers) for part in ("key", "value")}
    prefill = compiled({"input_ids": ids[:, :6], "attention_mask": np.ones((2, 6), np.int64),
                        "position_ids": np.tile(np.arange(6), (2, 1)), **past})
    np.testing.assert_allclose(prefill[compiled.output("logits")], expected[:, :6], atol=1e-4)
    past = {name: prefill[compiled.output(name.replace("past_key_values.", "present."))] for name in past}
    step = compiled({"input_ids": ids[:, 6:], "attention_mask": np.ones((2, 7), np.int64),
                     "position_ids": np.full((2, 1), 6), **past})
    np.testing.assert_allclose(step[compiled.output("logits")], expected[:, 6:], atol=1e-4)


def test_openvino_runs_the_int8_graph_like_onnxruntime(tmp_path):
    import onnxruntime

    model = _model("gpt")
    export.to_onnx(model, tmp_path / "int8.onnx", precision="int8", max_length=16)
    ops = {node.op_type for node in onnx.load(tmp_path / "int8.onnx").graph.node}
    assert "QAttention" not in ops
    ids = np.random.default_rng(3).integers(1, VOCAB, size=(2, 9)).astype("int32")
    session = onnxruntime.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    (ours,) = session.run(["logits"], {"token_ids": ids})
    compiled = _compile(tmp_path / "int8.onnx")
    theirs = compiled({"token_ids": ids})[compiled.output("logits")]
    float32 = keras.ops.convert_to_numpy(model({"token_ids": ids}))
    # Both quantize each MatMul's activations on the fly; they may round a scale differently,
    # so OpenVINO is held to the int8 graph's own distance from float32, not to bit equality.
    budget = np.abs(ours - float32).max()
    assert np.abs(theirs - float32).max() <= 2 * budget
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.95
