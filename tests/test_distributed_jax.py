"""Every model trains under `keras.distribution` on JAX with no change to model code, giving the
same per-step losses and final weights as one device on the same global batches:

- `DataParallel` over two virtual CPU devices (weights replicated, batches split);
- `ModelParallel` with our `get_layout_map` over a (1, 2) mesh (weights split over the model axis).

One subprocess (tests/_workers/jax_distribution.py), because the virtual devices must be set up
before JAX initialises. Runs wherever JAX is installed, whatever the suite's backend.
"""

import numpy as np
import pytest

from _workers import launch

pytest.importorskip("jax")

MODELS = ["layers_model", "decoder_only", "encoder_only", "encoder_decoder"]
# Sharded reductions sum in another order than one device: float32 round-off only.
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax_distribution")
    launch.run("jax_distribution.py", out, ",".join(MODELS), KERAS_BACKEND="jax")

    def load(name, tag):
        with np.load(out / f"{name}.{tag}.npz") as data:
            weights = [data[f"w{i}"] for i in range(sum(k.startswith("w") for k in data.files))]
            return data["losses"], weights, int(data["sharded"]) if "sharded" in data.files else 0

    return load


@pytest.mark.parametrize("tag", ["data", "model"])
@pytest.mark.parametrize("name", MODELS)
def test_distribution_matches_one_device(runs, name, tag):
    losses, weights, _ = runs(name, "single")
    _, initial, _ = runs(name, "initial")
    # Training moved every weight matrix (attention kernels are 3-D; (heads, head_dim) biases are
    # left out: the key bias gets no gradient), so equal final weights are not a trivial outcome.
    moved = [not np.allclose(a, b) for a, b in zip(weights, initial)
             if a.ndim == 3 or (a.ndim == 2 and min(a.shape) >= 16)]
    assert moved and all(moved)
    other_losses, other_weights, _ = runs(name, tag)
    assert len(losses) == len(other_losses) == 4
    np.testing.assert_allclose(other_losses, losses, err_msg=f"{name} {tag}: losses", **TOLERANCE)
    assert len(other_weights) == len(weights)
    for index, (got, want) in enumerate(zip(other_weights, weights)):
        np.testing.assert_allclose(got, want, err_msg=f"{name} {tag}: weight {index}", **TOLERANCE)


@pytest.mark.parametrize("name", MODELS)
def test_layout_map_splits_attention_and_feed_forward_weights(runs, name):
    # Per block: Q, K, V kernels and biases, the output kernel, the FFN inner kernel and bias,
    # the FFN output kernel (8), plus the token embedding; more for cross-attention.
    assert runs(name, "model")[2] >= 9


def test_get_layout_map_rejects_a_mesh_without_the_axis():
    import keras

    if keras.backend.backend() == "torch":
        pytest.skip("keras.distribution has no PyTorch implementation (list_devices, DeviceMesh)")
    from keras_transformer.distribution import get_layout_map

    mesh = keras.distribution.DeviceMesh((1,), ("batch",), keras.distribution.list_devices()[:1])
    with pytest.raises(ValueError, match="model_parallel_dim_name.*'model'"):
        get_layout_map(mesh)
    with pytest.raises(ValueError, match="device_mesh"):
        get_layout_map("mesh")
