"""`pip install -e .[bench]` installs everything the benchmarks import, and a missing matplotlib
never costs the measurements (the JSON is written first, the chart is skipped with a note)."""

import ast
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).parents[1]
# import name -> distribution name, where they differ or are third-party
DISTRIBUTIONS = {"keras_hub": "keras-hub", "matplotlib": "matplotlib", "onnx": "onnx", "onnxruntime": "onnxruntime",
                 "onnxruntime_genai": "onnxruntime-genai",
                 "tf2onnx": "tf2onnx", "rich": "rich", "sympy": "sympy", "numpy": "numpy", "keras": "keras",
                 "tensorflow": "tensorflow"}
LOCAL = {"bench", "keras_transformer", "export"}


def _requirement_names(extra, project):
    """Distribution names an extra installs, self-references (`project[other]`) expanded."""
    names = {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in project["dependencies"]}
    pending, seen = [extra], set()
    while pending:
        current = pending.pop()
        seen.add(current)
        for requirement in project["optional-dependencies"][current]:
            name = re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower()
            if name == project["name"]:
                pending += [e for e in re.findall(r"\[(.*)\]", requirement)[0].split(",") if e not in seen]
            else:
                names.add(name)
    return names


def _imported_modules(paths):
    modules = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - LOCAL - set(sys.stdlib_module_names)


def test_bench_extra_installs_every_module_the_benchmarks_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the bar chart draws with keras_transformer.visualize
    imported = _imported_modules([*sorted((ROOT / "bench").glob("*.py")), ROOT / "keras_transformer" / "visualize.py"])
    unknown = sorted(imported - set(DISTRIBUTIONS))
    assert not unknown, f"map these imports to distributions in DISTRIBUTIONS: {unknown}"
    missing = sorted(DISTRIBUTIONS[m] for m in imported if DISTRIBUTIONS[m] not in _requirement_names("bench", project))
    assert not missing, f"pip install .[bench] would not install {missing}"


def test_bar_chart_without_matplotlib_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    from bench import common

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # None in sys.modules -> ImportError
    assert common.write_bar_chart("x", {"a": 1.0}, "t", "u", directory=str(tmp_path)) is None
    assert "matplotlib is missing" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
