"""kt-export / python -m export: outputs, exit codes and one-line error messages."""

import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import _export_fixtures as fx
from export import cli, tracing

pytestmark = pytest.mark.tensorflow  # the CLI tests export by tf2onnx tracing and to SavedModel


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A saved encoder-only model exported once with --to all."""
    root = tmp_path_factory.mktemp("cli")
    model_path = str(root / "tiny.keras")
    fx.randomize(fx.family_models()["encoder_only"]).save(model_path)
    out = root / "out"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = cli.main([model_path, "--to", "all", "--out", str(out)])
    return model_path, out, code, printed.getvalue()


def test_export_all_writes_both_and_exits_zero(exported):
    _, out, code, printed = exported
    assert code == cli.EXIT_OK
    # The report tables: named axes survive printing, both validations passed.
    assert printed.count("input   token_ids: int32[batch, sequence]") == 2
    assert printed.count("): PASSED") == 2
    assert sorted(os.listdir(out)) == ["model.onnx", "saved_model"]
    onnx.checker.check_model(str(out / "model.onnx"))
    assert os.path.isfile(out / "saved_model" / "saved_model.pb")


def test_existing_output_needs_overwrite(exported, capsys):
    model_path, out, _, _ = exported
    before = os.path.getmtime(out / "model.onnx")
    code = cli.main([model_path, "--to", "onnx", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert os.path.getmtime(out / "model.onnx") == before


def test_missing_model_file(tmp_path, capsys):
    code = cli.main([str(tmp_path / "nope.keras"), "--out", str(tmp_path / "out")])
    assert code == cli.EXIT_USAGE and "model file not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_export_outputs_as_input_say_what_they_are(exported, capsys):
    _, out, _, _ = exported
    for given, kind in ((out / "saved_model", "is a TensorFlow SavedModel directory"),
                        (out / "model.onnx", "is an ONNX file"), (out, "is a directory")):
        code = cli.main([str(given), "--out", str(out / "again")])
        err = capsys.readouterr().err
        assert code == cli.EXIT_USAGE and f"{given} {kind}" in err and "takes the .keras file" in err
    assert not os.path.exists(out / "again")


def test_validation_failure_exits_one_and_writes_nothing(exported, tmp_path, monkeypatch, capsys):
    model_path, out, _, _ = exported
    proto = onnx.load(str(out / "model.onnx"))
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    values = onnx.numpy_helper.to_array(weight) + 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    monkeypatch.setattr(tracing, "trace", lambda *args, **kwargs: proto)
    code = cli.main([model_path, "--to", "onnx", "--out", str(tmp_path), "--method", "tracing", "--max-length", "4"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_FAILED
    assert "failed validation; nothing was written" in captured.err and "FAIL" in captured.out
    assert os.listdir(tmp_path) == []


def test_precision_without_module_is_a_usage_error(exported, tmp_path, monkeypatch, capsys):
    model_path, _, _, _ = exported
    monkeypatch.setitem(sys.modules, "export.precision", None)
    monkeypatch.setattr(tracing, "trace", lambda *args, **kwargs: onnx.ModelProto())  # never reached for real work
    code = cli.main([model_path, "--out", str(tmp_path), "--precision", "int8", "--method", "tracing"])
    assert code == cli.EXIT_USAGE and "export.precision" in capsys.readouterr().err


def test_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "export", "--help"], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0
    for option in ("--to", "--out", "--opset", "--atol", "--rtol", "--no-validate", "--overwrite", "--method",
                   "--precision", "--max-length", "--import"):
        assert option in result.stdout
    bad = subprocess.run([sys.executable, "-m", "export", "m.keras", "--to", "tflite", "--out", "x"],
                         capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
