"""Sharding our models with `keras.distribution` (JAX): the `LayoutMap` for `ModelParallel`.

Data parallelism needs nothing from us: `keras.distribution.DataParallel()` replicates every
weight and splits each batch. Model parallelism needs a layout per weight; `get_layout_map`
gives the Megatron-style one (Shoeybi et al. 2019) that keras-hub's Llama/Gemma backbones use:
attention heads and the feed-forward inner width are split over the model axis, so each block
needs one all-reduce after attention and one after the feed-forward network. LayerNorms, biases
of the output projections and learned positions stay replicated (small).

Example (two devices, model-parallel):
>>> mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), keras.distribution.list_devices())
>>> layout_map = DecoderOnlyTransformer.get_layout_map(mesh)  # doctest: +SKIP
>>> keras.distribution.set_distribution(
...     keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"))  # doctest: +SKIP
>>> model = DecoderOnlyTransformer(...)  # weights are created sharded  # doctest: +SKIP
"""

import keras

__all__ = ["get_layout_map"]

# Weight path patterns (regexes over `variable.path`) -> which axis is split; the other axes
# are replicated. Attention kernels are per head: Q/K/V `(d_model, heads, head_dim)`, the output
# projection `(heads, head_dim, d_model)`, so the heads axis is the one split.
_MODEL_AXIS = "model"
_LAYOUTS = {
    # (vocab, d_model): each device holds a slice of every embedding (and of the tied logits).
    r".*token_embedding/embeddings": (None, _MODEL_AXIS),
    # Q, K, V: split the heads axis; their (heads, head_dim) biases follow.
    r".*attention/(query|key|value)/kernel": (None, _MODEL_AXIS, None),
    r".*attention/(query|key|value)/bias": (_MODEL_AXIS, None),
    # Output projection: split its input (heads) axis; the partial sums are all-reduced.
    r".*attention/attention_output/kernel": (_MODEL_AXIS, None, None),
    # Feed-forward: inner (and gate) kernels split by columns, output kernel by rows.
    r".*feed_forward/(intermediate_dense|gate_dense)/kernel": (None, _MODEL_AXIS),
    r".*feed_forward/(intermediate_dense|gate_dense)/bias": (_MODEL_AXIS,),
    r".*feed_forward/output_dense/kernel": (_MODEL_AXIS, None),
    # Untied language-model head (d_model, vocab): split the vocabulary.
    r".*lm_head/kernel": (None, _MODEL_AXIS),
}


def get_layout_map(device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"):
    """A `keras.distribution.LayoutMap` for every weight of our models and blocks.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with a model axis (and usually a batch axis).
        model_parallel_dim_name: the mesh axis the weights are split over.
        data_parallel_dim_name: the mesh axis batches are split over (pass it to `ModelParallel`
            as `batch_dim_name`); it must also be a mesh axis.

    Returns:
        The `LayoutMap`; weights it does not name are replicated.

    Raises:
        ValueError: `device_mesh` is not a `DeviceMesh`, or a dimension name is not one of its axes.
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise ValueError(
            "`device_mesh` must be a keras.distribution.DeviceMesh; received "
            f"device_mesh={device_mesh!r} of type {type(device_mesh).__name__}."
        )
    for argument, name in (("model_parallel_dim_name", model_parallel_dim_name),
                           ("data_parallel_dim_name", data_parallel_dim_name)):
        if name not in device_mesh.axis_names:
            raise ValueError(
                f"`{argument}` must be an axis of the device mesh {list(device_mesh.axis_names)}; "
                f"received {argument}={name!r}."
            )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in _LAYOUTS.items():
        layout_map[pattern] = tuple(model_parallel_dim_name if axis == _MODEL_AXIS else axis for axis in axes)
    return layout_map
