"""Trains tiny models on JAX on one device, under `DataParallel` and under `ModelParallel`.

Run by tests/test_distributed_jax.py in a subprocess: the two virtual CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`) must be set before JAX initialises.

    jax_distribution.py OUT_DIR MODEL[,MODEL...]

For each model, the three runs start from the same weights and see the same global batches
(`_tiny_models.arrays`, no shuffling, SGD). Writes <model>.<single|data|model>.npz with `losses`
(the loss of every step, from `train_on_batch`), the final weights `w0, w1, ...` and, for the
model-parallel run, `sharded`: how many weights the layout map actually split over 2 devices.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import _tiny_models  # noqa: E402

STEPS_PER_EPOCH = _tiny_models.EXAMPLES // _tiny_models.GLOBAL_BATCH
EPOCHS = 2


def train(name, distribution, initial):
    keras.distribution.set_distribution(distribution)
    try:
        model = _tiny_models.build(name)
        if initial is not None:
            model.set_weights(initial)
        inputs, labels = _tiny_models.arrays(name)
        losses = []
        for _ in range(EPOCHS):
            for step in range(STEPS_PER_EPOCH):
                rows = slice(step * _tiny_models.GLOBAL_BATCH, (step + 1) * _tiny_models.GLOBAL_BATCH)
                batch = {key: value[rows] for key, value in inputs.items()}
                losses.append(float(model.train_on_batch(batch, labels[rows])))
        sharded = sum(
            1 for w in model.weights if len(w.value.sharding.device_set) == 2
            and not w.value.sharding.is_fully_replicated
        )
        return model, np.array(losses), sharded
    finally:
        keras.distribution.set_distribution(None)


def main(out_dir, names):
    devices = keras.distribution.list_devices()
    assert len(devices) == 2, devices
    for name in names:
        initial = _tiny_models.build(name).get_weights()
        runs = {"single": train(name, None, initial)}
        runs["data"] = train(name, keras.distribution.DataParallel(devices=devices), initial)
        mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), devices)
        model_class = type(runs["single"][0])
        if hasattr(model_class, "get_layout_map"):
            layout_map = model_class.get_layout_map(mesh)
        else:  # the functional model of layers: the same function serves any of our blocks
            from keras_transformer.distribution import get_layout_map

            layout_map = get_layout_map(mesh)
        runs["model"] = train(name, keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"),
                              initial)
        np.savez(os.path.join(out_dir, f"{name}.initial.npz"), losses=np.zeros(0),
                 **{f"w{i}": w for i, w in enumerate(initial)})
        for tag, (model, run_losses, sharded) in runs.items():
            weights = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
            np.savez(os.path.join(out_dir, f"{name}.{tag}.npz"), losses=run_losses, sharded=sharded, **weights)
        print(f"{name} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
