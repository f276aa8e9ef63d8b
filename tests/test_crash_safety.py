"""Crash safety: training, exports and saves survive being killed or failing mid-way.

- Training killed with SIGKILL (tests/_workers/crash_train.py, a real subprocess, no clean-up
  runs) and started again with the same command resumes from its last complete backup
  (`keras_transformer.callbacks.BackupAndRestore`), at the epoch after the last completed one,
  runs the same number of epochs in total and ends with the same weights as a run never killed;
  also when killed while a backup is being written.
- An export killed during validation (tests/_workers/export_hang.py) leaves nothing at the
  target path, and the next export cleans the staging area the killed one left.
- A `save_model` that fails leaves the previous file intact and no temporary file.
"""

import json
import os
import sys

import keras
import numpy as np
import pytest

from _workers import launch

sys.path.insert(0, str(launch.WORKERS))
import crash_train  # noqa: E402

pytestmark = pytest.mark.tensorflow  # the workers train and export with the TensorFlow backend

TOLERANCE = dict(rtol=1e-4, atol=1e-5)
STEPS_PER_EPOCH = 16 // crash_train.BATCH


@pytest.fixture(scope="module")
def uninterrupted_weights():
    """The final weights of the same training, never interrupted (run in this process)."""
    model, inputs, labels = crash_train.build()
    history = crash_train.fit(model, inputs, labels)
    assert len(history.history["loss"]) == crash_train.EPOCHS
    return model.get_weights()


def _checkpoints(backup_dir):
    return sorted(name for name in os.listdir(backup_dir) if name.startswith("checkpoint-"))


def _resume_and_check(backup_dir, out, expected_first_epoch, reference):
    launch.run("crash_train.py", backup_dir, out)
    with np.load(out) as result:
        epochs_run = list(result["epochs_run"])
        iterations = int(result["iterations"])
        weights = [result[f"w{i}"] for i in range(len(reference))]
    assert epochs_run == list(range(expected_first_epoch, crash_train.EPOCHS))
    # Same number of optimizer steps as an uninterrupted run: restored ones + this run's.
    assert iterations == crash_train.EPOCHS * STEPS_PER_EPOCH
    for index, (got, want) in enumerate(zip(weights, reference)):
        np.testing.assert_allclose(got, want, err_msg=f"weight {index}", **TOLERANCE)
    assert not os.path.exists(backup_dir)  # a finished run deletes its backups


def test_sigkill_mid_epoch_resumes_from_last_completed_epoch(tmp_path, uninterrupted_weights):
    backup_dir, out = tmp_path / "backup", tmp_path / "result.npz"
    process = launch.start("crash_train.py", backup_dir, out, "--hang-at-batch", 2, 1)
    launch.wait_for_line(process, "HANG_AT_BATCH")
    launch.kill_hard(process)

    assert not out.exists()
    (latest,) = _checkpoints(backup_dir)
    with open(backup_dir / latest / "training_metadata.json") as handle:
        assert json.load(handle)["epoch"] == 2  # epochs 0 and 1 completed
    _resume_and_check(backup_dir, out, expected_first_epoch=2, reference=uninterrupted_weights)


def test_sigkill_while_writing_a_backup_keeps_the_previous_one(tmp_path, uninterrupted_weights):
    backup_dir, out = tmp_path / "backup", tmp_path / "result.npz"
    # Killed while the backup of epoch 2 is written but not yet renamed into place.
    process = launch.start("crash_train.py", backup_dir, out, "--hang-in-backup", 2)
    launch.wait_for_line(process, "HANG_IN_BACKUP")
    launch.kill_hard(process)

    leftovers = [name for name in os.listdir(backup_dir) if ".tmp-" in name]
    assert len(leftovers) == 1  # the interrupted write, under a temporary name only
    (latest,) = _checkpoints(backup_dir)
    with open(backup_dir / latest / "training_metadata.json") as handle:
        assert json.load(handle)["epoch"] == 2
    # Resumes at epoch 2 (the interrupted backup is ignored and removed), ends identical.
    _resume_and_check(backup_dir, out, expected_first_epoch=2, reference=uninterrupted_weights)


def _leftovers(folder, target_name):
    return sorted(name for name in os.listdir(folder) if target_name in name and name != target_name)


@pytest.mark.parametrize("kind, target_name, step", [
    ("onnx", "model.onnx", "validate"),
    pytest.param("savedmodel", "saved_model", "validate", marks=pytest.mark.slow),
])
def test_export_killed_midway_leaves_no_partial_artefact(tmp_path, kind, target_name, step):
    """SIGKILL during validation (the artefact is already written, in the staging area): nothing
    appears at the target path; the next export to the same target succeeds and removes the
    staging area the killed process left behind."""
    target = tmp_path / target_name
    process = launch.start("export_hang.py", kind, target, step)
    lines = launch.wait_for_line(process, "HANG_IN_EXPORT")
    assert any(line.startswith("STEP write") for line in lines)  # killed after the write began
    launch.kill_hard(process)

    assert not os.path.lexists(target)
    assert not os.path.lexists(f"{target}.data")
    stale = _leftovers(tmp_path, target_name)
    assert all(name.startswith(".") and ".tmp-" in name for name in stale), stale

    output = launch.run("export_hang.py", kind, target, "never")
    assert "EXPORTED" in output
    assert os.path.exists(target)
    assert _leftovers(tmp_path, target_name) == []


class _Unsaveable(keras.layers.Layer):
    """A layer whose config cannot be serialized: `model.save` fails part-way through."""

    def call(self, x):
        return x

    def get_config(self):
        raise RuntimeError("this layer cannot be saved")


def test_failed_save_model_leaves_the_previous_file_intact(tmp_path):
    from keras_transformer import saving

    target = tmp_path / "model.keras"
    good = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    saving.save_model(good, target)
    before = target.read_bytes()
    bad = keras.Sequential([keras.Input((3,)), _Unsaveable()])
    with pytest.raises(Exception, match="cannot be saved"):
        saving.save_model(bad, target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]  # no temporary file left behind
    reloaded = saving.load_model(target)
    np.testing.assert_allclose(reloaded.get_weights()[0], good.get_weights()[0])
