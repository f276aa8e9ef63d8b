"""Shared test set-up: quiet TensorFlow, the Keras backend, and deterministic seeds.

The backend is `KERAS_BACKEND` when set (`make test-jax` / `make test-torch` set it), else
TensorFlow. Tests marked `tensorflow` (SavedModel, tf2onnx, tf.data, tf.function) are skipped on
the other backends; modules that import TensorFlow use `pytest.importorskip`, so that the JAX and
PyTorch venvs, which have no TensorFlow at all, collect the rest.

Area-specific fixtures live in the test modules (or `tests/_<area>_fixtures.py`) that use them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"needs TensorFlow as the Keras backend; this run uses {backend!r}")
    for item in items:
        # the marker, not `item.keywords`: a parameter id "tensorflow" is a keyword too
        if item.get_closest_marker("tensorflow") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same seeds and the default dtype policy."""
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
