"""Which standard-library package does this docstring come from? An encoder-only classifier.

A real-text task built from local data: docstrings of `asyncio`, `email`, `http`, `importlib`,
`logging`, `unittest` and `xml` (collected at run time, `_stdlib_text.py`), a BPE tokenizer
trained locally on the training split, and a BERT-style encoder with a classification head.
Reports held-out accuracy, saves a confusion-matrix PNG and training curves, exports to ONNX
and serves the held-out set with an onnxruntime session.

    python examples/classify.py            # ~1-2 minutes on 2 CPU cores
    python examples/classify.py --smoke    # a few steps, for tests
"""

import argparse
import os
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import _stdlib_text as stdlib_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="artifacts/classify", help="output folder")
    parser.add_argument("--vocab-size", type=int, default=2000, help="BPE vocabulary size")
    parser.add_argument("--length", type=int, default=64, help="tokens kept per docstring")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=128)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.vocab_size, args.length, args.epochs, args.batch_size = 300, 16, 1, 16
        args.d_model, args.layers, args.heads, args.d_ff = 16, 1, 2, 32
    return args


def load_examples(seed=0, test_fraction=0.2, per_class=None):
    """`(train, test, labels)`: lists of `(text, class_id)`, split per class (stratified)."""
    groups = stdlib_text.docstrings_by_package()
    labels = list(groups)
    rng = random.Random(seed)
    train, test = [], []
    for class_id, package in enumerate(labels):
        texts = list(groups[package])
        rng.shuffle(texts)
        texts = texts[:per_class] if per_class else texts
        cut = max(1, int(len(texts) * test_fraction))
        test += [(t, class_id) for t in texts[:cut]]
        train += [(t, class_id) for t in texts[cut:]]
    rng.shuffle(train)
    return train, test, labels


def encode(tokenizer, texts, length):
    """Token ids `(N, length)`: the first `length` tokens, right-padded with `<pad>` (id 0)."""
    ids = np.zeros((len(texts), length), dtype="int32")
    for row, encoding in enumerate(tokenizer.encode_batch(list(texts))):
        kept = encoding.ids[:length]
        ids[row, : len(kept)] = kept
    return ids


def build_and_compile(args, vocab_size, num_classes):
    import keras

    from keras_transformer.models import EncoderOnlyTransformer

    model = EncoderOnlyTransformer(
        vocab_size=vocab_size, num_layers=args.layers, d_model=args.d_model, num_heads=args.heads,
        d_ff=args.d_ff, dropout=0.1, head="classification", num_classes=num_classes,
        pooling="mean", pad_id=0, name="docstring_classifier",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def confusion_matrix(true, predicted, num_classes):
    matrix = np.zeros((num_classes, num_classes), dtype="int64")
    np.add.at(matrix, (np.asarray(true), np.asarray(predicted)), 1)
    return matrix


def serve_with_onnxruntime(model, path, ids, log=print):
    """Export, then predict `ids` with a plain onnxruntime session. Returns class ids or None."""
    try:
        from export import to_onnx
    except ImportError as error:
        log(f"ONNX step skipped: export.to_onnx is not available ({error}).")
        return None
    import onnxruntime

    to_onnx(model, path, overwrite=True)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: ids})
    return np.argmax(logits, axis=-1)


def main(argv=None):
    args = parse_args(argv)
    from keras_transformer.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # before Keras: TensorFlow without its known start-up noise
    import keras

    from keras_transformer.visualize import plot_confusion_matrix, plot_training_curves

    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    train, test, labels = load_examples(per_class=40 if args.smoke else None)
    tokenizer = stdlib_text.train_tokenizer([t for t, _ in train], args.vocab_size)
    x_train, y_train = encode(tokenizer, [t for t, _ in train], args.length), np.array([c for _, c in train])
    x_test, y_test = encode(tokenizer, [t for t, _ in test], args.length), np.array([c for _, c in test])
    print(f"{len(train)} training and {len(test)} test docstrings from {len(labels)} packages "
          f"({time.perf_counter() - start:.1f} s); majority-class accuracy "
          f"{np.bincount(y_test).max() / len(y_test):.1%}")

    model = build_and_compile(args, tokenizer.get_vocab_size(), len(labels))
    history = model.fit({"token_ids": x_train}, y_train, validation_data=({"token_ids": x_test}, y_test),
                        batch_size=args.batch_size, epochs=args.epochs, verbose=0 if args.smoke else 2)
    predicted = np.argmax(model.predict({"token_ids": x_test}, verbose=0), axis=-1)
    print(f"Test accuracy: {np.mean(predicted == y_test):.1%}")

    os.makedirs(args.output, exist_ok=True)
    paths = {name: os.path.join(args.output, file) for name, file in (
        ("model", "docstring_classifier.keras"), ("tokenizer", "tokenizer.json"),
        ("curves", "training_curves.png"), ("confusion", "confusion_matrix.png"))}
    model.save(paths["model"])
    tokenizer.save(paths["tokenizer"])
    plot_training_curves(history, paths["curves"], title="docstring classifier")
    plot_confusion_matrix(confusion_matrix(y_test, predicted, len(labels)), labels, paths["confusion"],
                          title="which package wrote this docstring?")
    print("Saved " + ", ".join(paths.values()))
    if not args.no_onnx:
        served = serve_with_onnxruntime(model, os.path.join(args.output, "docstring_classifier.onnx"), x_test)
        if served is not None:
            agreement = np.mean(served == predicted)
            print(f"onnxruntime: accuracy {np.mean(served == y_test):.1%}, "
                  f"{agreement:.1%} of predictions identical to Keras")
            if agreement < 0.99:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
