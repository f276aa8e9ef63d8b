"""The tour (`make demo`): train, export, compare runtimes, decode, draw, in a few minutes.

Part 1, the date translator (`translate_dates.py`): trains an encoder-decoder with the paper's
recipe, reports held-out exact match, exports to a TF SavedModel and to ONNX, prints parity
and latency for Keras vs SavedModel vs ONNX Runtime on one held-out batch, decodes examples
with Keras and with onnxruntime (KV cache), and writes its PNGs.

Part 2, one small model of each other family (encoder-only classifier, decoder-only language
model) trained briefly on toy data, exported to both formats, reloaded with
`export.runtime.OnnxModel`, with the same parity and latency table.

Everything is written under `artifacts/demo/` (git-ignored).

    python examples/demo.py            # a few minutes on 2 CPU cores
    python examples/demo.py --smoke    # tiny and fast (tests)
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import translate_dates  # noqa: E402
from _date_data import START, make_pairs, to_arrays  # noqa: E402

console = Console()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="artifacts/demo", help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (tests)")
    return parser.parse_args(argv)


def median_ms(function, repeats=20):
    function()  # warm-up (first-call tracing, session allocation)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


def first_output(outputs):
    return np.asarray(next(iter(outputs.values())) if isinstance(outputs, dict) else outputs)


def compare_runtimes(model, feeds, savedmodel_path, onnx_path, repeats=20):
    """Rows `(runtime, max |difference| vs Keras, median ms per batch)` for one batch `feeds`."""
    from export.runtime import OnnxModel
    from export.savedmodel import saved_model_runner

    runners = {
        "Keras": lambda: model.predict_on_batch(feeds),
        "SavedModel": saved_model_runner(savedmodel_path).__call__,
        "onnxruntime": OnnxModel(onnx_path).__call__,
    }
    reference = first_output(runners["Keras"]())
    rows = []
    for name, run in runners.items():
        call = run if name.startswith("Keras") else (lambda run=run: run(feeds))
        difference = float(np.max(np.abs(first_output(call()) - reference)))
        rows.append((name, difference, median_ms(call, repeats)))
    return rows


def runtime_table(title, rows_by_model):
    table = Table(title=title)
    for column in ("model", "runtime", "max |Δ| vs Keras", "ms / batch"):
        table.add_column(column, justify="left" if column in ("model", "runtime") else "right",
                         no_wrap=True)
    for model_name, rows in rows_by_model.items():
        for index, (runtime, difference, ms) in enumerate(rows):
            table.add_row(model_name if index == 0 else "", runtime, f"{difference:.1e}", f"{ms:.2f}")
    console.print(table)


def export_both(model, folder, name):
    """`export.to_savedmodel` and `export.to_onnx`, each validated against Keras before writing."""
    import export

    savedmodel_path = os.path.join(folder, f"{name}_savedmodel")
    onnx_path = os.path.join(folder, f"{name}.onnx")
    export.to_savedmodel(model, savedmodel_path, overwrite=True)
    report = export.to_onnx(model, onnx_path, overwrite=True)
    return savedmodel_path, onnx_path, report


# -- part 1 ----------------------------------------------------------------------------------


def date_translator_tour(args):
    from keras_transformer.training import shift_right

    console.rule("[bold]Part 1: the date translator (encoder-decoder)")
    folder = os.path.join(args.output, "dates")
    options = ["--output", folder] + (["--smoke"] if args.smoke else [])
    options_namespace = translate_dates.parse_args(options)
    model, _, accuracy, paths = translate_dates.train_and_evaluate(options_namespace, log=console.print)

    with console.status("Exporting to SavedModel and ONNX (each validated against Keras) ..."):
        savedmodel_path = os.path.join(folder, "savedmodel")
        import export

        export.to_savedmodel(model, savedmodel_path, overwrite=True)
        onnx_path, generation_folder = translate_dates.export_onnx(
            model, folder, log=console.print, int8_min_top1=options_namespace.int8_min_top1)

    pairs = make_pairs(32, seed=1)
    sources, targets = (np.array(a, dtype="int32") for a in to_arrays(pairs))
    feeds = {"encoder_token_ids": sources,
             "decoder_token_ids": shift_right(targets, start_id=START)}
    rows = compare_runtimes(model, feeds, savedmodel_path, onnx_path, repeats=5 if args.smoke else 20)
    runtime_table("Keras vs SavedModel vs ONNX Runtime\n(logits of 32 held-out dates, teacher forcing)",
                  {"date translator": rows})

    texts, references = zip(*translate_dates.EXAMPLES)
    keras_out = translate_dates.translate(model, list(texts))
    onnx_out = translate_dates.decode_with_onnx(generation_folder, list(texts)) if generation_folder else None
    table = Table(title=f"Greedy decoding (held-out exact match {accuracy:.1%}; ✓ right, ✗ wrong)")
    for column in ("written by a person", "Keras .generate", "onnxruntime (KV cache)"):
        table.add_column(column)
    for index, (text, iso) in enumerate(zip(texts, references)):
        onnx_cell = translate_dates.marked(onnx_out[index], iso) if onnx_out else "-"
        table.add_row(text, translate_dates.marked(keras_out[index], iso), onnx_cell)
    console.print(table)
    wrong = sum(p != iso for p, iso in zip(keras_out, references))
    console.print(f"{len(texts) - wrong} of {len(texts)} examples right in Keras"
                  + (f", {sum(p == iso for p, iso in zip(onnx_out, references))} in onnxruntime" if onnx_out else ""))
    console.print(f"PNGs: {paths['curves']}, {paths['attention']}")


# -- part 2 ----------------------------------------------------------------------------------


def toy_data(family, rng, count, length, vocab):
    """Encoder-only: is the sequence sorted? Decoder-only: continue an arithmetic sequence."""
    if family == "encoder-only":
        ids = rng.integers(3, vocab, (count, length)).astype("int32")
        ids[: count // 2] = np.sort(ids[: count // 2], axis=1)
        labels = (np.diff(ids, axis=1) >= 0).all(axis=1).astype("int32")
        return {"token_ids": ids}, labels
    starts = rng.integers(3, vocab, (count, 1))
    steps = rng.integers(1, 4, (count, 1))
    ids = (3 + (starts - 3 + steps * np.arange(length + 1)) % (vocab - 3)).astype("int32")
    return {"token_ids": ids[:, :-1]}, ids[:, 1:]


def families_tour(args):
    import keras

    from keras_transformer import training
    from keras_transformer.models import DecoderOnlyTransformer, EncoderOnlyTransformer
    from keras_transformer.visualize import plot_training_curves

    console.rule("[bold]Part 2: one small model of each other family")
    folder = os.path.join(args.output, "families")
    sizes = dict(d_model=16, num_heads=2, d_ff=32, num_layers=1) if args.smoke else \
        dict(d_model=64, num_heads=4, d_ff=128, num_layers=2)
    vocab, length = 32, 16
    rng = np.random.default_rng(0)
    models = {
        "encoder-only": EncoderOnlyTransformer(vocab, head="classification", num_classes=2, dropout=0.0,
                                               name="encoder_only", **sizes),
        "decoder-only": DecoderOnlyTransformer(vocab, dropout=0.0, name="decoder_only", **sizes),
    }
    rows_by_model = {}
    for family, model in models.items():
        x, y = toy_data(family, rng, 256 if args.smoke else 2048, length, vocab)
        if family == "encoder-only":
            loss, metric = keras.losses.SparseCategoricalCrossentropy(from_logits=True), "accuracy"
        else:
            loss, metric = training.MaskedSparseCategoricalCrossentropy(label_smoothing=0.0), training.MaskedAccuracy()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=[metric])
        history = model.fit(x, y, batch_size=64, epochs=1 if args.smoke else 3, verbose=0,
                            validation_split=0.1)
        final = {k: v[-1] for k, v in history.history.items()}
        console.print(f"{family}: trained, " + ", ".join(f"{k} {v:.3f}" for k, v in final.items()))
        name = family.replace("-", "_")
        curves = plot_training_curves(history, os.path.join(folder, f"{name}_training_curves.png"), title=family)
        console.print(f"  training curves: {curves}")
        with console.status(f"Exporting the {family} model ..."):
            savedmodel_path, onnx_path, report = export_both(model, folder, name)
        console.print(f"  exported {name}_savedmodel/ and {name}.onnx ({report.method} ONNX graph)")
        batch = {k: v[:16] for k, v in x.items()}
        rows_by_model[family] = compare_runtimes(
            model, batch, savedmodel_path, onnx_path, repeats=5 if args.smoke else 20)
    runtime_table("Keras vs SavedModel vs ONNX Runtime\n(logits of one batch of 16 x 16 tokens)", rows_by_model)


def main(argv=None):
    args = parse_args(argv)
    from keras_transformer.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # before Keras: TensorFlow without its known start-up noise
    import keras

    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    date_translator_tour(args)
    families_tour(args)
    console.rule(f"Done in {time.perf_counter() - start:.0f} s; everything is under {args.output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
