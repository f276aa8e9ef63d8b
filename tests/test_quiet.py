"""Entry points import TensorFlow without its known start-up noise, and real errors stay visible."""

import os
import pathlib
import subprocess
import sys

import pytest

from keras_transformer import quiet

ROOT = pathlib.Path(__file__).parents[1]
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
CUINIT = ("E0000 00:00:1796194590.460547    3236 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
          "error: Failed call to cuInit: UNKNOWN ERROR (303)")
DRIVERS = ("I0000 00:00:1796194584.498818    3236 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
           "GPU will not be used.")


def _run(code):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(env, PYTHONPATH=str(ROOT), KERAS_BACKEND="tensorflow"))


def test_known_noise_is_recognised_and_nothing_else():
    assert quiet.is_noise(BANNER + "\n") and quiet.is_noise(DRIVERS)
    assert quiet.is_noise(CUINIT, has_driver=False)
    assert not quiet.is_noise(CUINIT, has_driver=True)  # with a driver, a failing cuInit is a real error
    assert not quiet.is_noise("E0000 00:00:1.0 1 some_kernel.cc:1] Real failure")
    assert not quiet.is_noise("Traceback (most recent call last):")


@pytest.mark.tensorflow  # imports TensorFlow
def test_tensorflow_imports_quietly_and_other_stderr_survives():
    code = ("import os\n"
            "from keras_transformer import quiet\n"
            "with quiet._filtered_stderr():\n"
            f"    os.write(2, {(BANNER + chr(10) + 'a real message' + chr(10)).encode()!r})\n"
            "quiet.import_tensorflow_quietly()\n"
            "import tensorflow as tf\n"
            "print(int(tf.constant(2) + 1), os.environ['TF_CPP_MIN_LOG_LEVEL'])\n")
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "2"]
    assert "a real message" in result.stderr
    for noise in (BANNER, "Could not find cuda drivers"):
        assert noise not in result.stderr, result.stderr
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")):
        assert "failed call to cuInit" not in result.stderr, result.stderr
