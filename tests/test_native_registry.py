"""`export.native.registry`: emitters looked up by class through the MRO."""

import keras
import pytest

from export.native import registry


class _Base(keras.layers.Layer):
    def call(self, x):
        return x


@registry.register(_Base)
def _emit_base(g, layer, x):
    return x


class _AddsAMethod(_Base):
    def describe(self):
        return "same computation"


class _OverridesCall(_Base):
    def call(self, x):
        return 2 * x


class _InheritsAnOverride(_OverridesCall):
    def describe(self):
        return "still not the base computation"


class _Unknown(keras.layers.Layer):
    def call(self, x):
        return x


def test_registered_class_and_a_subclass_adding_a_method_are_native():
    assert registry.lookup(_Base()) == (_emit_base, None)
    assert registry.lookup(_AddsAMethod()) == (_emit_base, None)
    assert registry.emitter_for(_AddsAMethod()) is _emit_base


def test_subclass_overriding_call_falls_back_with_a_reason_naming_both_classes():
    emitter, reason = registry.lookup(_OverridesCall())
    assert emitter is None
    assert reason == "_OverridesCall overrides call() of _Base; exported by tracing"
    emitter, reason = registry.lookup(_InheritsAnOverride())
    assert emitter is None
    assert reason == (
        "_InheritsAnOverride (through _OverridesCall) overrides call() of _Base; exported by tracing"
    )


def test_a_nearer_registration_wins_over_the_override_check():
    class _Registered(_OverridesCall):
        pass

    registry.register(_Registered)(_emit_base)
    assert registry.lookup(_Registered()) == (_emit_base, None)


def test_unknown_class_gets_a_reason_and_emitter_for_raises_it():
    assert registry.lookup(_Unknown()) == (None, "_Unknown has no native emitter")
    with pytest.raises(ValueError, match="_OverridesCall overrides call"):
        registry.emitter_for(_OverridesCall())
