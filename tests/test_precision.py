"""fp16 and int8 conversion of native graphs: float32 IO kept, validated against Keras."""

import keras
import numpy as np
import onnx
import pytest

import export
from export.native import build
from export.precision import convert
from keras_transformer.models import DecoderOnlyTransformer, EncoderOnlyTransformer
from tests._native_helpers import run_onnx

VOCAB = 32


def _io_types(proto):
    return {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.input) + list(proto.graph.output)}


def test_fp16_keeps_float32_io_and_float32_positions():
    model = DecoderOnlyTransformer(VOCAB, 1, 16, 2, 32)
    fp32 = build(model)
    fp16 = convert(fp32, "fp16")
    assert _io_types(fp16) == _io_types(fp32)
    float_weights = [t for t in fp16.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in float_weights) > len(float_weights) // 2
    producers = {out: node for node in fp16.graph.node for out in node.output}
    angles = next(node for node in fp16.graph.node if node.name.endswith("/angles"))
    assert all(producers.get(name) is None or producers[name].op_type != "Cast"
               or producers[name].name.endswith("positions_float") for name in angles.input)
    # a long sequence: positions far beyond float16's exact integers still encode correctly
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(1, 300)).astype("int32")
    expected = keras.ops.convert_to_numpy(model({"token_ids": ids}))
    got = run_onnx(fp16, {"token_ids": ids})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())


def test_fp16_export_validates_on_cpu(tmp_path):
    model = EncoderOnlyTransformer(VOCAB, 1, 16, 2, 32, head="classification", num_classes=3, pooling="mean")
    report = export.to_onnx(model, tmp_path / "clf.onnx", precision="fp16", max_length=16, batch_sizes=(2,))
    assert report.method == "native" and report.precision == "fp16" and report.validation.passed


@pytest.fixture(scope="module")
def trained_language_model():
    """A tiny LM trained for a few seconds to map each token to a fixed next token: peaked,
    meaningful top-1 predictions (a random model's near-ties make top-1 agreement noise)."""
    import keras

    keras.utils.set_random_seed(5)
    model = DecoderOnlyTransformer(VOCAB, 1, 32, 2, 64, dropout=0.0)
    tokens = np.random.default_rng(5).integers(0, VOCAB, size=(512, 13)).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit({"token_ids": tokens}, tokens % (VOCAB - 1) + 1, epochs=4, batch_size=64, verbose=0)
    return model


def test_int8_agrees_on_top1_with_fp32(trained_language_model, tmp_path):
    model = trained_language_model
    report = export.to_onnx(model, tmp_path / "lm.int8.onnx", precision="int8", max_length=16, batch_sizes=(3,))
    assert report.method == "native" and report.validation.passed
    quantized = onnx.load(tmp_path / "lm.int8.onnx")
    ops = {node.op_type for node in quantized.graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    # the tied vocabulary projection is quantized too (its Transpose was folded into a weight)
    assert "Transpose" not in ops
    ids = np.random.default_rng(1).integers(1, VOCAB, size=(4, 12)).astype("int32")
    fp32_logits = run_onnx(build(model), {"token_ids": ids})[0]
    int8_logits = run_onnx(quantized, {"token_ids": ids})[0]
    agreement = (fp32_logits.argmax(-1) == int8_logits.argmax(-1)).mean()
    assert agreement >= 0.99, agreement


def test_int4_quantizes_every_weight_and_is_gated_by_top1(trained_language_model, tmp_path):
    """int4: MatMulNBits for every projection (the tied vocabulary one included) and
    GatherBlockQuantized for the token lookup, validated by top-1 agreement with a user gate."""
    model = trained_language_model
    report = export.to_onnx(model, tmp_path / "lm.int4.onnx", precision="int4", max_length=16, batch_sizes=(3,))
    assert report.validation.passed and report.precision == "int4"
    ops = {node.op_type for node in onnx.load(tmp_path / "lm.int4.onnx").graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and not {"MatMul", "Transpose"} & ops
    with pytest.raises(ValueError, match=r"min_top1.*1\.5"):
        export.to_onnx(model, tmp_path / "bad.onnx", precision="int4", min_top1=1.5, max_length=16)
    with pytest.raises(ValueError, match=r"block_size.*48"):
        convert(build(model), "int4", block_size=48)


def test_int8_has_no_qattention(trained_language_model):
    """The int8 form quantizes MatMuls only: no com.microsoft.QAttention, which OpenVINO lacks."""
    ops = {node.op_type for node in convert(build(trained_language_model), "int8").graph.node}
    assert "QAttention" not in ops and "MatMulInteger" in ops


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        convert(build(DecoderOnlyTransformer(VOCAB, 1, 16, 2, 32)), "int3")
