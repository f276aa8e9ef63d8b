"""Keras int8/int4 quantized weights as ONNX (quantized) operators, with the same integers.

Everything here works on one normal form, `RowQuantized`: integers `q` of shape `(rows, cols)`,
quantized along each row, i.e. one row per *output* channel. A projection's `(K, N)` kernel
becomes `rows = N, cols = K` (the layout of `com.microsoft.MatMulNBits`); an embedding table
`(V, d)` keeps its layout (the layout of `GatherBlockQuantized`, and of `MatMulNBits` for the
tied logits `x @ E^T`). The two scale conventions of Keras 3.15 are kept as Keras stores them:

- per row (int8, and int4 with `block_size=None/-1`): `value = q / scale[row]` (a divisor);
- sub-channel int4 (`Int4QuantizationConfig(block_size=b)`): `value = (q - zero[row, j // b]) *
  scale[row, j // b]` (a multiplier; asymmetric, int8 zero points in [-8, 7]).

Keras packs two signed nibbles per int8 byte along the last axis (low nibble first). ONNX's
4-bit operators read *unsigned* nibbles with a zero point, so a signed nibble `q` is written as
`q + 8` (the same 4 bits with the top bit flipped) and the zero point as `zero + 8` (default 8).

Operators (all measured against the Keras layers in `tests/test_native_projections.py`):
- int8 with Keras's input quantizer (the int8 default): the AbsMax quantization of the inputs in
  the graph (ReduceMax(Abs), Div, Mul, Round (half to even, like Keras), Clip, Cast int8), then
  `MatMulInteger(int8, int8)` (onnxruntime's CPU kernel accepts int8 x int8), Cast, and a Div by
  `inputs_scale * kernel_scale` as Keras does;
- int8 weight-only: `MatMul(x, Cast(q))` then Div by the scale (Keras's order of operations);
- int4: `MatMulNBits` (bits=4) when the block size is a power of two >= 16; per-row int4 is
  written as blocks of `PER_ROW_BLOCK` (or one power-of-two block >= max(16, K) for a shorter K)
  that all carry the same scale `1/scale`, and the default zero point 8. onnxruntime accepted one
  block spanning K for every size tried (16..8192), but a 1024-wide block took 3.6 ms against
  0.36 ms for blocks of 128 (1 x 1024 @ 1024 x 1024, one thread), so K is cut into blocks of 128.
  Other block sizes fall back to int8 initializers holding the int4 values, dequantized in the
  graph;
- int4 embedding lookup: `GatherBlockQuantized` (uint8 data, bits=4, the same packing as Keras).
"""

import dataclasses

import numpy as np

from onnx import TensorProto

from export.native.graph import MICROSOFT_DOMAIN


@dataclasses.dataclass
class RowQuantized:
    """Integers quantized along each row; see the module docstring for the two conventions."""

    bits: int  # 8 or 4
    q: np.ndarray  # (rows, cols) int8, values in [-128, 127] or [-8, 7]
    scale: np.ndarray  # (rows,) divisor, or (rows, n_blocks) multiplier when block_size is set
    zero: np.ndarray = None  # (rows, n_blocks) int8, only with block_size
    block_size: int = None

    def dequantize(self):
        """The float32 `(rows, cols)` matrix Keras computes from the stored integers."""
        q = self.q.astype("float32")
        if self.block_size is None:
            return q / self.scale[:, None]
        groups = np.arange(q.shape[1]) // self.block_size
        return (q - self.zero[:, groups].astype("float32")) * self.scale[:, groups]


def unpack_int4(packed, length):
    """Keras's `unpack_int4(packed, length, axis=-1)` in NumPy: signed int8 values in [-8, 7]."""
    nibbles = np.asarray(packed).view(np.uint8)
    low, high = nibbles & 0x0F, nibbles >> 4
    values = np.stack([low, high], axis=-1).reshape(*nibbles.shape[:-1], -1)[..., :length]
    return np.where(values >= 8, values.astype(np.int16) - 16, values).astype(np.int8)


def pack_uint4(values):
    """Pack unsigned 4-bit values two per byte along the last axis (low nibble first)."""
    values = np.asarray(values, dtype=np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    return values[..., 0::2] | (values[..., 1::2] << 4)


def is_block_size_supported(block_size):
    """onnxruntime's 4-bit operators take power-of-two blocks of at least 16."""
    return block_size >= 16 and block_size & (block_size - 1) == 0


PER_ROW_BLOCK = 128


def per_row_block_size(length):
    """The block size per-row int4 is written with: one block for a row of up to 128 values."""
    return min(PER_ROW_BLOCK, 1 << max(4, (int(length) - 1).bit_length()))


def _blocked(rq):
    """(block_size, uint8 values (rows, n_blocks * block_size), scales, zero points or None)."""
    rows, cols = rq.q.shape
    if rq.block_size is None:  # q / s == q * (1 / s): every block of a row has that scale
        block_size = per_row_block_size(cols)
        n_blocks = -(-cols // block_size)
        scales = np.repeat((1.0 / rq.scale.astype("float32"))[:, None], n_blocks, axis=1)
        zero = None
    else:
        block_size, scales, zero = rq.block_size, rq.scale.astype("float32"), (rq.zero + 8).astype(np.uint8)
        n_blocks = -(-cols // block_size)
    values = np.full((rows, n_blocks * block_size), 8, np.uint8)  # padding: the zero point 8
    values[:, :cols] = (rq.q.astype(np.int16) + 8).astype(np.uint8)
    return block_size, values, scales.astype("float32"), zero


# -- inputs quantizer ----------------------------------------------------------------------------


def _reduce_max_last(g, x, name):
    if g.opset >= 18:
        return g.op("ReduceMax", x, g.constant([-1]), keepdims=1, name=name)
    return g.op("ReduceMax", x, axes=[-1], keepdims=1, name=name)


def emit_inputs_quantizer(g, quantizer, x, name, cast=True):
    """Keras's `AbsMaxQuantizer` over the last (contracted) axis: `(q, scale)` with
    `scale = hi / (max|x| + epsilon)` and `q = clip(round(x * scale), lo, hi)`, int8 if `cast`."""
    from keras.quantizers import AbsMaxQuantizer

    if type(quantizer) is not AbsMaxQuantizer:
        raise ValueError(
            f"{name}: inputs quantizer {type(quantizer).__name__} is not supported by the native "
            "ONNX export (only keras.quantizers.AbsMaxQuantizer)."
        )
    lo, hi = quantizer.value_range
    amax = _reduce_max_last(g, g.op("Abs", x, name=f"{name}_abs"), f"{name}_amax")
    denominator = g.op("Add", amax, g.constant(quantizer.epsilon, "float32"), name=f"{name}_eps")
    scale = g.op("Div", g.constant(float(hi), "float32"), denominator, name=f"{name}_inputs_scale")
    scaled = g.op("Round", g.op("Mul", x, scale, name=f"{name}_scale_inputs"), name=f"{name}_round")
    bounds = g.constant(float(lo), "float32"), g.constant(float(hi), "float32")
    q = g.op("Clip", scaled, *bounds, name=f"{name}_clip")
    if cast:
        q = g.op("Cast", q, to=TensorProto.INT8, name=f"{name}_inputs_int8")
    return q, scale


# -- matrix products -----------------------------------------------------------------------------


def emit_int8_matmul(g, x, kernel, scale, name, inputs_quantizer=None):
    """`x @ (q / scale)` for tensors `kernel` (int8 `(K, N)`) and `scale` (float `(N,)`)."""
    if inputs_quantizer is None:
        kernel = g.op("Cast", kernel, to=TensorProto.FLOAT, name=f"{name}_kernel_float")
        y = g.op("MatMul", x, kernel, name=f"{name}_MatMul")
        return g.op("Div", y, scale, name=f"{name}_descale")
    q, inputs_scale = emit_inputs_quantizer(g, inputs_quantizer, x, name)
    y = g.op("MatMulInteger", q, kernel, name=f"{name}_MatMulInteger")
    y = g.op("Cast", y, to=TensorProto.FLOAT, name=f"{name}_float")
    output_scale = g.op("Mul", inputs_scale, scale, name=f"{name}_output_scale")
    return g.op("Div", y, output_scale, name=f"{name}_descale")


def emit_int4_matmul(g, x, rq, weight_name, name, inputs_quantizer=None):
    """`x @ dequantize(rq)^T` for 4-bit `rq` of shape `(N, K)`: MatMulNBits, or the fallback."""
    if inputs_quantizer is not None:  # Keras: (round(x * s_in) @ W) / s_in, the product in float
        x, inputs_scale = emit_inputs_quantizer(g, inputs_quantizer, x, name, cast=False)
    n, k = rq.q.shape
    if rq.block_size is None or is_block_size_supported(rq.block_size):
        block_size, values, scales, zero = _blocked(rq)
        b = g.weight(f"{weight_name}_nbits", pack_uint4(values).reshape(n, -1, block_size // 2), "uint8")
        s = g.weight(f"{weight_name}_nbits_scales", scales.reshape(-1))
        z = "" if zero is None else g.weight(f"{weight_name}_nbits_zero_points", pack_uint4(zero).reshape(-1),
                                             "uint8")
        y = g.op("MatMulNBits", x, b, s, z, domain=MICROSOFT_DOMAIN, K=k, N=n, bits=4,
                 block_size=block_size, name=f"{name}_MatMulNBits")
    else:
        kernel = _emit_blocks_dequantized(g, rq, weight_name, name)
        kernel = g.op("Transpose", kernel, perm=[1, 0], name=f"{name}_kernel")
        y = g.op("MatMul", x, kernel, name=f"{name}_MatMul")
    if inputs_quantizer is not None:
        y = g.op("Div", y, inputs_scale, name=f"{name}_descale_inputs")
    return y


def _emit_blocks_dequantized(g, rq, weight_name, name, ids=None):
    """`(q - zero[:, groups]) * scale[:, groups]` from int8 initializers of the int4 values, for
    block sizes onnxruntime's 4-bit operators refuse: the `(rows, cols)` float matrix, or its
    rows `ids`. The lookup and the logits of one embedding share these initializers."""

    def rows(tensor, what):
        return tensor if ids is None else g.op("Gather", tensor, ids, name=f"{name}_{what}_rows")

    q = rows(g.weight(f"{weight_name}_int4_values", rq.q, "int8"), "values")
    zero = rows(g.weight(f"{weight_name}_int4_zero", rq.zero, "int8"), "zero")
    scale = rows(g.weight(f"{weight_name}_int4_scale", rq.scale), "scale")
    groups = g.constant(np.arange(rq.q.shape[1]) // rq.block_size)
    q = g.op("Cast", q, to=TensorProto.FLOAT, name=f"{name}_values_float")
    zero = g.op("Cast", zero, to=TensorProto.FLOAT, name=f"{name}_zero_float")
    zero = g.op("Gather", zero, groups, axis=-1, name=f"{name}_zero_columns")
    scale = g.op("Gather", scale, groups, axis=-1, name=f"{name}_scale_columns")
    return g.op("Mul", g.op("Sub", q, zero, name=f"{name}_center"), scale, name=f"{name}_dequantize")


# -- embedding lookups ---------------------------------------------------------------------------


def emit_int8_gather(g, table, table_scale, ids, name):
    """`Gather(q, ids) / Gather(scale, ids)[..., None]` for tensors `table` (int8 `(V, d)`) and
    `table_scale` (float `(V,)`), as Keras's int8 `Embedding`."""
    rows = g.op("Gather", table, ids, name=f"{name}_Gather")
    rows = g.op("Cast", rows, to=TensorProto.FLOAT, name=f"{name}_float")
    scale = g.op("Gather", table_scale, ids, name=f"{name}_scale")
    scale = g.op("Unsqueeze", scale, g.constant([-1]), name=f"{name}_scale_column")
    return g.op("Div", rows, scale, name=f"{name}_descale")


def emit_int4_gather(g, rq, weight_name, ids, name):
    """Rows `ids` of `dequantize(rq)`: GatherBlockQuantized, or a Gather of int8 values."""
    width = rq.q.shape[1]
    if rq.block_size is None or is_block_size_supported(rq.block_size):
        block_size, values, scales, zero = _blocked(rq)
        data = g.weight(f"{weight_name}_gather_data", pack_uint4(values[:, :width]), "uint8")
        s = g.weight(f"{weight_name}_gather_scales", scales)
        z = "" if zero is None else g.weight(f"{weight_name}_gather_zero_points", pack_uint4(zero), "uint8")
        y = g.op("GatherBlockQuantized", data, ids, s, z, domain=MICROSOFT_DOMAIN, bits=4,
                 block_size=block_size, gather_axis=0, quantize_axis=1, name=f"{name}_GatherBlockQuantized")
        if width % 2:  # the output has the packed (even) width
            y = g.op("Slice", y, g.constant([0]), g.constant([width]), g.constant([-1]), name=f"{name}_unpad")
        return y
    return _emit_blocks_dequantized(g, rq, weight_name, name, ids)
