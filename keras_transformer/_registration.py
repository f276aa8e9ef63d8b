"""Registers the library's Keras classes as soon as Keras is there, so that a plain
`keras.saving.load_model("m.keras")` loads our models (compiled ones too) after
`import keras_transformer`.

Registering needs the modules that define the classes, and they import Keras (and TensorFlow,
seconds). `import keras_transformer` must stay cheap for the numpy-only users
(`keras_transformer.search`, `export.runtime`), so:

* Keras already imported: the classes are registered at once (a fraction of a second more).
* Keras not imported yet: a one-shot import hook registers them right after `keras` itself has
  been imported (by the user, TensorFlow or anyone); a process that never imports Keras never
  pays anything.
"""

import importlib
import importlib.abc
import importlib.util
import sys

REGISTERING_MODULES = ("keras_transformer.layers", "keras_transformer.models", "keras_transformer.training")


def register_all():
    """Imports every module that registers classes with `keras.saving`."""
    for name in REGISTERING_MODULES:
        importlib.import_module(name)


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Finds `keras` with the other finders, and makes its loader register our classes once the
    `keras` module has executed."""

    def __init__(self):
        self.searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras" or self.searching:
            return None
        # Probes such as `importlib.util.find_spec("keras")` (TensorFlow makes one) also land
        # here without importing anything: the hook stays until keras really executes.
        self.searching = True
        try:
            spec = importlib.util.find_spec("keras")
        finally:
            self.searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_keras = spec.loader.exec_module

        def exec_then_register(module):
            exec_keras(module)
            _remove_hook()
            register_all()

        spec.loader.exec_module = exec_then_register
        return spec


def _remove_hook():
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _AfterKerasImport)]


def register_when_keras_is_imported():
    """Registers now if Keras is imported, else once it is (see the module docstring)."""
    if "keras" in sys.modules:
        register_all()
    elif not any(isinstance(finder, _AfterKerasImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())
