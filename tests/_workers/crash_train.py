"""Trains a tiny model with keras_transformer.callbacks.BackupAndRestore; can stop itself to be killed.

Run by tests/test_crash_safety.py:

    crash_train.py BACKUP_DIR OUT_NPZ [--hang-at-batch EPOCH BATCH] [--hang-in-backup EPOCH]

`--hang-at-batch` prints HANG_AT_BATCH after batch BATCH of epoch EPOCH and sleeps, so the test
can SIGKILL it mid-epoch. `--hang-in-backup` prints HANG_IN_BACKUP while the backup written at the
end of epoch EPOCH is complete on disk but not yet renamed into place, and sleeps. A run that
finishes writes OUT_NPZ: `epochs_run` (the epochs this process started), `iterations` (optimizer
steps in total, restored ones included) and the final weights `w0, w1, ...`.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import _tiny_models  # noqa: E402
from keras_transformer import callbacks, saving  # noqa: E402

EPOCHS, BATCH = 4, 4
MODEL = "decoder_only"


def build():
    """The model and data, identical in every process (seeded); Adam so that optimizer state
    has to be restored too."""
    keras.utils.set_random_seed(7)
    model = _tiny_models.BUILDERS[MODEL]()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    inputs, labels = _tiny_models.arrays(MODEL)
    return model, inputs, labels


def fit(model, inputs, labels, extra_callbacks=()):
    return model.fit(
        inputs, labels, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
        callbacks=list(extra_callbacks),
    )


class _Hang(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.target, self.epoch = (epoch, batch), None
        self.epochs_run = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epochs_run.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.target:
            print("HANG_AT_BATCH", flush=True)
            time.sleep(600)


def _hang_in_backup(epoch):
    """Sleep inside `atomic_directory`, after the files are written, before the rename."""
    original, calls = saving.fsync_path, []

    def hanging(path):
        calls.append(path)
        if len(calls) == epoch + 1:  # one backup per completed epoch
            print("HANG_IN_BACKUP", flush=True)
            time.sleep(600)
        return original(path)

    saving.fsync_path = hanging


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("backup_dir")
    parser.add_argument("out")
    parser.add_argument("--hang-at-batch", nargs=2, type=int, default=(-1, -1))
    parser.add_argument("--hang-in-backup", type=int, default=None)
    args = parser.parse_args()
    if args.hang_in_backup is not None:
        _hang_in_backup(args.hang_in_backup)
    model, inputs, labels = build()
    tracker = _Hang(*args.hang_at_batch)
    fit(model, inputs, labels, [callbacks.BackupAndRestore(args.backup_dir), tracker])
    weights = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    np.savez(
        args.out, epochs_run=np.array(tracker.epochs_run),
        iterations=int(model.optimizer.iterations.numpy()), **weights,
    )
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
