"""ONNX export by tracing: `export.to_onnx(method="tracing")` against Keras's own `model.export`.

Measured side by side in one run (`python -m bench export_tracing [--quick]`) on the same
functional model built from our layers: TokenAndPositionEmbedding (vocab 8000, d_model 256,
learned positions 128) + 4 EncoderBlocks (4 heads, d_ff 1024) + a Dense head.

* export wall time: ours (tf2onnx conversion, graph clean-up, checker, validation sweep
  included) and ours with `validate=False`, against `model.export(path, format="onnx")`;
* node counts by op type, input/output names and dim names of both files;
* onnxruntime latency (CPU, all optimisations) of both files at 1 x 128 and 8 x 128, as a ratio.

Results go to `bench/results/export_tracing.json`.
"""

import collections
import os
import tempfile
import time

from bench import common

VOCAB, LAYERS, D_MODEL, HEADS, D_FF, MAX_LENGTH = 8000, 4, 256, 4, 1024, 128


def build_model():
    import keras

    from keras_transformer import layers

    ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = layers.TokenAndPositionEmbedding(VOCAB, D_MODEL, max_length=MAX_LENGTH, positional="learned",
                                         mask_zero=True)(ids)
    for i in range(LAYERS):
        x = layers.EncoderBlock(HEADS, D_FF, dropout=0.0, name=f"encoder_block_{i}")(x)
    logits = keras.layers.Dense(8, name="logits")(x)
    return keras.Model({"token_ids": ids}, logits, name="encoder_4x256")


def timed(fn):
    """`((result, wall seconds), process CPU seconds)`: CPU time is what sharing distorts least."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return (result, time.perf_counter() - wall), time.process_time() - cpu


def build_inputs():
    import numpy as np

    return {"token_ids": np.ones((1, 8), np.int32)}


def describe(path):
    import onnx

    proto = onnx.load(path)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    counts = collections.Counter(node.op_type for node in proto.graph.node)
    return {
        "nodes": len(proto.graph.node),
        "top_ops": dict(counts.most_common(12)),
        "layer_norm_nodes": counts.get("LayerNormalization", 0),
        "inputs": {i.name: dims(i) for i in proto.graph.input},
        "outputs": {o.name: dims(o) for o in proto.graph.output},
        "bytes": os.path.getsize(path),
    }


def latency(path, batch, repeats):
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed_name = session.get_inputs()[0].name
    ids = np.random.default_rng(0).integers(1, VOCAB, (batch, MAX_LENGTH)).astype(np.int32)
    seconds, _ = common.time_call(lambda: session.run(None, {feed_name: ids}), repeats=repeats, warmup=2)
    return seconds


def main(argv=()):
    import export

    repeats = 5 if "--quick" in argv else 20
    model = build_model()
    results = {"machine": common.machine_info(), "note": "shared 2-core machine; compare ratios only",
               "model": f"{LAYERS} x EncoderBlock d_model {D_MODEL}, vocab {VOCAB}"}
    with tempfile.TemporaryDirectory() as root:
        ours, ours_fast, keras_path = (os.path.join(root, n) for n in ("ours.onnx", "ours_nv.onnx", "keras.onnx"))
        import tf2onnx  # noqa: F401 - import cost paid before either timing

        try:  # Keras's exporter refuses a functional model that was never called.
            model.export(keras_path, format="onnx", verbose=False)
            results["keras_accepts_uncalled_model"] = True
        except ValueError as error:
            results["keras_accepts_uncalled_model"] = f"no: {error}"
        cpu = {}
        (report, ours_seconds), cpu["ours_validated"] = timed(
            lambda: export.to_onnx(model, ours, method="tracing"))  # never called: fine for us
        model(build_inputs())  # now Keras can export it
        (_, keras_seconds), cpu["keras_model_export"] = timed(
            lambda: model.export(keras_path, format="onnx", verbose=False))
        (_, ours_fast_seconds), cpu["ours_no_validate"] = timed(
            lambda: export.to_onnx(model, ours_fast, method="tracing", validate=False))
        results["export_seconds"] = {"keras_model_export": keras_seconds, "ours_validated": ours_seconds,
                                     "ours_no_validate": ours_fast_seconds, "ours_steps": report.timings}
        results["export_cpu_seconds"] = cpu
        results["graphs"] = {"ours": describe(ours), "keras": describe(keras_path)}
        results["latency_seconds"] = {
            f"batch{b}x{MAX_LENGTH}": {"ours": latency(ours, b, repeats), "keras": latency(keras_path, b, repeats)}
            for b in (1, 8)
        }
    rows = [
        ("export time (s)", f"{ours_seconds:.1f} (validated) / {ours_fast_seconds:.1f}", f"{keras_seconds:.1f}"),
        ("export CPU time (s)", f"{cpu['ours_validated']:.1f} (validated) / {cpu['ours_no_validate']:.1f}",
         f"{cpu['keras_model_export']:.1f}"),
        ("nodes", results["graphs"]["ours"]["nodes"], results["graphs"]["keras"]["nodes"]),
        ("LayerNormalization nodes", results["graphs"]["ours"]["layer_norm_nodes"],
         results["graphs"]["keras"]["layer_norm_nodes"]),
        ("inputs", results["graphs"]["ours"]["inputs"], results["graphs"]["keras"]["inputs"]),
        ("outputs", results["graphs"]["ours"]["outputs"], results["graphs"]["keras"]["outputs"]),
    ]
    for shape, pair in results["latency_seconds"].items():
        rows.append((f"ORT latency {shape} (ms)", f"{1e3 * pair['ours']:.2f}", f"{1e3 * pair['keras']:.2f}"))
    common.print_table("to_onnx (tracing) vs keras model.export(format='onnx')", ["", "ours", "keras"], rows)
    print("ours:", results["graphs"]["ours"]["top_ops"])
    print("keras:", results["graphs"]["keras"]["top_ops"])
    path = common.write_json("export_tracing", results)
    print("wrote", path)
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
