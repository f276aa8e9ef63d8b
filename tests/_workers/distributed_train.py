"""Trains tiny models single-device and under tf.distribute, writing losses and final weights.

Run by tests/test_distributed.py in a subprocess, because logical devices and the cluster must be
configured before TensorFlow initialises.

    distributed_train.py local OUT_DIR MODEL[,MODEL...]
        Splits the CPU into 2 logical devices; for each model, trains on the default strategy
        (one device) and under MirroredStrategy over both devices, from the same initial
        weights (saved as OUT_DIR/<model>.initial.weights.h5). Writes <model>.initial.npz,
        <model>.single.npz and <model>.mirrored.npz.
    distributed_train.py multiworker OUT_DIR MODEL[,MODEL...]
        One worker of a MultiWorkerMirroredStrategy cluster described by TF_CONFIG; loads the
        initial weights written by `local`, trains with examples/distributed_training.py
        `fit_multi_worker` and writes <model>.worker<index>.npz.

With USE_MODEL_FIT=1 in the environment, multiworker mode calls `model.fit` instead (which
Keras 3.15 does not support under this strategy: keras-team/keras#20585).

Each .npz holds `losses` (running loss after every batch) and the final weights `w0, w1, ...`.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import _tiny_models  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
from distributed_training import fit_multi_worker  # noqa: E402

EPOCHS = 2


def train(name, out_dir, tag, strategy, initial_weights=None):
    with strategy.scope():
        model = _tiny_models.build(name)
        if initial_weights is not None:
            model.load_weights(initial_weights)
    if tag == "single":
        model.save_weights(os.path.join(out_dir, f"{name}.initial.weights.h5"))
        initial_arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
        np.savez(os.path.join(out_dir, f"{name}.initial.npz"), losses=np.zeros(0), **initial_arrays)
    recorder = _tiny_models.loss_recorder()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and not os.environ.get("USE_MODEL_FIT"):
        # model.fit under this strategy fails inside Keras 3.15 (keras-team/keras#20585): use
        # the example's strategy.run loop, which runs the same compiled loss and optimizer.
        fit_multi_worker(model, _tiny_models.dataset(name), EPOCHS, strategy, callbacks=[recorder])
    else:
        model.fit(_tiny_models.dataset(name), epochs=EPOCHS, callbacks=[recorder], verbose=0)
    weights = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    np.savez(os.path.join(out_dir, f"{name}.{tag}.npz"), losses=np.array(recorder.losses), **weights)
    print(f"{tag} {name} done", flush=True)


def main(mode, out_dir, names):
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    if mode == "local":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
        for name in names:
            train(name, out_dir, "single", tf.distribute.get_strategy())
            initial = os.path.join(out_dir, f"{name}.initial.weights.h5")
            train(name, out_dir, "mirrored", mirrored, initial_weights=initial)
    elif mode == "multiworker":
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
        for name in names:
            initial = os.path.join(out_dir, f"{name}.initial.weights.h5")
            train(name, out_dir, f"worker{index}", strategy, initial_weights=initial)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
