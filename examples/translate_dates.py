"""Translate dates written by people ("Sat, 5 March 2021", "03/05/21", "5th of March 2021")
into ISO 8601 ("2021-03-05") with an encoder-decoder Transformer.

The whole recipe of "Attention Is All You Need" at toy scale: character vocabulary, post-norm
encoder-decoder, Adam(0.9, 0.98, 1e-9) with the Noam learning-rate schedule, label smoothing
0.1, greedy decoding. Data is generated with the standard library (`_date_data.py`).

It reports exact-match accuracy on held-out dates, saves the model, a training-curve PNG and a
cross-attention heat map, exports to ONNX and decodes with `export.runtime` in a separate
process that never imports TensorFlow.

    python examples/translate_dates.py              # ~2-4 minutes on 2 CPU cores
    python examples/translate_dates.py --smoke      # a few steps, for tests
    python examples/translate_dates.py --decode-onnx artifacts/translate_dates/generation "5th of March 2021"
"""

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _date_data as dates  # noqa: E402  (standard library only)

# (written by a person, the right ISO date): the rows the demo decodes and marks right or wrong
EXAMPLES = (("Sat, 5 March 2021", "2021-03-05"), ("03/05/21", "2021-03-05"), ("5th of March 2021", "2021-03-05"),
            ("July 4, 1976", "1976-07-04"), ("the 1st of january, 2000", "2000-01-01"),
            ("31.12.1999", "1999-12-31"), ("1976-07-04", "1976-07-04"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="artifacts/translate_dates", help="output folder")
    parser.add_argument("--train-size", type=int, default=12000, help="training pairs")
    parser.add_argument("--test-size", type=int, default=1000, help="held-out pairs")
    # 8 epochs left digit slips ("July 4, 1976" -> 1967-07-04) at 99.4%; see per_format_accuracy
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=200, help="Noam warm-up steps")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (tests)")
    parser.add_argument("--decode-onnx", metavar="FOLDER",
                        help="only decode TEXTS with exported generation graphs (no TensorFlow)")
    parser.add_argument("texts", nargs="*", help="dates to translate with --decode-onnx")
    parser.add_argument("--int8-min-top1", type=float, default=None,
                        help="int8 export: top-1 agreement with Keras it must reach (default 0.99)")
    args = parser.parse_args(argv)
    if args.smoke:
        # two epochs on 256 pairs leave near-tied logits that int8 reorders: the smoke run checks
        # the gate's plumbing at a low threshold unless one is given
        args.int8_min_top1 = 0.5 if args.int8_min_top1 is None else args.int8_min_top1
        args.train_size, args.test_size, args.epochs, args.batch_size = 256, 32, 2, 64
        args.d_model, args.layers, args.heads, args.d_ff, args.warmup = 16, 1, 2, 32, 10
    return args


# -- model and training (TensorFlow side) -----------------------------------------------------


def build_model(args):
    from keras_transformer.models import EncoderDecoderTransformer

    return EncoderDecoderTransformer(
        vocab_size=dates.VOCAB_SIZE, num_encoder_layers=args.layers,
        num_decoder_layers=args.layers, d_model=args.d_model, num_heads=args.heads,
        d_ff=args.d_ff, dropout=args.dropout, pad_id=dates.PAD, name="date_translator",
        # the longest input it serves: validation sweeps, generation and deployment follow it
        max_length=dates.SOURCE_LENGTH,
    )


def compile_with_paper_recipe(model, d_model, warmup):
    """Adam(0.9, 0.98, 1e-9) + Noam schedule, label-smoothed loss and accuracy ignoring padding."""
    from keras_transformer import training

    model.compile(
        optimizer=training.paper_optimizer(d_model, warmup_steps=warmup),
        loss=training.MaskedSparseCategoricalCrossentropy(label_smoothing=0.1, pad_id=dates.PAD),
        metrics=[training.MaskedAccuracy(pad_id=dates.PAD, name="accuracy")],
    )


def as_dataset(pairs, batch_size, shuffle):
    import numpy as np
    import tensorflow as tf

    from keras_transformer.training import shift_right

    sources, targets = (np.array(a, dtype="int32") for a in dates.to_arrays(pairs))
    decoder_inputs = shift_right(targets, start_id=dates.START, pad_id=dates.PAD)
    data = tf.data.Dataset.from_tensor_slices(
        ({"encoder_token_ids": sources, "decoder_token_ids": decoder_inputs}, targets)
    )
    if shuffle:
        data = data.shuffle(len(pairs), seed=0)
    return data.batch(batch_size).prefetch(2)


def translate(model, texts):
    """Greedy decoding with the model's KV cache; returns ISO strings."""
    import numpy as np

    sources = np.array([dates.encode(t, dates.SOURCE_LENGTH) for t in texts], dtype="int32")
    ids = model.generate(sources, max_length=dates.TARGET_LENGTH, start_id=dates.START, end_id=dates.END)
    return [dates.decode(row) for row in ids]


def exact_match(model, pairs, batch_size=256):
    predictions = []
    for start in range(0, len(pairs), batch_size):
        predictions += translate(model, [t for t, _ in pairs[start:start + batch_size]])
    hits = sum(p == iso for p, (_, iso) in zip(predictions, pairs))
    return hits / len(pairs), predictions


def per_format_accuracy(pairs, predictions):
    """`{format example: (right, total)}` over `pairs` (text, iso) and their predicted ISO dates."""
    counts = {}
    for (text, iso), prediction in zip(pairs, predictions):
        example = dates.format_of(text, iso)
        right, total = counts.get(example, (0, 0))
        counts[example] = (right + (prediction == iso), total + 1)
    return counts


def marked(prediction, iso):
    """A decoded date with a mark: right, or wrong with the right answer."""
    return f"{prediction}  ✓" if prediction == iso else f"{prediction}  ✗ (want {iso})"


def save_attention_map(model, text, prediction, path):
    """Cross-attention of the last decoder block while it produces `prediction` for `text`."""
    import numpy as np

    from keras_transformer.visualize import capture_attention, plot_attention

    layer = model.decoder_blocks[-1].cross_attention_layer
    source = np.array([dates.encode(text, dates.SOURCE_LENGTH)], dtype="int32")
    target = np.array([[dates.START] + dates.encode(prediction, len(prediction))], dtype="int32")
    (scores,) = capture_attention(
        model, {"encoder_token_ids": source, "decoder_token_ids": target}, [layer]
    )
    # Rows: the decoder's input position i predicts output character i; columns: real source chars.
    scores = scores[0][:, : len(prediction), : len(text)]
    return plot_attention(scores, list(text), list(prediction), path,
                          title=f"{text!r} -> {prediction!r} (last decoder block, cross-attention)",
                          key_title="source characters", query_title="output characters")


def train_and_evaluate(args, log=print):
    """Train, evaluate, save model + PNGs. Returns `(model, history, accuracy, paths)`."""
    import keras

    from keras_transformer.visualize import plot_training_curves

    keras.utils.set_random_seed(0)
    test_pairs = dates.make_pairs(args.test_size, seed=1)
    train_pairs = dates.make_pairs(args.train_size, seed=0, exclude=[t for t, _ in test_pairs])
    model = build_model(args)
    compile_with_paper_recipe(model, args.d_model, args.warmup)
    log(f"Training on {len(train_pairs)} pairs, {model.count_params():,} parameters ...")
    start = time.perf_counter()
    history = model.fit(
        as_dataset(train_pairs, args.batch_size, shuffle=True),
        validation_data=as_dataset(test_pairs, args.batch_size, shuffle=False),
        epochs=args.epochs, verbose=0 if args.smoke else 2, shuffle=False,  # tf.data shuffles
    )
    log(f"  trained in {time.perf_counter() - start:.0f} s")
    accuracy, predictions = exact_match(model, test_pairs)
    log(f"Exact match on {len(test_pairs)} held-out dates: {accuracy:.1%}; per input format:")
    for example, (right, total) in sorted(per_format_accuracy(test_pairs, predictions).items(),
                                          key=lambda item: item[1][0] / item[1][1]):
        log(f"  {example!r:28} {right / total:6.1%}  ({right}/{total})")
    os.makedirs(args.output, exist_ok=True)
    paths = {
        "model": os.path.join(args.output, "date_translator.keras"),
        "curves": os.path.join(args.output, "training_curves.png"),
        "attention": os.path.join(args.output, "attention.png"),
    }
    model.save(paths["model"])
    plot_training_curves(history, paths["curves"], title="date translator")
    text = EXAMPLES[0][0]
    save_attention_map(model, text, translate(model, [text])[0], paths["attention"])
    return model, history, accuracy, paths


def export_onnx(model, folder, log=print, int8_min_top1=None):
    """Write `date_translator.onnx` (the full forward graph, validated against Keras by
    `export.to_onnx`), its int8 form `date_translator.int8.onnx` (gated by top-1 agreement with
    Keras, `int8_min_top1`, default 99%) and `generation/` (encoder + cached decoder graphs).

    Returns:
        `(onnx_path, generation_folder)`; either is None when that export API is missing.
    """
    generation_folder = None
    try:
        import export
        from export import native
    except ImportError as error:
        log(f"ONNX export skipped: the export package is not available ({error}).")
        return None, None
    onnx_path = os.path.join(folder, "date_translator.onnx")
    report = export.to_onnx(model, onnx_path, overwrite=True)
    log(f"Exported {onnx_path} ({report.method} graph, validated against Keras)")
    int8_path = os.path.join(folder, "date_translator.int8.onnx")
    try:
        int8 = export.to_onnx(model, int8_path, precision="int8", min_top1=int8_min_top1, overwrite=True)
        log(f"Exported {int8_path} (int8 weights, top-1 agreement with Keras {int8.validation.agreement:.2%} over "
            f"the validation sweep up to the model's max_length={model.max_length})")
    except export.ExportValidationError as error:
        log(f"int8 export refused: {error}")
    if hasattr(native, "save_generation_graphs"):
        generation_folder = os.path.join(folder, "generation")
        native.save_generation_graphs(model, generation_folder, overwrite=True)
        log(f"Exported KV-cache generation graphs to {generation_folder}/")
    else:
        log("Generation graphs skipped: export.native.save_generation_graphs is not available.")
    return onnx_path, generation_folder


# -- ONNX decoding (no TensorFlow) ------------------------------------------------------------


def decode_with_onnx(folder, texts):
    """Greedy decoding with the cached ONNX graphs in onnxruntime; never imports TensorFlow."""
    import numpy as np

    from export.decoding import generate

    sources = np.array([dates.encode(t, dates.SOURCE_LENGTH) for t in texts], dtype="int32")
    ids = generate(folder, sources, max_length=dates.TARGET_LENGTH, start_id=dates.START, end_id=dates.END)
    return [dates.decode(row) for row in ids]


def run_onnx_subprocess(path, texts, log=print):
    """Decode in a fresh Python process (proves the deployed path needs no TensorFlow)."""
    command = [sys.executable, os.path.abspath(__file__), "--decode-onnx", path, "--", *texts]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        log(f"ONNX decoding failed:\n{result.stderr.strip()[-2000:]}")
        return None
    log(result.stdout.rstrip())
    return result.stdout


def main(argv=None):
    args = parse_args(argv)
    if args.decode_onnx:
        references = dict(EXAMPLES)
        for text, prediction in zip(args.texts, decode_with_onnx(args.decode_onnx, args.texts)):
            shown = marked(prediction, references[text]) if text in references else prediction
            print(f"  {text!r:32} -> {shown}")
        assert "tensorflow" not in sys.modules, "the ONNX path must not import TensorFlow"
        print("  (onnxruntime only: TensorFlow was never imported in this process)")
        return 0
    from keras_transformer.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # before Keras: TensorFlow without its known start-up noise
    model, _, _, paths = train_and_evaluate(args)
    texts = [text for text, _ in EXAMPLES]
    for (text, iso), prediction in zip(EXAMPLES, translate(model, texts)):
        print(f"  {text!r:32} -> {marked(prediction, iso)}")
    print(f"Saved {paths['model']}, {paths['curves']}, {paths['attention']}")
    if not args.no_onnx:
        _, generation_folder = export_onnx(model, args.output, int8_min_top1=args.int8_min_top1)
        if generation_folder:
            print("Decoding with onnxruntime in a separate process:")
            if run_onnx_subprocess(generation_folder, texts) is None:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
