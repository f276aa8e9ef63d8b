"""Reduced-precision ONNX graphs: float16 weights and compute (GPU), int8 dynamic quantization (CPU).

Both start from a float32 `onnx.ModelProto` (native or traced) and use onnxruntime's own tools:

* `"fp16"`: `onnxruntime.transformers.float16.convert_float_to_float16` with float32 inputs and
  outputs kept (`keep_io_types=True`). The positional-encoding angles and the sine/cosine stay
  in float32 (positions beyond 2048 are not even representable as float16 integers), as do
  softmax and the index/arange ops; onnxruntime's LayerNormalization accumulates in float32
  (`stash_type=1`) and its fused attention runs its softmax in float32. float16 kernels exist on
  CPU for the ops the native graph uses, so the result validates on CPU; on a GPU
  (onnxruntime-gpu) it runs on CUDA with CPU fallback for any missing kernel.
* `"int8"`: `onnxruntime.quantization.quantize_dynamic`: the weights of every MatMul become int8
  (per output channel) and activations are quantized on the fly, for the CPU. The fused
  com.microsoft Attention keeps its float Q/K/V projection: quantized it becomes QAttention,
  which OpenVINO does not run, and the whole model measured no faster with it (1.40x against
  1.45x for MatMuls only, below). A `Transpose` of a weight (the
  tied vocabulary projection of the native graph) is folded into a transposed weight first, so
  that the vocabulary MatMul, about 40% of the work, is quantized too. On an AVX2 CPU without
  VNNI the speed-up is bounded by that of the matmuls: 1.5-2.1x for the vocabulary MatMul
  alone, 1.4-1.5x for the whole 4-layer model at 16 x 128 (`bench/onnx_inference.py`); per-tensor
  weights, full-range weights and MatMul-only quantization measured no faster.

Example:
>>> fp16_proto = convert(proto, "fp16")  # doctest: +SKIP
"""

import os
import tempfile

import numpy as np
from onnx import numpy_helper

PRECISIONS = ("fp16", "int8", "int4")

# Op types kept in float32 by the fp16 conversion (besides onnxruntime's default list).
FP16_OP_BLOCK_LIST = ["Softmax", "Sin", "Cos", "Range"]
# Node-name suffixes kept in float32: the sinusoid positions and angles of the native graph.
FP16_NODE_SUFFIXES = ("/positions_float", "/positions_column", "/angles")


def convert(model_proto, precision, block_size=32, accuracy_level=4):
    """Return a copy of `model_proto` in `precision` (`"fp16"`, `"int8"` or `"int4"`).

    Args:
        model_proto: a float32 `onnx.ModelProto`.
        precision: `"fp16"`, `"int8"` or `"int4"` (None / `"fp32"` return the model unchanged).
        block_size, accuracy_level: int4 only (see `to_int4`).

    Returns:
        A new `onnx.ModelProto`; inputs and outputs keep their names and float32 types.
    """
    if precision in (None, "fp32"):
        return model_proto
    if precision == "fp16":
        return to_float16(model_proto)
    if precision == "int8":
        return to_int8(model_proto)
    if precision == "int4":
        return to_int4(model_proto, block_size, accuracy_level)
    raise ValueError(f"`precision` must be one of {[None, 'fp32', *PRECISIONS]}; received precision={precision!r}.")


def to_float16(model_proto):
    """float16 weights and compute with float32 inputs/outputs (see the module docstring)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    kept = [node.name for node in model_proto.graph.node if node.name.endswith(FP16_NODE_SUFFIXES)]
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = convert_float_to_float16(
        _copy(model_proto), keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_OP_BLOCK_LIST,
        node_block_list=kept,
    )
    _remove_float16_round_trips(converted)
    OnnxModel(converted).topological_sort()  # the converter appends its Cast nodes at the end
    _copy_metadata(model_proto, converted, "fp16")
    return converted


def _cast_to(node):
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _remove_float16_round_trips(model_proto):
    """Drop the float32 -> float16 -> float32 Cast pairs the converter puts between two nodes that
    are both kept in float32 (they would round the positional-encoding angles to float16)."""
    from onnx import TensorProto

    graph = model_proto.graph
    producers = {output: node for node in graph.node for output in node.output}
    rename = {}
    for node in graph.node:
        source = producers.get(node.input[0]) if node.op_type == "Cast" else None
        if (source is not None and source.op_type == "Cast" and _cast_to(node) == TensorProto.FLOAT
                and _cast_to(source) == TensorProto.FLOAT16):
            rename[node.output[0]] = source.input[0]
    nodes, seen = [], set()
    for node in graph.node:
        if node.output[0] in rename or node.output[0] in seen:
            continue  # a dropped round trip, or a duplicate the converter emitted twice
        seen.update(node.output)
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        nodes.append(node)
    while True:  # the float16 halves of the round trips are now unused
        used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
        alive = [n for n in nodes if n.op_type != "Cast" or any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del graph.node[:]
    graph.node.extend(nodes)


def to_int8(model_proto):
    """Dynamic int8 quantization of the MatMuls with constant weights (see the module docstring)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folded = fold_weight_transposes(_copy(model_proto))
    root_logger = logging.getLogger()
    was_disabled = root_logger.disabled
    root_logger.disabled = True  # quantize_dynamic warns "consider pre-processing" on the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="kt-int8-") as folder:
            output = os.path.join(folder, "model.int8.onnx")
            quantize_dynamic(
                # MatMuls only: com.microsoft.QAttention (the fused Attention quantized) runs in
                # onnxruntime alone (OpenVINO lacks it) and measured no faster (module docstring).
                folded, output, op_types_to_quantize=["MatMul"], per_channel=True,
                # 7-bit weights: the u8 x s8 kernels of CPUs without VNNI saturate their 16-bit
                # intermediate sums with full-range weights (max |diff| 10x larger, measured).
                reduce_range=True, weight_type=QuantType.QInt8,
                # The fused attention is a com.microsoft op that onnx shape inference cannot type.
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            quantized = onnx.load(output)
    finally:
        root_logger.disabled = was_disabled
    _copy_metadata(model_proto, quantized, "int8")
    return quantized


def to_int4(model_proto, block_size=32, accuracy_level=4):
    """Blockwise 4-bit weights: every MatMul by a constant weight (the tied vocabulary projection
    included, after `fold_weight_transposes`) becomes `com.microsoft.MatMulNBits`, and the token
    embedding lookup `com.microsoft.GatherBlockQuantized`, with onnxruntime's own quantizer
    (asymmetric, one float scale and 4-bit zero point per `block_size` weights along the input
    axis). Activations stay float32; `accuracy_level=4` lets onnxruntime's CPU kernel quantize
    them to int8 blocks on the fly (its fastest path), 0 keeps them float32.

    Args:
        model_proto: a float32 `onnx.ModelProto`.
        block_size: weights per quantization block, a power of two >= 16.
        accuracy_level: 0 (float32 compute), 1 (float32), 2 (float16), 3 (bfloat16) or 4 (int8).
    """
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"`block_size` must be a power of two >= 16; received block_size={block_size!r}.")
    if isinstance(accuracy_level, bool) or accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"`accuracy_level` must be 0, 1, 2, 3 or 4; received accuracy_level={accuracy_level!r}.")
    folded = fold_weight_transposes(_copy(model_proto))
    # Only the token embeddings are looked up by a quantized Gather: the position table and the
    # graph's shape Gathers stay as they are.
    excluded = [node.name for node in folded.graph.node
                if node.op_type == "Gather" and not node.name.endswith("token_embedding_Gather")]
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.WARNING)  # it logs every node it quantizes at INFO
    try:
        quantizer = MatMulNBitsQuantizer(folded, bits=4, block_size=block_size, is_symmetric=False,
                                         accuracy_level=accuracy_level, nodes_to_exclude=excluded,
                                         op_types_to_quantize=("MatMul", "Gather"))
        quantizer.process()
    finally:
        logger.setLevel(level)
    quantized = quantizer.model.model
    _reduce_axes_as_inputs(quantized)
    _copy_metadata(model_proto, quantized, "int4")
    quantized.ir_version = max(quantized.ir_version, model_proto.ir_version)
    return quantized


def _reduce_axes_as_inputs(model_proto):
    """Move the `axes` attribute of Reduce* nodes to an input (in place) once the model's opset
    is 18 or more: the int4 quantizer raises the opset to 21 (int4 tensors) without rewriting the
    nodes whose signature changed at 18 (e.g. the RMS norm's ReduceMean of an opset-17 graph)."""
    if next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")) < 18:
        return
    for node in model_proto.graph.node:
        axes = [a for a in node.attribute if a.name == "axes"]
        if node.domain in ("", "ai.onnx") and node.op_type.startswith("Reduce") and axes:
            name = f"{node.name or node.output[0]}/axes"
            model_proto.graph.initializer.append(numpy_helper.from_array(np.asarray(axes[0].ints, "int64"), name))
            node.attribute.remove(axes[0])
            inputs = list(node.input) + [name]
            del node.input[:]
            node.input.extend(inputs)


def fold_weight_transposes(model_proto):
    """Replace each `Transpose` of an initializer by a transposed initializer (in place).

    The original initializer is kept when other nodes still read it (e.g. the embedding Gather).
    """
    graph = model_proto.graph
    initializers = {t.name: t for t in graph.initializer}
    kept_nodes = []
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in initializers:
            array = numpy_helper.to_array(initializers[node.input[0]])
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            transposed = np.ascontiguousarray(np.transpose(array, perm))
            graph.initializer.append(numpy_helper.from_array(transposed, node.output[0]))
            continue
        kept_nodes.append(node)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return model_proto


def _copy(model_proto):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model_proto)
    return copy


def _copy_metadata(source, target, precision):
    present = {p.key for p in target.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in present:
            target.metadata_props.add(key=prop.key, value=prop.value)
    if "keras_transformer.precision" not in present:
        target.metadata_props.add(key="keras_transformer.precision", value=precision)
