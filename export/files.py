"""Atomic, all-or-nothing writes of export artefacts, and ONNX files with external data.

An export is written into a hidden temporary directory beside the target (same file system, so
the final `os.replace` is atomic), fsynced, and moved into place only when the caller's block
finishes without an exception. Any exception, KeyboardInterrupt included, removes the temporary
directory and leaves the target untouched.
"""

import contextlib
import os
import shutil
import tempfile

from keras_transformer.saving import fsync_directory, fsync_path

TWO_GIB = 2 * 1024**3


def check_target(path, overwrite):
    """Raises `FileExistsError` early when `path` exists and `overwrite` is False."""
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"Export target {os.fspath(path)!r} already exists; pass overwrite=True (--overwrite) to replace it."
        )


def _replace(source, target, overwrite):
    """Moves `source` to `target`; an existing target is first moved aside, then deleted."""
    check_target(target, overwrite)
    trash = None
    if os.path.lexists(target):
        trash = tempfile.mkdtemp(dir=os.path.dirname(target) or ".", prefix=".kt-export-old-")
        os.replace(target, os.path.join(trash, "old"))
    os.replace(source, target)
    if trash:
        shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_staging(parent, prefix):
    """Deletes staging directories `<prefix><pid>-*` left by killed exports (SIGKILL runs no
    clean-up); those of live processes (concurrent exports) are kept."""
    for name in os.listdir(parent):
        pid = name[len(prefix):].split("-", 1)[0]
        if not (name.startswith(prefix) and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except PermissionError:  # alive, owned by another user
            pass


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


@contextlib.contextmanager
def atomic_output(targets, overwrite=False):
    """Yields `{target: staging_path}`; on success moves every staging path onto its target.

    Args:
        targets: final paths (files or directories) in one parent directory. They are moved in
            the given order, so put the file a reader opens first (e.g. `model.onnx`) last.
        overwrite: replace existing targets; a target the block did not produce (e.g. an old
            `model.onnx.data` when the new model is small) is then removed.
    """
    targets = [os.path.abspath(os.fspath(t)) for t in targets]
    parent = os.path.dirname(targets[0])
    for target in targets:
        check_target(target, overwrite)
    prefix = f".{os.path.basename(targets[-1])}.tmp-"
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_stale_staging(parent, prefix)
        staging = tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{os.getpid()}-")
    except OSError as error:  # name the output directory, not an internal temporary path
        raise type(error)(
            error.errno, f"cannot write {targets[-1]!r}: its directory {parent!r} is not a writable "
            f"directory ({error.strerror})"
        ) from error
    try:
        paths = {target: os.path.join(staging, os.path.basename(target)) for target in targets}
        yield paths
        produced = [target for target in targets if os.path.lexists(paths[target])]
        for target in produced:
            fsync_path(paths[target])
            _replace(paths[target], target, overwrite)
        for target in set(targets) - set(produced):  # e.g. an old model.onnx.data the new export lacks
            if os.path.lexists(target):
                _remove(target)
        fsync_directory(parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def tensor_bytes(model_proto):
    """Bytes held by the initializers of an ONNX model (what decides the 2 GiB protobuf limit)."""
    return sum(t.ByteSize() for t in model_proto.graph.initializer)


def save_onnx(model_proto, path, external_data_threshold=TWO_GIB):
    """Writes `model_proto` to `path`; when its weights reach `external_data_threshold` bytes they
    go to `<path>.data` beside it (onnx's standard external-data layout, never a zip).

    Returns:
        The list of files written.
    """
    import onnx

    if tensor_bytes(model_proto) < external_data_threshold:
        onnx.save_model(model_proto, path)
        return [path]
    location = os.path.basename(path) + ".data"
    onnx.save_model(
        model_proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
        location=location, size_threshold=1024,
    )
    return [path, os.path.join(os.path.dirname(path), location)]
