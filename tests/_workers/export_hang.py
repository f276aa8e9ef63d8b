"""Exports a tiny model with export.to_onnx / to_savedmodel and stops mid-way to be killed.

Run by tests/test_crash_safety.py:

    export_hang.py onnx|savedmodel TARGET STEP

Prints `STEP <name>` as each export step starts (the exporter's `progress` callback) and, when
step STEP starts, `HANG_IN_EXPORT` and sleeps, so that the test can SIGKILL it there.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import export  # noqa: E402
from keras_transformer.models import DecoderOnlyTransformer  # noqa: E402


def main(kind, target, hang_at):
    model = DecoderOnlyTransformer(
        vocab_size=20, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.0, max_length=8
    )

    def progress(step):
        print("STEP", step, flush=True)
        if step == hang_at:
            print("HANG_IN_EXPORT", flush=True)
            time.sleep(600)

    exporter = export.to_onnx if kind == "onnx" else export.to_savedmodel
    exporter(model, target, progress=progress, max_length=4, batch_sizes=(1,), overwrite=True)
    print("EXPORTED", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
