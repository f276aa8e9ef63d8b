"""Keras projection layers (`Dense`, `EinsumDense`, `Embedding`) as ONNX, from their weights.

Every emitter of the package writes its projections through this module, so float, LoRA and
Keras-quantized (int8, int4) layers are handled in one place.

Conventions:
- A projection is `y = x @ W (+ b)` with the kernel viewed as a 2-D `(K, N)` matrix. An
  `EinsumDense` equation must contract the input's trailing axes with kernel axes and keep its
  leading axes (`"btd,dnh->btnh"`, `"btnh,nhd->btd"`, `"abc,cd->abd"`, `"...d,dh->...h"`). In
  ONNX the input is `(..., K)`, K the product of the contracted dimensions in the input's order
  (a Keras `(B, T, n, h)` input is `(B, T, n*h)`), and the output is `(..., N)`, N the product of
  the kernel's other dimensions in the output's order. The activation must be linear.
- Float layers, LoRA included, use the merged kernel Keras's `layer.kernel` returns,
  `kernel + (lora_alpha / lora_rank) * lora_a @ lora_b`: one MatMul.
- Quantized layers keep Keras's integers (see `export.native.quantized` for the operators). A
  quantized layer with LoRA adds Keras's LoRA branch, `(lora_alpha / lora_rank) * x @ A @ B`,
  in float. float8, GPTQ and AWQ raise a ValueError.
- Weights are stored as `<layer.path>/<variable>`, so a layer emitted twice (a tied embedding's
  lookup and logits) is stored once.
- `emit_projection` returns the output with the bias added unless `bias=False`;
  `projection_bias(layer)` gives the flattened `(N,)` bias (or None) to fold into a residual Add.
"""

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from export.native import quantized
from export.native.quantized import RowQuantized, unpack_int4

SUPPORTED_MODES = (None, "int8", "int4")


def _numpy(value, dtype="float32"):
    return np.asarray(ops.convert_to_numpy(value), dtype=dtype)


def _check_mode(layer):
    mode = layer.quantization_mode
    if mode not in SUPPORTED_MODES:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has quantization_mode={mode!r}; the native "
            "ONNX export supports float, LoRA, 'int8' and 'int4' layers."
        )
    return mode


def _weight_name(layer, variable):
    return f"{layer.path or layer.name}/{variable}"


@dataclasses.dataclass(frozen=True)
class KernelLayout:
    """How a layer's kernel maps onto the `(K, N)` view: `kernel.transpose(perm).reshape(K, N)`."""

    perm: tuple
    contracted_dims: tuple  # in the input's order
    free_dims: tuple  # in the output's order
    free_perm: tuple  # the kernel's free axes (in kernel order) -> the output's order
    rows_leading: bool  # the kernel starts with the contracted axes, in the input's order

    @property
    def K(self):
        return math.prod(self.contracted_dims)

    @property
    def N(self):
        return math.prod(self.free_dims)


def kernel_layout(layer):
    """The `KernelLayout` of a built `Dense` or `EinsumDense`; ValueError for other equations."""
    if isinstance(layer, keras.layers.Dense):
        k = layer._orig_input_dim if layer.quantization_mode == "int4" else layer._kernel.shape[0]
        return KernelLayout((0, 1), (int(k),), (int(layer.units),), (0,), True)
    if not isinstance(layer, keras.layers.EinsumDense):
        raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) is not a Dense or EinsumDense.")
    shape = tuple(getattr(layer, "original_kernel_shape", None) or layer._kernel.shape)
    operands, output = layer.equation.replace("...", ".").split("->")
    inputs, kernel = operands.split(",")
    contracted = [c for c in inputs if c in kernel and c not in output]
    free = [c for c in output if c in kernel]
    batch = [c for c in inputs if c not in kernel]
    if (inputs != "".join(batch + contracted) or output != "".join(batch + free)
            or sorted(kernel) != sorted(contracted + free) or not contracted):
        raise ValueError(
            f"EinsumDense {layer.name!r}: equation {layer.equation!r} is not a projection of the input's "
            "trailing axes (expected e.g. 'btd,dnh->btnh' or 'btnh,nhd->btd')."
        )
    kernel_free = [c for c in kernel if c in free]
    return KernelLayout(
        perm=tuple(kernel.index(c) for c in contracted + free),
        contracted_dims=tuple(int(shape[kernel.index(c)]) for c in contracted),
        free_dims=tuple(int(shape[kernel.index(c)]) for c in free),
        free_perm=tuple(kernel_free.index(c) for c in free),
        rows_leading=kernel.startswith("".join(contracted)),
    )


def _output_aligned(layer, value, layout, what):
    """A variable broadcast against Keras's output (bias, int8 kernel scale) as a flat `(N,)`."""
    value = _numpy(value)
    while value.ndim > len(layout.free_dims) and value.shape[0] == 1:
        value = value[0]
    if value.ndim > len(layout.free_dims):
        raise ValueError(f"Layer {layer.name!r}: its {what} of shape {value.shape} varies over batch axes.")
    return np.broadcast_to(value, layout.free_dims).reshape(-1).astype("float32")


def projection_bias(layer):
    """The layer's bias flattened to `(N,)` float32, or None."""
    if getattr(layer, "bias", None) is None:
        return None
    return _output_aligned(layer, layer.bias, kernel_layout(layer), "bias")


def _lora(layer):
    """`(A, B, factor)` of an enabled LoRA adapter, else None (A is kernel-shaped but rank-last)."""
    if not getattr(layer, "lora_enabled", False):
        return None
    prefix = "lora_embeddings" if isinstance(layer, keras.layers.Embedding) else "lora_kernel"
    a, b = getattr(layer, f"{prefix}_a"), getattr(layer, f"{prefix}_b")
    return _numpy(a), _numpy(b), float(layer.lora_alpha) / float(layer.lora_rank)


def _to_view(layout, kernel_shaped):
    return np.transpose(kernel_shaped, layout.perm).reshape(layout.K, layout.N)


def quantized_rows(layer):
    """The stored integers of a quantized Dense/EinsumDense as `RowQuantized` `(N, K)`."""
    mode, layout = _check_mode(layer), kernel_layout(layer)
    if mode == "int8":
        q = np.ascontiguousarray(_to_view(layout, _numpy(layer._kernel, "int8")).T)
        return RowQuantized(8, q, _output_aligned(layer, layer.kernel_scale, layout, "kernel_scale"))
    if not layout.rows_leading:
        raise ValueError(
            f"EinsumDense {layer.name!r}: int4 kernels are stored flattened as (contracted, free); the "
            f"equation {layer.equation!r} does not put the contracted axes first in the input's order."
        )
    # Keras's columns follow the kernel's free axes; ours the output's
    kernel_free_dims = [layout.free_dims[layout.free_perm.index(i)] for i in range(len(layout.free_dims))]
    columns = np.arange(layout.N).reshape(kernel_free_dims).transpose(layout.free_perm).reshape(-1)
    q = np.ascontiguousarray(unpack_int4(_numpy(layer._kernel, "int8"), layout.N)[:, columns].T)
    scale = _numpy(layer.kernel_scale)
    block_size = getattr(layer, "_int4_block_size", None)
    if block_size is None or block_size == -1:
        return RowQuantized(4, q, scale[columns])
    zero = _numpy(layer.kernel_zero, "int8")[:, columns].T.copy()
    return RowQuantized(4, q, scale[:, columns].T.copy(), zero, block_size)


def projection_matrix(layer):
    """The `(K, N)` float32 kernel Keras computes with (dequantized, LoRA merged)."""
    if _check_mode(layer) is None:
        return _to_view(kernel_layout(layer), _numpy(layer.kernel))
    layout, matrix = kernel_layout(layer), quantized_rows(layer).dequantize().T
    lora = _lora(layer)
    if lora is not None:
        a, b, factor = lora
        matrix = matrix + factor * _to_view(layout, np.matmul(a, b))
    return matrix.astype("float32")


def _check_linear(layer):
    activation = getattr(layer, "activation", None)
    if activation not in (None, keras.activations.linear):
        raise ValueError(f"Layer {layer.name!r} has activation {activation!r}; projections must be linear.")


def emit_projection(g, layer, x, name, bias=True, ignore_activation=False):
    """`x @ W (+ b)` for a Dense/EinsumDense `layer` on the `(..., K)` tensor `x`; see the module
    docstring. Returns the `(..., N)` output name. `ignore_activation`: the caller emits the
    layer's activation itself (a Dense with an activation)."""
    if not ignore_activation:
        _check_linear(layer)
    mode = _check_mode(layer)
    if mode is None:
        kernel = g.weight(_weight_name(layer, "kernel"), projection_matrix(layer))
        y = g.op("MatMul", x, kernel, name=f"{name}_MatMul")
    else:
        y = _emit_quantized(g, layer, x, name, mode)
    b = projection_bias(layer) if bias else None
    if b is not None:
        y = g.op("Add", y, g.weight(_weight_name(layer, "bias"), b), name=f"{name}_bias")
    return y


def _emit_quantized(g, layer, x, name, mode):
    rq, quantizer = quantized_rows(layer), getattr(layer, "inputs_quantizer", None)
    if mode == "int8":
        kernel = g.weight(_weight_name(layer, "kernel"), rq.q.T, "int8")
        scale = g.weight(_weight_name(layer, "kernel_scale"), rq.scale)
        y = quantized.emit_int8_matmul(g, x, kernel, scale, name, quantizer)
    else:
        if rq.block_size is not None:
            quantizer = None  # Keras's sub-channel int4 path never quantizes the inputs
        y = quantized.emit_int4_matmul(g, x, rq, _weight_name(layer, "kernel"), name, quantizer)
    lora = _lora(layer)
    if lora is None:
        return y
    a, b, factor = lora
    if a.ndim == 2:  # Dense or a 2-D EinsumDense: the low-rank product, factor folded into B
        low = g.op("MatMul", x, g.weight(_weight_name(layer, "lora_kernel_a"), a), name=f"{name}_lora_a")
        b = g.weight(_weight_name(layer, "lora_kernel_b"), factor * b)
        delta = g.op("MatMul", low, b, name=f"{name}_lora_b")
    else:  # the adapter's rank sits inside the kernel's axes: its (K, N) product
        delta = g.weight(_weight_name(layer, "lora_delta"), factor * _to_view(kernel_layout(layer), a @ b))
        delta = g.op("MatMul", x, delta, name=f"{name}_lora")
    return g.op("Add", y, delta, name=f"{name}_lora_add")


def emit_fused_projections(g, layers, x, name, bias=True):
    """Projections of the same input: one MatMul over the concatenated float kernels, split back
    (e.g. fused Q/K/V). Quantized layers are emitted one by one. Returns a list of outputs."""
    if any(_check_mode(layer) is not None for layer in layers) or len(layers) == 1:
        return [emit_projection(g, layer, x, f"{name}_{i}", bias=bias) for i, layer in enumerate(layers)]
    for layer in layers:
        _check_linear(layer)
    matrices = [projection_matrix(layer) for layer in layers]
    widths = [m.shape[1] for m in matrices]
    key = "+".join(_weight_name(layer, "kernel") for layer in layers)
    y = g.op("MatMul", x, g.weight(f"{key}/fused", np.concatenate(matrices, axis=1)), name=f"{name}_MatMul")
    biases = [projection_bias(layer) if bias else None for layer in layers]
    if any(b is not None for b in biases):
        full = np.concatenate([np.zeros(w, "float32") if b is None else b for b, w in zip(biases, widths)])
        y = g.op("Add", y, g.weight(f"{key}/fused_bias", full), name=f"{name}_bias")
    return g.op("Split", y, g.constant(widths), axis=-1, outputs=len(layers), name=f"{name}_Split")


# -- embeddings ----------------------------------------------------------------------------------


def _check_embedding(layer):
    if not isinstance(layer, keras.layers.Embedding):
        raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) is not an Embedding layer.")
    return _check_mode(layer)


def embedding_rows(layer):
    """The stored integers of a quantized Embedding as `RowQuantized` `(V, d)`."""
    mode = _check_embedding(layer)
    if mode == "int8":
        return RowQuantized(8, _numpy(layer._embeddings, "int8"), _numpy(layer.embeddings_scale))
    q = unpack_int4(_numpy(layer._embeddings, "int8"), layer.output_dim)
    block_size = getattr(layer, "_int4_block_size", None)
    if block_size is None or block_size == -1:
        return RowQuantized(4, q, _numpy(layer.embeddings_scale))
    zero = _numpy(layer.embeddings_zero, "int8")
    return RowQuantized(4, q, _numpy(layer.embeddings_scale), zero, block_size)


def dequantized_embeddings(layer):
    """The `(V, d)` float32 table a lookup returns rows of: the float table (LoRA merged), or the
    stored integers dequantized (int8: `q / scale[:, None]`) plus the LoRA product if enabled."""
    if _check_embedding(layer) is None:
        return _numpy(layer.embeddings)
    table = embedding_rows(layer).dequantize()
    lora = _lora(layer)
    if lora is not None:
        a, b, factor = lora
        table = table + factor * (a @ b)
    return table.astype("float32")


def emit_embedding_lookup(g, layer, ids, name):
    """Rows `ids` (int32/int64, any shape) of the embedding: `(*ids.shape, d)` float."""
    mode = _check_embedding(layer)
    table_name = _weight_name(layer, "embeddings")
    if mode is None:
        return g.op("Gather", g.weight(table_name, dequantized_embeddings(layer)), ids, name=f"{name}_Gather")
    rq = embedding_rows(layer)
    if mode == "int8":
        scale = g.weight(_weight_name(layer, "embeddings_scale"), rq.scale)
        y = quantized.emit_int8_gather(g, g.weight(table_name, rq.q, "int8"), scale, ids, name)
    else:
        y = quantized.emit_int4_gather(g, rq, table_name, ids, name)
    lora = _lora(layer)
    if lora is None:
        return y
    a, b, factor = lora
    low = g.op("Gather", g.weight(_weight_name(layer, "lora_embeddings_a"), a), ids, name=f"{name}_lora_a")
    b = g.weight(_weight_name(layer, "lora_embeddings_b"), factor * b)
    delta = g.op("MatMul", low, b, name=f"{name}_lora_b")
    return g.op("Add", y, delta, name=f"{name}_lora_add")


def emit_embedding_logits(g, layer, x, name):
    """The tied output projection `x @ E^T` of `x` `(..., d)`: `(..., V)`, E as in
    `dequantized_embeddings` (the float table is stored once, shared with the lookup)."""
    mode = _check_embedding(layer)
    table_name = _weight_name(layer, "embeddings")
    if mode is None:
        table = g.weight(table_name, dequantized_embeddings(layer))
        transposed = g.op("Transpose", table, perm=[1, 0], name=f"{name}_transpose")
        return g.op("MatMul", x, transposed, name=f"{name}_MatMul")
    rq = embedding_rows(layer)
    if mode == "int8":  # (x @ q^T) / scale: the int8 table is shared with the lookup
        kernel = g.op("Transpose", g.weight(table_name, rq.q, "int8"), perm=[1, 0], name=f"{name}_transpose")
        scale = g.weight(_weight_name(layer, "embeddings_scale"), rq.scale)
        y = quantized.emit_int8_matmul(g, x, kernel, scale, name)
    else:
        y = quantized.emit_int4_matmul(g, x, rq, table_name, name)
    lora = _lora(layer)
    if lora is None:
        return y
    a, b, factor = lora  # x @ (factor * A @ B)^T = (x @ factor * B^T) @ A^T
    b_t = g.weight(_weight_name(layer, "lora_embeddings_b_t"), factor * b.T)
    a_t = g.weight(_weight_name(layer, "lora_embeddings_a_t"), a.T)
    delta = g.op("MatMul", g.op("MatMul", x, b_t, name=f"{name}_lora_b"), a_t, name=f"{name}_lora_a")
    return g.op("Add", y, delta, name=f"{name}_lora_add")
