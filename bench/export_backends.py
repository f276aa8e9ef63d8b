"""Native ONNX export time (`export.to_onnx`, validation included) of the same models on each
Keras backend: TensorFlow, JAX and PyTorch, each in a fresh process of its own Python.

Each backend needs an interpreter where it is installed: `--python BACKEND=PATH` (repeatable;
default: this interpreter, for every backend importable here), e.g.

    python -m bench export_backends --python jax=.venv-jax/bin/python --python torch=.venv-torch/bin/python

The processes take turns (round-robin, `--rounds`), so that load from other processes on a shared
machine falls on all backends alike; the table gives the median wall and CPU seconds of one export
per backend, the step timings of the report (`inspect`: signature and output-axis probes,
`validate`: the shape sweep), and the ratio to TensorFlow.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

from bench import common

BACKENDS = ("tensorflow", "jax", "torch")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process: build the model, export it twice (a fresh model each time, as a user's second
# export would be); the second export is the reported one (the first also pays one-time imports).
WORKER = """
import json, os, sys, tempfile, time
import export
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer

def build(kind):
    if kind == "decoder-only":
        return DecoderOnlyTransformer(100, 2, 32, 2, 64, max_length=32, positional="learned", dropout=0.0)
    return EncoderDecoderTransformer(100, 2, 2, d_model=32, num_heads=2, d_ff=64, max_length=32,
                                     positional="learned", dropout=0.0)

results = {}
with tempfile.TemporaryDirectory() as folder:
    for kind in sys.argv[1].split(","):
        for attempt in range(2):
            wall, cpu = time.perf_counter(), time.process_time()
            report = export.to_onnx(build(kind), os.path.join(folder, f"{kind}{attempt}.onnx"))
            assert report.validation.passed
            results[kind] = dict(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu,
                                 steps=report.timings, cases=len(report.validation.rows))
print("RESULT " + json.dumps(results))
"""


def _pythons(pairs):
    chosen = {}
    for pair in pairs:
        backend, _, path = pair.partition("=")
        if backend not in BACKENDS or not path:
            raise SystemExit(f"--python expects BACKEND=PATH with BACKEND in {BACKENDS}; received {pair!r}.")
        chosen[backend] = path
    for backend in BACKENDS:
        if backend not in chosen and importlib.util.find_spec(backend) is not None:
            chosen[backend] = sys.executable
    return chosen


def _run_worker(python, backend, kinds):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    result = subprocess.run([python, "-c", WORKER, ",".join(kinds)], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=1800)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"{backend} export worker failed:\n{result.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv=()):
    parser = argparse.ArgumentParser(prog="python -m bench export_backends")
    parser.add_argument("--python", action="append", default=[], metavar="BACKEND=PATH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round, decoder-only only")
    parser.add_argument("--backend", help=argparse.SUPPRESS)  # bench-wide option; each worker sets its own
    args = parser.parse_args(list(argv))
    kinds = ["decoder-only"] if args.quick else ["decoder-only", "encoder-decoder"]
    rounds = 1 if args.quick else args.rounds
    pythons = _pythons(args.python)
    samples = {backend: [] for backend in pythons}
    for _ in range(rounds):
        for backend, python in pythons.items():
            samples[backend].append(_run_worker(python, backend, kinds))
    rows, data = [], {"machine": common.machine_info(), "rounds": rounds, "results": {}}
    for kind in kinds:
        tf_wall = (statistics.median(s[kind]["wall"] for s in samples["tensorflow"])
                   if "tensorflow" in samples else None)
        for backend, runs in samples.items():
            wall = statistics.median(r[kind]["wall"] for r in runs)
            cpu = statistics.median(r[kind]["cpu"] for r in runs)
            steps = {step: statistics.median(r[kind]["steps"][step] for r in runs)
                     for step in ("inspect", "validate")}
            ratio = f"{wall / tf_wall:.2f}x" if tf_wall else "-"
            rows.append((kind, backend, f"{wall:.2f}", f"{cpu:.2f}", f"{steps['inspect']:.2f}",
                         f"{steps['validate']:.2f}", ratio))
            data["results"].setdefault(kind, {})[backend] = dict(wall_s=wall, cpu_s=cpu, **steps)
    common.print_table("native to_onnx export time per backend (2-layer, d_model 32, 6-case sweep)",
                       ("model", "backend", "wall s", "CPU s", "inspect s", "validate s", "vs TF"), rows)
    common.write_json("export_backends", data)
    return data
