"""The `[runtime]` install (numpy + onnxruntime only) serves a written model folder.

A fresh venv gets `pip install '<repo>[runtime]'` (a real wheel build and install, from the
package index); a script run there, away from the repository, checks that neither Keras nor any
backend is importable, then runs `export.runtime.OnnxModel` and `export.runtime.generate` on
files this process wrote, and the results must equal the Keras model's. Slow (a venv and an
install, about a minute): `make test-runtime` and CI run it.
"""

import json
import pathlib
import subprocess
import venv

import numpy as np
import pytest

import export
from export.native import save_generation_graphs
from keras_transformer.models import DecoderOnlyTransformer

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = [[5, 6, 7, 8], [9, 10]]

SCRIPT = """
import importlib.util, json, sys
import numpy as np
present = [m for m in ("keras", "tensorflow", "jax", "torch", "tf2onnx", "onnx") if importlib.util.find_spec(m)]
assert not present, f"the runtime install brought {present}"
from export.runtime import OnnxModel, generate
folder, ids = sys.argv[1], np.array(json.loads(sys.argv[2]), dtype=np.int32)
logits = OnnxModel(folder + "/model.onnx")({"token_ids": ids})["logits"]
tokens = generate(folder + "/generation", json.loads(sys.argv[3]), max_new_tokens=5, temperature=0.0)
np.save(folder + "/logits.npy", logits)
np.save(folder + "/tokens.npy", tokens)
print("modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow", "jax", "torch")))
"""


@pytest.mark.slow
def test_runtime_install_serves_a_folder_without_keras_or_backend(tmp_path):
    model = DecoderOnlyTransformer(40, 1, 16, 2, 32, dropout=0.0, positional="learned", max_length=16)
    folder = tmp_path / "served"
    export.to_onnx(model, folder / "model.onnx")
    save_generation_graphs(model, folder / "generation")
    ids = np.array([[3, 4, 5, 6], [7, 8, 9, 0]], dtype=np.int32)

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{REPO}[runtime]"],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    run = subprocess.run([str(python), "-c", SCRIPT, str(folder), json.dumps(ids.tolist()), json.dumps(PROMPTS)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "modules: []" in run.stdout

    expected = np.asarray(model({"token_ids": ids}, training=False))
    np.testing.assert_allclose(np.load(folder / "logits.npy"), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.load(folder / "tokens.npy"),
                                  model.generate(PROMPTS, max_new_tokens=5, temperature=0.0))
