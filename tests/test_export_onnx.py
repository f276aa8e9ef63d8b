"""to_onnx through tf2onnx: names, named axes, checker, metadata, validation, atomic writes."""

import json
import os

import numpy as np
import onnx
import pytest

import export
from export import files, onnx_export, tracing
from export.runtime import OnnxModel
from export.signatures import call_model, outputs_as_dict
from export.validate import ExportValidationError
import _export_fixtures as fx

pytestmark = pytest.mark.tensorflow  # the tf2onnx tracing path


def _keras_outputs(model, feeds, names):
    return {k: np.asarray(v) for k, v in outputs_as_dict(call_model(model, feeds), names).items()}


def _ids(batch, length, seed=0):
    return np.random.default_rng(seed).integers(1, fx.VOCAB, (batch, length)).astype(np.int32)


@pytest.fixture(scope="module")
def user_export(tmp_path_factory):
    """The functional encoder with a user-defined layer, exported once for the module."""
    model = fx.encoder_with_user_layer()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    report = export.to_onnx(model, path, method="tracing")
    return model, path, report


@pytest.fixture(scope="module")
def seq2seq_export(tmp_path_factory):
    model = fx.seq2seq_from_layers()
    path = tmp_path_factory.mktemp("onnx") / "seq2seq.onnx"
    report = export.to_onnx(model, path, method="tracing", max_length=9)
    return model, path, report


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_names_axes_checker_and_report(user_export):
    model, path, report = user_export
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert [(i.name, _dims(i)) for i in proto.graph.input] == [("token_ids", ["batch", "sequence"])]
    assert [(o.name, _dims(o)) for o in proto.graph.output] == [("logits", ["batch", "sequence", 7])]
    assert report.method == "tracing" and report.format == "onnx"
    assert report.opset == tracing.default_opset() == min(tracing.max_tracing_opset(), tracing.max_runtime_opset())
    assert report.files == {str(path): os.path.getsize(path)}
    assert report.num_nodes == len(proto.graph.node)
    # Both LayerNorms of the EncoderBlock are fused; Dense layers are single MatMuls (no tensordot).
    assert report.node_counts["LayerNormalization"] == 2 and "ReduceMean" not in report.node_counts
    # 6 projections (QKV, attention output, 2 feed-forward, user gate, logits) + 2 in attention.
    producers = {out: node.op_type for node in proto.graph.node for out in node.output}
    assert report.node_counts["MatMul"] == 8
    assert not [n for n in proto.graph.node if n.op_type == "Reshape" and producers.get(n.input[0]) == "MatMul"]
    assert report.validation.passed
    # The sweep covers batch 1 and 3, lengths 1, middle and the learned-position limit (12).
    shapes = {row.shape for row in report.validation.rows}
    assert shapes == {(b, n, 7) for b in (1, 3) for n in (1, 6, fx.MAX_LENGTH)}
    text = str(report)
    assert "token_ids: int32[batch, sequence]" in text and "PASSED" in text
    assert not fx.leftovers(path.parent)


def test_metadata_holds_version_config_and_class(user_export):
    _, path, _ = user_export
    metadata = export.load_metadata(path)
    assert metadata["keras_transformer.version"] == __import__("keras_transformer").__version__
    config = json.loads(metadata["keras_transformer.config"])
    assert config["name"] == "tiny_encoder"
    assert metadata["keras_transformer.export_method"] == "tracing"


def test_no_dimension_fixed_at_unseen_shapes(user_export):
    """Shapes used neither at export nor in the sweep (batch 5, length 11, padded rows)."""
    model, path, _ = user_export
    ids = _ids(5, 11, seed=3)
    ids[1:, 7:] = 0
    got = OnnxModel(path)({"token_ids": ids})["logits"]
    want = _keras_outputs(model, {"token_ids": ids}, ["logits"])["logits"]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_encoder_decoder_axes_and_outputs(seq2seq_export):
    model, path, report = seq2seq_export
    proto = onnx.load(path)
    axes = {i.name: _dims(i) for i in list(proto.graph.input) + list(proto.graph.output)}
    assert axes["encoder_token_ids"] == ["batch", "encoder_sequence"]
    assert axes["decoder_token_ids"] == ["batch", "decoder_sequence"]
    assert axes["logits"] == ["batch", "decoder_sequence", fx.VOCAB]
    assert axes["encoder_states"] == ["batch", "encoder_sequence", 16]
    assert report.validation.passed and {r.output for r in report.validation.rows} == {"logits", "encoder_states"}
    # Every sweep case with >1 token uses different encoder and decoder lengths.
    assert all("encoder=" in r.case and "decoder=" in r.case for r in report.validation.rows)
    feeds = {"encoder_token_ids": _ids(2, 13, 1), "decoder_token_ids": _ids(2, 4, 2)}
    got = OnnxModel(path)(feeds)
    want = _keras_outputs(model, feeds, ["logits", "encoder_states"])
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=1e-4)


def _perturbed_copy(path):
    proto = onnx.load(path)
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    return proto


def test_perturbed_weight_in_written_file_is_caught(user_export, tmp_path):
    model, path, _ = user_export
    broken = tmp_path / "broken.onnx"
    onnx.save_model(_perturbed_copy(path), broken)
    table = export.validate_onnx(model, broken, max_length=6)
    assert not table.passed
    with pytest.raises(ExportValidationError, match="disagrees") as caught:
        table.raise_if_failed()
    assert "FAIL" in str(caught.value) and caught.value.table is table


def test_failed_validation_writes_nothing(user_export, tmp_path, monkeypatch):
    """A converter whose graph is wrong (a real tf2onnx graph with one weight changed)."""
    model, path, _ = user_export
    monkeypatch.setattr(tracing, "trace", lambda *args, **kwargs: _perturbed_copy(path))
    target = tmp_path / "model.onnx"
    with pytest.raises(ExportValidationError, match="nothing was written"):
        export.to_onnx(model, target, method="tracing", max_length=4)
    assert os.listdir(tmp_path) == []


def test_interrupted_export_leaves_nothing(user_export, tmp_path, monkeypatch):
    model, path, _ = user_export
    monkeypatch.setattr(tracing, "trace", lambda *args, **kwargs: onnx.load(path))
    real_save = files.save_onnx

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "save_onnx", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        export.to_onnx(model, tmp_path / "model.onnx", method="tracing")
    assert os.listdir(tmp_path) == []


def test_external_data_layout_and_overwrite(user_export, tmp_path, monkeypatch):
    """The >2 GiB code path (tf2onnx large_model, external data) with the threshold lowered to
    1 byte: model.onnx + model.onnx.data."""
    model, path, _ = user_export
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.to_onnx(model, target, method="tracing")
    assert target.read_bytes() == b"old"
    report = export.to_onnx(model, target, method="tracing", overwrite=True, external_data_threshold=1,
                            max_length=4)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.data"]
    assert set(report.files) == {str(target), str(target) + ".data"}
    assert report.validation.passed  # onnxruntime ran the external-data file
    header = onnx.load(target, load_external_data=False)
    external = [t for t in header.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    # onnx keeps tensors under 1 KiB inline; the embedding (50 x 16 floats) must be external.
    assert any(list(t.dims) == [fx.VOCAB, 16] for t in external)
    assert os.path.getsize(str(target) + ".data") >= sum(4 * int(np.prod(t.dims)) for t in external)
    # Overwriting with a small (single-file) export removes the stale data file.
    monkeypatch.setattr(tracing, "trace", lambda *args, **kwargs: onnx.load(path))
    export.to_onnx(model, target, method="tracing", overwrite=True, validate=False)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_argument_errors(user_export, tmp_path):
    model, _, _ = user_export
    with pytest.raises(ValueError, match="method"):
        export.to_onnx(model, tmp_path / "m.onnx", method="fast")
    with pytest.raises(ValueError, match="precision"):
        export.to_onnx(model, tmp_path / "m.onnx", precision="int3")
    assert os.listdir(tmp_path) == []


def test_missing_optional_modules_give_clear_errors(user_export, tmp_path, monkeypatch):
    """method="native" / precision without the Export II modules raise a ValueError naming them."""
    model, _, _ = user_export
    import sys

    monkeypatch.setitem(sys.modules, "export.native", None)  # None in sys.modules -> ImportError
    monkeypatch.setitem(sys.modules, "export.precision", None)
    with pytest.raises(ValueError, match="export.native"):
        onnx_export._native_module("native", model)
    assert onnx_export._native_module("auto", model) is None
    with pytest.raises(ValueError, match="export.precision"):
        onnx_export._convert_precision(onnx.ModelProto(), "fp16")


@pytest.mark.parametrize("family", ["encoder_only", "decoder_only", "encoder_decoder"])
def test_model_families_export_and_validate(family, tmp_path):
    model = fx.randomize(fx.family_models()[family])
    report = export.to_onnx(model, tmp_path / "model.onnx", method="tracing", max_length=8)
    assert report.validation.passed
    inputs = {info.name: info.shape for info in report.inputs}
    if family == "encoder_decoder":
        assert inputs == {"encoder_token_ids": ("batch", "encoder_sequence"),
                          "decoder_token_ids": ("batch", "decoder_sequence")}
    else:
        assert inputs == {"token_ids": ("batch", "sequence")}
    assert [o.name for o in report.outputs] == list(model.output_names)


def test_precision_plumbing_validates_with_the_precision_comparator(user_export, tmp_path, monkeypatch):
    """precision="fp16" goes through export.precision.convert and the scaled fp16 tolerance."""
    model, path, _ = user_export
    monkeypatch.setattr(tracing, "trace", lambda *args, **kwargs: onnx.load(path))
    report = export.to_onnx(model, tmp_path / "model.onnx", method="tracing", precision="fp16", max_length=4)
    assert report.precision == "fp16" and report.validation.passed
    assert "atol=0.01" in report.validation.comparator_name
    header = onnx.load(tmp_path / "model.onnx")
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in header.graph.initializer)
    assert [(i.name, i.shape) for i in report.inputs] == [("token_ids", ("batch", "sequence"))]


def test_auto_method_uses_the_native_emitter_when_it_supports_the_model(tmp_path):
    from export import native

    model = fx.randomize(fx.family_models()["decoder_only"])
    assert native.supports(model), native.unsupported_reason(model)
    report = export.to_onnx(model, tmp_path / "model.onnx", max_length=6)
    assert report.method == "native" and report.validation.passed
    assert export.load_metadata(tmp_path / "model.onnx")["keras_transformer.export_method"] == "native"
    assert [(i.name, i.shape) for i in report.inputs] == [("token_ids", ("batch", "sequence"))]
