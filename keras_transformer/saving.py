"""Safe loading and atomic saving of `.keras` model files.

`load_model` wraps `keras.saving.load_model` with `safe_mode=True` by default and turns every way a
path can be wrong (missing, a directory, a SavedModel, another format, a corrupt or truncated
archive, a file carrying a Python lambda) into a clear error that names the path and the problem.
A `.keras` file is a zip of JSON and HDF5: nothing in it is ever unpickled, and with `safe_mode`
no Python bytecode in it is ever run.

`save_model` and `atomic_directory` write to a temporary path beside the target, fsync, and
rename into place, so that a crash mid-write never leaves a partial file under the final name.
"""

from keras_transformer import backend as _backend

_backend.check_installed()  # before Keras: a missing backend gets the install command

import contextlib
import json
import os
import shutil
import tempfile
import zipfile

import keras

__all__ = ["atomic_directory", "load_model", "save_model"]

_LAMBDA_HINT = "lambda"


def _check_path(path, argument="path"):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"`{argument}` must be a path (str or os.PathLike); received {argument}={path!r} "
            f"of type {type(path).__name__}."
        )
    return os.fspath(path)


def _check_model_file(path):
    """Raise a clear error unless `path` is a readable, intact `.keras` archive."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            raise IsADirectoryError(
                f"{path!r} is a TensorFlow SavedModel directory, not a `.keras` file. Serve it with "
                "`tf.saved_model.load(path)` or wrap it with `keras.layers.TFSMLayer(path, "
                "call_endpoint='serving_default')`."
            )
        raise IsADirectoryError(f"Expected a `.keras` model file; {path!r} is a directory.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    if path.endswith(".weights.h5"):
        raise ValueError(
            f"{path!r} holds weights only; build the model and call `model.load_weights(path)`."
        )
    if not path.endswith(".keras"):
        raise ValueError(
            f"Expected a `.keras` model file (Keras 3 format); received {path!r}. Legacy `.h5` "
            "files can be loaded with `keras.saving.load_model` directly."
        )
    problem = None
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            # CRC of every member (reads the file once): catches corruption and truncation
            # before Keras opens it and reports something misleading ("File not found").
            bad_member = archive.testzip()
            if bad_member is not None:
                problem = f"member {bad_member!r} fails its checksum"
            elif "config.json" not in names:
                problem = "it has no config.json"
            else:
                json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        problem = f"{type(error).__name__}: {error}"
    if problem:
        raise ValueError(
            f"{path!r} is not a valid `.keras` archive (corrupt, truncated or another format): "
            f"{problem}."
        )


def load_model(path, safe_mode=True, custom_objects=None, compile=True):
    """Load a `.keras` model file, refusing unsafe content by default.

    Args:
        path: path of a `.keras` file written by `model.save` or `save_model`.
        safe_mode: refuse files that carry Python bytecode (a `Lambda` layer built from a
            Python `lambda`). Only pass False for files you trust completely.
        custom_objects: extra classes/functions needed to rebuild the model (our layers and
            models are registered and need not be listed).
        compile: restore the training configuration (optimizer, loss) saved with the model.

    Returns:
        The `keras.Model`.

    Raises:
        TypeError: `path` is not a path.
        FileNotFoundError: nothing exists at `path`.
        IsADirectoryError: `path` is a directory (e.g. a SavedModel export).
        ValueError: `path` is not a `.keras` file, is corrupt or truncated, or carries a lambda
            while `safe_mode=True`.

    Example:
    >>> model = load_model("classifier.keras")  # doctest: +SKIP
    """
    path = _check_path(path)
    _check_model_file(path)
    from keras_transformer import layers, models, training  # noqa: F401  (registers the classes)

    try:
        return keras.saving.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=bool(safe_mode)
        )
    except ValueError as error:
        if safe_mode and _LAMBDA_HINT in str(error).lower():
            raise ValueError(
                f"Refusing to load {path!r}: it contains a Python lambda (in a `Lambda` layer), "
                "which would run code stored in the file. Load it with safe_mode=False only if "
                "you trust where the file came from."
            ) from error
        raise


def fsync_path(path):
    """fsync a file, or every file under a directory, then the directory entries themselves."""
    files = [path] if os.path.isfile(path) else [
        os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
    ]
    for name in files:
        with open(name, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_directory(path if os.path.isdir(path) else os.path.dirname(path) or ".")


def fsync_directory(path):
    """fsync a directory so that renames inside it survive a power loss."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_directory(target):
    """Yield a temporary directory beside `target`; on success rename it to `target`.

    The temporary directory is named `.<basename>.tmp-*`; it is removed on any exception, and
    `target` appears only complete (fsynced) or not at all. An existing `target` directory is
    deleted just before the rename (directories cannot be swapped atomically), so callers that
    need the old version until the new one is in place write to a new name (as
    `keras_transformer.callbacks.BackupAndRestore` does).
    """
    target = os.path.abspath(_check_path(target, "target"))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.tmp-")
    try:
        yield staging
        fsync_path(staging)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(staging, target)
        fsync_directory(parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_model(model, path, overwrite=True):
    """`model.save(path)` written atomically: temporary file, fsync, rename.

    Args:
        model: the `keras.Model` to save.
        path: target path ending in `.keras`.
        overwrite: replace an existing file at `path`.
    """
    path = os.path.abspath(_check_path(path))
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end in `.keras`; received path={path!r}.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} already exists; pass overwrite=True to replace it.")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"The directory of `path` does not exist: {parent!r}.")
    handle, staging = tempfile.mkstemp(
        dir=parent, prefix=f".{os.path.basename(path)[:-len('.keras')]}.tmp-", suffix=".keras"
    )
    os.close(handle)
    try:
        model.save(staging, overwrite=True)
        fsync_path(staging)
        os.replace(staging, path)
        fsync_directory(parent)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
