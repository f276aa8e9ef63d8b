"""The README quickstart runs twice in a row (the second run replaces `sorter.onnx`)."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]
# Smaller sizes, same code path: (README text, test text)
SMALLER = [("(256, 12)", "(32, 6)"), ("max_length=12", "max_length=6"), ("d_model=64, num_heads=4, d_ff=128", "d_model=16, num_heads=2, d_ff=32"),
           ("paper_optimizer(d_model=64", "paper_optimizer(d_model=16"), ("epochs=2", "epochs=1")]


def quickstart_code():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for original, smaller in SMALLER:
        assert code.count(original) == 1, f"the quickstart no longer contains {original!r}"
        code = code.replace(original, smaller)
    return code


def test_quickstart_runs_twice_in_a_row(tmp_path):
    code = quickstart_code()
    runner = f"import sys\ncode = {code!r}\nfor run in range(2):\n    exec(compile(code, 'README', 'exec'), {{}})\n    print('run', run, 'ok')\n"
    result = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run 1 ok" in result.stdout
    assert (tmp_path / "sorter.onnx").is_file()
