"""to_savedmodel: the serving_default signature, dynamic dims, validation, atomic writes."""

import os

import numpy as np
import pytest

import export
from export import savedmodel
from export.signatures import call_model, outputs_as_dict
from export.validate import ExportValidationError
import _export_fixtures as fx

tf = pytest.importorskip("tensorflow")  # SavedModel export
pytestmark = pytest.mark.tensorflow


@pytest.fixture(scope="module")
def user_export(tmp_path_factory):
    model = fx.encoder_with_user_layer()
    path = tmp_path_factory.mktemp("sm") / "saved_model"
    return model, path, export.to_savedmodel(model, path)


def test_serving_signature_is_named_and_dynamic(user_export):
    model, path, report = user_export
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert {name: spec.shape.as_list() for name, spec in inputs.items()} == {"token_ids": [None, None]}
    assert list(serve.structured_outputs) == ["logits"]
    assert serve.structured_outputs["logits"].shape.as_list() == [None, None, 7]
    assert report.method == "keras.export" and report.validation.passed
    assert [(i.name, i.shape) for i in report.inputs] == [("token_ids", ("batch", "sequence"))]
    assert [(o.name, o.shape) for o in report.outputs] == [("logits", ("batch", "sequence", 7))]
    assert os.path.join(str(path), "saved_model.pb") in report.files
    assert not fx.leftovers(path.parent)


def test_reloaded_signature_matches_keras_at_unseen_shapes(user_export):
    model, path, _ = user_export
    ids = np.random.default_rng(5).integers(1, fx.VOCAB, (4, 9)).astype(np.int32)
    ids[2:, 5:] = 0
    got = savedmodel.saved_model_runner(path)({"token_ids": ids})["logits"]
    want = np.asarray(call_model(model, {"token_ids": ids}))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_existing_target_needs_overwrite(user_export):
    model, path, _ = user_export
    with pytest.raises(FileExistsError, match="overwrite"):
        export.to_savedmodel(model, path)


def test_broken_export_is_caught_and_nothing_written(user_export, tmp_path, monkeypatch):
    """A serving function that shifts the logits writes a really wrong SavedModel: refused."""
    model, _, _ = user_export
    from export import signatures

    original = signatures.serving_function

    def shifted(model, signature):
        function = original(model, signature)
        return tf.function(lambda *a: {k: v + 1e-2 for k, v in function(*a).items()},
                           input_signature=signatures.tensor_specs(signature))

    monkeypatch.setattr(signatures, "serving_function", shifted)
    with pytest.raises(ExportValidationError, match="SavedModel export disagrees"):
        export.to_savedmodel(model, tmp_path / "saved_model", max_length=4)
    assert os.listdir(tmp_path) == []


def test_never_called_subclassed_model(tmp_path):
    model = fx.NeverCalledClassifier()
    assert not model.built
    report = export.to_savedmodel(model, tmp_path / "sm", input_signature={"token_ids": ((None, None), "int32")},
                                  max_length=8)
    assert report.validation.passed and model.built
    assert [(o.name, o.shape) for o in report.outputs] == [("output", ("batch", 3))]


@pytest.mark.parametrize("family", ["encoder_only", "decoder_only", "encoder_decoder"])
def test_model_families(family, tmp_path):
    model = fx.randomize(fx.family_models()[family])
    report = export.to_savedmodel(model, tmp_path / "sm", max_length=6)
    assert report.validation.passed
    serve = savedmodel.saved_model_runner(tmp_path / "sm")
    feeds = {i.name: np.random.default_rng(1).integers(1, fx.VOCAB, (2, 7)).astype(np.int32) for i in report.inputs}
    want = outputs_as_dict(call_model(model, feeds), list(model.output_names))
    got = serve(feeds)
    assert set(got) == set(model.output_names)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], np.asarray(value), atol=1e-5, rtol=1e-5)
