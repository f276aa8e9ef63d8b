"""Import TensorFlow without its known start-up noise, keeping every other message.

TensorFlow's C++ side writes to the stderr file descriptor before any Python logging exists, so
environment variables cannot silence all of it (`TF_CPP_MIN_LOG_LEVEL=3` would also hide real
errors). `import_tensorflow_quietly()` sets the usual variables, imports TensorFlow and
initialises its devices with file descriptor 2 sent to a temporary file, then writes back every
line except the known noise: absl's "All log messages before absl::InitializeLog()" banner, the
"Could not find cuda drivers" note and, on a machine without an NVIDIA driver, "failed call to
cuInit". The entry points (examples, demo, `kt-export`, benchmarks) call it first.
"""

import contextlib
import os
import re
import sys
import tempfile

_NOISE = (
    re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(r"[IW]\d{4} .*cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine.*"),
)
# Without a driver, cuInit failing is expected; with one, it is a real error and stays visible.
_NO_DRIVER_NOISE = re.compile(r"E\d{4} .*cuda_platform\.cc:\d+\] failed call to cuInit: .*")


def is_noise(line, has_driver=None):
    """Whether one stderr line is known, harmless TensorFlow start-up noise."""
    line = line.rstrip("\r\n")
    if has_driver is None:
        has_driver = os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")
    return any(p.fullmatch(line) for p in _NOISE) or (not has_driver and bool(_NO_DRIVER_NOISE.fullmatch(line)))


@contextlib.contextmanager
def _filtered_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not is_noise(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def import_tensorflow_quietly():
    """Sets `TF_CPP_MIN_LOG_LEVEL=2` and `KERAS_BACKEND=tensorflow` unless already set, then (for
    the TensorFlow backend) imports TensorFlow and lists its devices without the known noise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ["KERAS_BACKEND"] != "tensorflow" or "tensorflow" in sys.modules:
        return
    with _filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # platform initialisation (cuInit) happens here
