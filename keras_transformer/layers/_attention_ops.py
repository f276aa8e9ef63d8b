"""Parts of `MultiHeadAttention`: its EinsumDense sublayers, the projections as matrix products
on their kernels, the choice of `keras.ops.dot_product_attention`, and the symbolic output spec.

`MultiHeadAttention._project` and `_output_projection` call these; they stay methods of the layer
(the native ONNX emitter treats a subclass overriding them as computing something else).
"""

import math

import keras
from keras import ops


def projection_initializer(fan_in, fan_out):
    """Glorot-uniform over the 2-D view `(fan_in, fan_out)` of a multi-head kernel (Keras's own
    glorot would count the head axes as a receptive field and shrink the weights)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit)


def input_einsum_dense(name, fan_in, heads, head_dim, use_bias, dtype_policy):
    """The built query/key/value EinsumDense: kernel `(fan_in, heads, head_dim)`."""
    layer = keras.layers.EinsumDense(
        "abc,cde->abde", output_shape=(None, heads, head_dim), bias_axes="de" if use_bias else None,
        kernel_initializer=projection_initializer(fan_in, heads * head_dim), dtype=dtype_policy, name=name,
    )
    layer.build((None, None, fan_in))
    return layer


def output_einsum_dense(heads, head_dim, d_model, use_bias, dtype_policy):
    """The built `attention_output` EinsumDense: kernel `(heads, head_dim, d_model)`."""
    layer = keras.layers.EinsumDense(
        "abcd,cde->abe", output_shape=(None, d_model), bias_axes="e" if use_bias else None,
        kernel_initializer=projection_initializer(heads * head_dim, d_model), dtype=dtype_policy,
        name="attention_output",
    )
    layer.build((None, None, heads, head_dim))
    return layer


def project(x, layers, head_dim, use_bias):
    """Project `(batch, length, d)` `x` with each EinsumDense in `layers`, as
    `(batch, heads, length, head_dim)` each.

    Float projections share one matrix product on concatenated kernels (LoRA included:
    `kernel` is the merged kernel); quantized ones run their own quantized call.
    """
    if any(layer.quantization_mode for layer in layers):
        # A copy carries no Keras mask (the projection sublayers do not take masks).
        return [ops.transpose(layer(ops.copy(x)), (0, 2, 1, 3)) for layer in layers]
    kernels = [ops.reshape(layer.kernel, (layer.kernel.shape[0], -1)) for layer in layers]
    kernel = kernels[0] if len(kernels) == 1 else ops.concatenate(kernels, axis=-1)
    y = ops.matmul(x, ops.cast(kernel, x.dtype))
    if use_bias:
        biases = [ops.reshape(layer.bias, (-1,)) for layer in layers]
        bias = biases[0] if len(biases) == 1 else ops.concatenate(biases, axis=-1)
        y = y + ops.cast(bias, x.dtype)
    # Split on the feature axis (its gradient is one concat; indexing a 5-D transpose made
    # zero-filled gradients per part), then (batch, length, h, d_k) -> (batch, h, length, d_k).
    widths = [k.shape[1] for k in kernels]
    cuts = [sum(widths[: i + 1]) for i in range(len(widths) - 1)]
    parts = ops.split(y, cuts, axis=-1) if cuts else [y]
    length = ops.shape(x)[1]
    return [
        ops.transpose(ops.reshape(part, (-1, length, width // head_dim, head_dim)), (0, 2, 1, 3))
        for part, width in zip(parts, widths)
    ]


def output_projection(layer, attended, use_bias):
    """`(batch, h, T, d_k)` -> `(batch, T, d_model)` through the EinsumDense `layer`
    (kernel `(h, d_k, d_model)`)."""
    attended = ops.transpose(attended, (0, 2, 1, 3))
    if layer.quantization_mode:
        return layer(ops.copy(attended))
    length = ops.shape(attended)[1]
    inner = layer.kernel.shape[0] * layer.kernel.shape[1]
    output = ops.matmul(
        ops.reshape(attended, (-1, length, inner)),
        ops.cast(ops.reshape(layer.kernel, (inner, -1)), attended.dtype),
    )
    if use_bias:
        output = output + ops.cast(layer.bias, output.dtype)
    return output


def use_dot_product_attention(dropout, attention_bias, training, return_attention_scores):
    """`keras.ops.dot_product_attention` (fused/flash kernels) where it computes the same:
    on JAX and PyTorch, without scores, additive bias or active dropout. On TensorFlow it
    lowers to the same matmuls as the explicit path, which also keeps float32 softmax."""
    if keras.backend.backend() not in ("jax", "torch"):
        return False
    dropout_active = dropout > 0 and bool(training)
    return not (return_attention_scores or attention_bias is not None or dropout_active)


def output_spec(query_shape, dtype, scores_shape=None, cache=None):
    """The KerasTensors `call` returns: output, then scores (`scores_shape`), then the cache."""
    outputs = (keras.KerasTensor(query_shape, dtype=dtype),)
    if scores_shape is not None:
        outputs += (keras.KerasTensor(scores_shape, dtype=dtype),)
    if cache is not None:
        outputs += (keras.KerasTensor(cache.shape, dtype=cache.dtype),)
    return outputs[0] if len(outputs) == 1 else outputs
