"""`export.native.projections`: Keras Dense/EinsumDense/Embedding (float, LoRA, int8, int4) vs
onnxruntime (CPU), on tiny random layers."""

import keras
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.native.graph import GraphBuilder
from export.native.projections import (
    dequantized_embeddings,
    emit_embedding_logits,
    emit_embedding_lookup,
    emit_fused_projections,
    emit_projection,
    projection_bias,
    projection_matrix,
)
from tests._native_helpers import run_onnx

ATOL = 1e-4
INT4_BLOCKED = "int4_block32"
INPUT_QUANTIZED = ("int8", "int8_lora", "int4_inputs")  # Keras quantizes these layers' inputs too
MODES = ["float", "lora", "int8", "int8_weight_only", "int4", "int4_inputs", INT4_BLOCKED,
         "int4_default_config", "int4_block24", "int8_lora"]

# (equation, output_shape, bias_axes, Keras input shape); the ONNX input is (2, 5, K).
EINSUM_CASES = {
    "btd,dnh->btnh": ("btd,dnh->btnh", (None, 3, 8), "nh", (2, 5, 48)),
    "btnh,nhd->btd": ("btnh,nhd->btd", (None, 48), "d", (2, 5, 3, 16)),
    "abc,cd->abd": ("abc,cd->abd", (None, 24), "d", (2, 5, 40)),
    "btd,dnh->bthn": ("btd,dnh->bthn", (None, 8, 3), "hn", (2, 5, 48)),
}


def _rng(seed):
    return np.random.default_rng(seed)


def _randomize_lora(layer, seed=7):
    a, b = (layer.lora_kernel_a, layer.lora_kernel_b) if hasattr(layer, "lora_kernel_a") else (
        layer.lora_embeddings_a, layer.lora_embeddings_b)
    a.assign(_rng(seed).normal(scale=0.3, size=a.shape))
    b.assign(_rng(seed + 1).normal(scale=0.3, size=b.shape))


def _apply_mode(layer, mode):
    """Quantize / enable LoRA on a built layer as `mode` says."""
    int4 = keras.quantizers.Int4QuantizationConfig
    if mode == "lora":
        layer.enable_lora(2, lora_alpha=3.0)
        _randomize_lora(layer)
    elif mode == "int8":
        layer.quantize("int8")
    elif mode == "int8_weight_only":
        layer.quantize("int8", config=keras.quantizers.Int8QuantizationConfig(activation_quantizer=None))
    elif mode == "int8_lora":
        layer.quantize("int8")
        layer.enable_lora(2)
        _randomize_lora(layer)
    elif mode == "int4":  # Dense.quantize("int4") with no config: per-channel, weight-only
        layer.quantize("int4")
    elif mode == "int4_inputs":
        config = int4(block_size=None, activation_quantizer=keras.quantizers.AbsMaxQuantizer())
        layer.quantize("int4", config=config)
    elif mode == INT4_BLOCKED:
        layer.quantize("int4", config=int4(block_size=32))
    elif mode == "int4_default_config":  # what model.quantize("int4") passes: blocks of 128 > K
        layer.quantize("int4", config=int4())
    elif mode == "int4_block24":  # not a power of two: the int8-storage fallback
        layer.quantize("int4", config=int4(block_size=24))
    else:
        assert mode == "float"


def _run_projection(layer, x_onnx, bias=True):
    g = GraphBuilder("projection_test")
    x = g.input("x", "float32", [None, None, x_onnx.shape[-1]])
    g.output(emit_projection(g, layer, x, "proj", bias=bias), "y", "float32", [None, None, None])
    model = g.model()
    return run_onnx(model, {"x": x_onnx})[0], model


def _integer_initializers(model):
    integer = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return [i.name for i in model.graph.initializer
            if i.data_type in integer and numpy_helper.to_array(i).size > 64]


def _float_initializers(model):
    """Sizes of the float initializers other than LoRA adapters."""
    return [numpy_helper.to_array(i).size for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT and "lora" not in i.name]


def _check_projection(layer, x_keras, mode):
    x_keras = x_keras.astype("float32")
    _apply_mode(layer, mode)
    expected = keras.ops.convert_to_numpy(layer(x_keras))
    x_onnx = x_keras.reshape(2, 5, -1)
    got, model = _run_projection(layer, x_onnx)
    np.testing.assert_allclose(got, expected.reshape(got.shape), atol=ATOL)
    if mode.startswith("int"):
        assert _integer_initializers(model), "quantized weights must be stored as integers"
        kernel_size = projection_matrix(layer).size
        assert max(_float_initializers(model)) < kernel_size, "no float copy of the kernel"
    # the dequantized kernel and the separate bias reproduce Keras too
    without_bias, _ = _run_projection(layer, x_onnx, bias=False)
    bias = projection_bias(layer)
    np.testing.assert_allclose(without_bias + (0 if bias is None else bias), got, atol=ATOL)
    if mode not in INPUT_QUANTIZED:  # the dequantized matrix leaves out the inputs' quantization
        dense = x_onnx @ projection_matrix(layer) + (0 if bias is None else bias)
        np.testing.assert_allclose(dense, got, atol=ATOL)
    return float(np.abs(got - expected.reshape(got.shape)).max())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_projection_matches_keras(mode, use_bias):
    layer = keras.layers.Dense(24, use_bias=use_bias, bias_initializer="random_normal")
    layer.build((2, 5, 40))
    _check_projection(layer, _rng(0).normal(size=(2, 5, 40)), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("case", sorted(EINSUM_CASES))
def test_einsum_projection_matches_keras(case, mode, use_bias):
    equation, output_shape, bias_axes, input_shape = EINSUM_CASES[case]
    if case == "btd,dnh->bthn" and mode == "int8_lora":
        pytest.skip("Keras 3.15's quantized LoRA branch applies B to the output's last axis: fails")
    layer = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes if use_bias else None,
                                     bias_initializer="random_normal")
    layer.build(input_shape)
    _check_projection(layer, _rng(1).normal(size=input_shape), mode)


def test_int8_projection_uses_matmul_integer_and_int4_matmul_nbits():
    for mode, op_type in [("int8", "MatMulInteger"), ("int4", "MatMulNBits"), (INT4_BLOCKED, "MatMulNBits")]:
        layer = keras.layers.Dense(24)
        layer.build((2, 5, 40))
        _apply_mode(layer, mode)
        _, model = _run_projection(layer, np.zeros((2, 5, 40), "float32"))
        assert op_type in {node.op_type for node in model.graph.node}, mode


def _initializer(model, name):
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def _unpack_uint4(packed, length):
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)[..., :length]


def test_stored_integers_are_keras_integers():
    """int8: the kernel initializer is `layer._kernel`; int4: MatMulNBits's nibbles are Keras's
    signed nibbles + 8 (transposed to (N, K)), its zero points Keras's + 8."""
    layer = keras.layers.Dense(24, name="int8_dense")
    layer.build((2, 5, 40))
    layer.quantize("int8")
    _, model = _run_projection(layer, np.zeros((2, 5, 40), "float32"))
    np.testing.assert_array_equal(_initializer(model, "int8_dense/kernel"), keras.ops.convert_to_numpy(layer._kernel))
    for block_size in (None, 32):
        layer = keras.layers.Dense(24, name=f"int4_dense_{block_size}")
        layer.build((2, 5, 40))
        layer.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(block_size=block_size))
        _, model = _run_projection(layer, np.zeros((2, 5, 40), "float32"))
        keras_values = keras.ops.convert_to_numpy(keras.quantizers.unpack_int4(layer._kernel, 24, axis=-1)).T  # (N, K)
        nbits = _initializer(model, f"{layer.name}/kernel_nbits")
        np.testing.assert_array_equal(_unpack_uint4(nbits.reshape(24, -1), 40).astype(int) - 8, keras_values)
        if block_size:
            zero = _initializer(model, f"{layer.name}/kernel_nbits_zero_points").reshape(24, -1)
            zero = _unpack_uint4(zero, 2)
            np.testing.assert_array_equal(zero.astype(int) - 8, keras.ops.convert_to_numpy(layer.kernel_zero).T)


@pytest.mark.parametrize("mode,k", [(INT4_BLOCKED, 40), ("int4", 300), ("int4_inputs", 300)])
def test_int4_blocks_with_a_padded_tail_match_keras(mode, k):
    """K = 40 in blocks of 32; per-channel K = 300 in blocks of 128 (all with the row's scale)."""
    layer = keras.layers.Dense(6)
    layer.build((2, 5, k))
    _check_projection(layer, _rng(3).normal(size=(2, 5, k)), mode)


def test_fused_projections_equal_separate_ones():
    layers = [keras.layers.EinsumDense("btd,dnh->btnh", (None, 2, 8), bias_axes=a)
              for a in ("nh", None, "nh")]
    x = _rng(4).normal(size=(2, 5, 16)).astype("float32")
    for layer in layers:
        layer.build(x.shape)
        if layer.bias is not None:
            layer.bias.assign(_rng(5).normal(size=layer.bias.shape))
    layers[1].enable_lora(2)
    _randomize_lora(layers[1])
    expected = [keras.ops.convert_to_numpy(layer(x)).reshape(2, 5, -1) for layer in layers]
    for quantize in (False, True):
        if quantize:
            layers[2].quantize("int8")
            expected[2] = keras.ops.convert_to_numpy(layers[2](x)).reshape(2, 5, -1)
        g = GraphBuilder("fused_test")
        x_ = g.input("x", "float32", [None, None, 16])
        for i, y in enumerate(emit_fused_projections(g, layers, x_, "qkv")):
            g.output(y, f"y{i}", "float32", [None, None, None])
        model = g.model()
        n_matmuls = sum(node.op_type == "MatMul" for node in model.graph.node)
        assert n_matmuls == (2 if quantize else 1)
        for got, want in zip(run_onnx(model, {"x": x}), expected):
            np.testing.assert_allclose(got, want, atol=ATOL)


EMBEDDING_MODES = ["float", "lora", "int8", "int4", INT4_BLOCKED, "int4_block24", "int8_lora"]


def _quantize_embedding(layer, mode):
    if mode == "lora" or mode == "int8_lora":
        if mode == "int8_lora":
            layer.quantize("int8")
        layer.enable_lora(2, lora_alpha=3.0)
        _randomize_lora(layer)
    elif mode != "float":
        _apply_mode(layer, mode)


@pytest.mark.parametrize("mode", EMBEDDING_MODES)
@pytest.mark.parametrize("width", [64, 17])
def test_embedding_lookup_and_logits_match_keras(mode, width):
    layer = keras.layers.Embedding(30, width, embeddings_initializer="random_normal")
    layer.build()
    _quantize_embedding(layer, mode)
    ids = _rng(6).integers(0, 30, size=(2, 5)).astype("int64")
    hidden = _rng(8).normal(size=(2, 5, width)).astype("float32")
    expected_rows = keras.ops.convert_to_numpy(layer(ids))
    table = dequantized_embeddings(layer)
    np.testing.assert_allclose(table[ids], expected_rows, atol=ATOL)
    g = GraphBuilder("embedding_test")
    ids_ = g.input("ids", "int64", [None, None])
    x_ = g.input("x", "float32", [None, None, width])
    g.output(emit_embedding_lookup(g, layer, ids_, "lookup"), "rows", "float32", [None, None, width])
    g.output(emit_embedding_logits(g, layer, x_, "logits"), "logits", "float32", [None, None, 30])
    model = g.model()
    rows, logits = run_onnx(model, {"ids": ids, "x": hidden})
    np.testing.assert_allclose(rows, expected_rows, atol=ATOL)
    np.testing.assert_allclose(logits, hidden @ table.T, atol=ATOL)
    if mode.startswith("int"):
        assert _integer_initializers(model)
        assert max(_float_initializers(model)) < 30 * width, "no float copy of the table"


@pytest.mark.parametrize("mode", ["float", "lora", "int8", "int8_weight_only"])
def test_kernel_with_contracted_axis_in_the_middle_matches_keras(mode):
    """'btd,ndh->btnh': the kernel is transposed into the (K, N) view (int4 raises: Keras flattens
    such a kernel without transposing, so its int4 columns are not output channels)."""
    layer = keras.layers.EinsumDense("btd,ndh->btnh", (None, 3, 8), bias_axes="nh", bias_initializer="ones")
    layer.build((2, 5, 16))
    _check_projection(layer, _rng(9).normal(size=(2, 5, 16)), mode)


def test_int4_kernel_with_contracted_axis_in_the_middle_is_rejected():
    layer = keras.layers.EinsumDense("btd,ndh->btnh", (None, 3, 8))
    layer.build((2, 5, 16))
    layer.quantize("int4")
    g = GraphBuilder("bad")
    with pytest.raises(ValueError, match="int4"):
        emit_projection(g, layer, g.input("x", "float32", [None, None, 16]), "proj")


def test_float8_layer_is_rejected_with_its_name_and_mode():
    layer = keras.layers.Dense(8, name="my_projection")
    layer.build((2, 16))
    layer.quantize("float8")
    g = GraphBuilder("bad")
    x = g.input("x", "float32", [None, 16])
    with pytest.raises(ValueError, match="my_projection.*float8"):
        emit_projection(g, layer, x, "proj")


def test_unsupported_equation_and_activation_are_rejected():
    g = GraphBuilder("bad")
    x = g.input("x", "float32", [None, None, 16])
    batched = keras.layers.EinsumDense("btd,bdh->bth", (None, 4))
    batched.build((2, 5, 16))
    with pytest.raises(ValueError, match="not a projection"):
        emit_projection(g, batched, x, "proj")
    activated = keras.layers.Dense(4, activation="relu", name="relu_dense")
    activated.build((2, 5, 16))
    with pytest.raises(ValueError, match="relu_dense"):
        emit_projection(g, activated, x, "proj")


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_inputs_quantizer_for_each_opset_on_a_2d_input(opset):
    """ReduceMax takes `axes` as an attribute before opset 18 and as an input from 18 on."""
    layer = keras.layers.Dense(7, bias_initializer="ones")
    layer.build((3, 20))
    layer.quantize("int8")
    x = _rng(10).normal(size=(3, 20)).astype("float32")
    g = GraphBuilder("opset_test", opset=opset)
    g.output(emit_projection(g, layer, g.input("x", "float32", [None, 20]), "proj"), "y", "float32", [None, 7])
    np.testing.assert_allclose(run_onnx(g.model(), {"x": x})[0], keras.ops.convert_to_numpy(layer(x)), atol=ATOL)
