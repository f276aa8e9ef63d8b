"""Training callbacks: a crash-safe `BackupAndRestore`."""

from keras_transformer import backend as _backend

_backend.check_installed()  # before Keras: a missing backend gets the install command

import json
import os
import re
import shutil

import keras

from keras_transformer.saving import atomic_directory

__all__ = ["BackupAndRestore"]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS, _METADATA = "model.weights.h5", "training_metadata.json"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backups survive being killed mid-write.

    Keras writes the weights file and then the epoch counter in place, so a process killed during
    a backup (SIGKILL, OOM killer, preemption) can leave a truncated weights file, or new weights
    with an old epoch counter. Here each backup (weights, optimizer state and epoch together) is
    written into a temporary directory, fsynced and renamed to `checkpoint-<n>` in one step; the
    previous backup is deleted only afterwards. On restart, training resumes from the newest
    complete backup: the last completed epoch (or `save_freq` batch), so `model.fit(epochs=N)`
    still runs N epochs in total.

    Args:
        backup_dir: directory for the backups, used by this training run only.
        save_freq: `"epoch"` or an integer number of batches, as in Keras.
        delete_checkpoint: delete `backup_dir` when training finishes.

    Example:
    >>> backup = BackupAndRestore("/tmp/run-1/backup")  # doctest: +SKIP
    >>> model.fit(data, epochs=10, callbacks=[backup])  # after a crash, rerun the same line
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)

    def _checkpoints(self):
        """Complete backups, newest first; leftover temporary directories are removed."""
        if not os.path.isdir(self.backup_dir):
            return []
        found = []
        for name in os.listdir(self.backup_dir):
            path = os.path.join(self.backup_dir, name)
            match = _CHECKPOINT.match(name)
            if match:
                found.append((int(match.group(1)), path))
            elif name.startswith(".checkpoint-") and ".tmp-" in name:
                shutil.rmtree(path, ignore_errors=True)  # a backup interrupted mid-write
        return [path for _, path in sorted(found, reverse=True)]

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(
                "BackupAndRestore needs a built model: call the model on a batch (or build it) "
                "before `fit()`."
            )
        for path in self._checkpoints():
            with open(os.path.join(path, _METADATA)) as handle:
                metadata = json.load(handle)
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(os.path.join(path, _WEIGHTS))
            self.model._initial_epoch = metadata["epoch"]  # how Keras's own callback resumes
            self._current_epoch = metadata["epoch"]
            return

    def _save_model(self):
        checkpoints = self._checkpoints()
        number = 1 + (int(_CHECKPOINT.match(os.path.basename(checkpoints[0])).group(1)) if checkpoints else 0)
        target = os.path.join(self.backup_dir, f"checkpoint-{number}")
        with atomic_directory(target) as staging:
            self.model.save_weights(os.path.join(staging, _WEIGHTS))
            with open(os.path.join(staging, _METADATA), "w") as handle:
                json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, handle)
        for old in checkpoints:  # only now that the new backup is complete
            shutil.rmtree(old, ignore_errors=True)
