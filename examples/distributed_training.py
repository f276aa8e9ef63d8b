"""Data-parallel training of a keras_transformer model on several devices or machines.

Three set-ups, none of which changes the model code:

1. One machine, several GPUs (TensorFlow backend): build and compile the model inside
   `tf.distribute.MirroredStrategy().scope()`, then call `model.fit` as usual. The dataset's
   batch size is the *global* batch; each replica gets `batch / num_replicas` examples and the
   gradients are summed, so the result equals one device on the same global batch.
2. Several machines (TensorFlow backend): `tf.distribute.MultiWorkerMirroredStrategy`, each worker
   started with the same script and its own `TF_CONFIG`. With Keras 3.15, `model.fit` under
   this strategy fails inside Keras (keras-team/keras#20585), so `fit_multi_worker` below runs
   the same train step (the model's compiled loss and optimizer) with `strategy.run`.
3. JAX backend: Keras 3's `keras.distribution.DataParallel` (see `jax_data_parallel`).

Try it on one CPU machine (two logical devices, then two local workers):

    python examples/distributed_training.py --strategy mirrored
    # two shells (or background jobs), ports of your choice:
    python examples/distributed_training.py --strategy multi_worker --worker 0 --ports 23456,23457
    python examples/distributed_training.py --strategy multi_worker --worker 1 --ports 23456,23457
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fit_multi_worker(model, dataset, epochs, strategy, callbacks=()):
    """Train `model` under `strategy` (e.g. MultiWorkerMirroredStrategy) with `strategy.run`.

    The step is Keras's own: forward pass in training mode, `model.compute_loss` (the compiled
    loss, already divided by the number of replicas), gradients summed across replicas by the
    optimizer, `model.optimizer.apply_gradients`. The model and its optimizer must have been
    created and compiled inside `strategy.scope()`.

    Args:
        model: a compiled `keras.Model`.
        dataset: a `tf.data.Dataset` of `(inputs, labels)` batches of the *global* batch size;
            every worker passes the same dataset and `tf.distribute` shards it.
        epochs: number of passes over `dataset`.
        strategy: the `tf.distribute.Strategy` whose scope built the model.
        callbacks: Keras callbacks; `on_train_batch_end`/`on_epoch_end` receive `{"loss": ...}`,
            the running mean of the epoch's loss, as with `model.fit`.

    Returns:
        The list of per-epoch mean losses (the same on every worker).
    """
    import tensorflow as tf

    distributed = strategy.experimental_distribute_dataset(dataset)

    def replica_step(inputs, labels):
        with tf.GradientTape() as tape:
            predictions = model(inputs, training=True)
            loss = model.compute_loss(x=inputs, y=labels, y_pred=predictions, training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def train_step(batch):
        per_replica_loss = strategy.run(replica_step, args=batch)
        # Each replica's loss is its share of the global mean: the sum is the global loss.
        return strategy.reduce("SUM", per_replica_loss, axis=None)

    history = []
    for epoch in range(epochs):
        total, steps = 0.0, 0
        for batch in distributed:
            total += float(train_step(batch))
            steps += 1
            for callback in callbacks:
                callback.on_train_batch_end(steps - 1, {"loss": total / steps})
        history.append(total / max(steps, 1))
        for callback in callbacks:
            callback.on_epoch_end(epoch, {"loss": history[-1]})
    return history


def jax_data_parallel(build_and_compile, dataset, epochs):
    """JAX backend (`KERAS_BACKEND=jax`): shard every batch over all local accelerators.

    `keras.distribution.DataParallel` replicates the weights and splits the batch axis; for
    several hosts, call `keras.distribution.initialize()` first on every host.
    """
    import keras

    keras.distribution.set_distribution(keras.distribution.DataParallel())
    model = build_and_compile()
    return model.fit(dataset, epochs=epochs, verbose=2)


def _demo_model():
    import keras

    from keras_transformer.models import DecoderOnlyTransformer

    model = DecoderOnlyTransformer(
        vocab_size=64, num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0, max_length=16
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _demo_dataset(global_batch=16, examples=256, length=16):
    """A toy language-modelling task: each sequence counts upwards modulo 64."""
    import numpy as np
    import tensorflow as tf

    starts = np.random.default_rng(0).integers(1, 64, size=(examples, 1))
    tokens = ((starts + np.arange(length + 1)) % 63 + 1).astype("int32")
    inputs = {"token_ids": tokens[:, :-1]}
    return tf.data.Dataset.from_tensor_slices((inputs, tokens[:, 1:])).batch(global_batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", choices=["mirrored", "multi_worker"], default="mirrored")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--worker", type=int, default=0, help="this worker's index (multi_worker)")
    parser.add_argument("--ports", default="23456,23457", help="loopback ports of all workers")
    args = parser.parse_args(argv)
    from keras_transformer.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # before Keras: TensorFlow without its known start-up noise

    if args.strategy == "multi_worker":
        cluster = {"worker": [f"127.0.0.1:{port}" for port in args.ports.split(",")]}
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": args.worker}}
        )
    import tensorflow as tf

    if args.strategy == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:  # no GPU: split the CPU in two so that there is something to mirror over
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        devices = None if gpus else ["/cpu:0", "/cpu:1"]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    print(f"{type(strategy).__name__}: {strategy.num_replicas_in_sync} replicas in sync")

    with strategy.scope():
        model = _demo_model()
    if args.strategy == "mirrored":
        history = model.fit(_demo_dataset(), epochs=args.epochs, verbose=2).history["loss"]
    else:
        history = fit_multi_worker(model, _demo_dataset(), args.epochs, strategy)
    print("loss per epoch:", [round(loss, 4) for loss in history])


if __name__ == "__main__":
    main()
