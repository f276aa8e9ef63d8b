"""Extend a layer: an `EncoderBlock` with gated residual connections, trained, saved, reloaded
and exported.

`GatedEncoderBlock` subclasses `keras_transformer.layers.EncoderBlock` and overrides only its
`residual` hook: each sub-layer's output passes through a learned, input-dependent gate,
`x + sigmoid(x W_g + b_g) * Dropout(F(x))` (the gating of GTrXL, Parisotto et al. 2019), then
the usual LayerNorm. Everything else (masks, attention, feed-forward, config) is inherited.
The model classifies docstrings by package (the task of `classify.py`), is saved as `.keras`,
reloaded from the file, and exported to ONNX through the generic (tf2onnx) path, which has
never heard of this layer; the ONNX outputs are compared with Keras.

    python examples/custom_layer.py            # ~1-2 minutes on 2 CPU cores
    python examples/custom_layer.py --smoke    # a few steps, for tests
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_transformer.layers import EncoderBlock, TokenAndPositionEmbedding, padding_mask  # noqa: E402


@keras.saving.register_keras_serializable(package="examples")
class GatedEncoderBlock(EncoderBlock):
    """An `EncoderBlock` whose residual branches are scaled by a learned sigmoid gate.

    Args:
        gate_bias: initial bias of the gates; 2.0 starts them ~0.88 open, close to the plain
            residual, so training begins like a standard Transformer.
        *args, **kwargs: as `EncoderBlock`.

    Example:
    >>> block = GatedEncoderBlock(num_heads=2, d_ff=32)
    >>> block(keras.random.normal((2, 7, 16))).shape
    (2, 7, 16)
    """

    def __init__(self, *args, gate_bias=2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate_bias = float(gate_bias)

    def build(self, input_shape):
        super().build(input_shape)
        width = input_shape[-1]
        self.self_attention_gate, self.feed_forward_gate = (
            keras.layers.Dense(width, activation="sigmoid", dtype=self.dtype_policy, name=name,
                               bias_initializer=keras.initializers.Constant(self.gate_bias))
            for name in ("self_attention_gate", "feed_forward_gate")
        )
        self.self_attention_gate.build(input_shape)
        self.feed_forward_gate.build(input_shape)

    def residual(self, x, sublayer, norm, dropout, training=None):
        gate = self.self_attention_gate if norm is self.self_attention_norm else self.feed_forward_gate
        inputs = norm(x) if self.norm_first else x
        x = x + gate(inputs) * dropout(sublayer(inputs), training=training)
        return (x if self.norm_first else norm(x)), ()

    def get_config(self):
        config = super().get_config()
        config.update(gate_bias=self.gate_bias)
        return config


def build_classifier(vocab_size, num_classes, d_model, num_layers, num_heads, d_ff):
    """token ids -> embeddings -> gated encoder blocks -> masked mean pooling -> class logits."""
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    mask = padding_mask(token_ids)
    x = TokenAndPositionEmbedding(vocab_size, d_model, dropout=0.1)(token_ids)
    for i in range(num_layers):
        x = GatedEncoderBlock(num_heads, d_ff, dropout=0.1, name=f"gated_encoder_block_{i}")(x, padding_mask=mask)
    pooled = keras.layers.GlobalAveragePooling1D()(x, mask=mask)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model({"token_ids": token_ids}, logits, name="gated_classifier")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="artifacts/custom_layer", help="output folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--length", type=int, default=64, help="tokens kept per docstring")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (tests)")
    args = parser.parse_args(argv)
    args.sizes = dict(d_model=64, num_layers=2, num_heads=4, d_ff=128)
    args.vocab_size = 2000
    if args.smoke:
        args.epochs, args.length, args.vocab_size = 1, 16, 300
        args.sizes = dict(d_model=16, num_layers=1, num_heads=2, d_ff=32)
    return args


def main(argv=None):
    from keras_transformer.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # before Keras: TensorFlow without its known start-up noise
    import classify  # the docstring data set and tokenizer helpers
    import _stdlib_text as stdlib_text

    from keras_transformer.visualize import plot_training_curves

    args = parse_args(argv)
    keras.utils.set_random_seed(0)
    train, test, labels = classify.load_examples(per_class=40 if args.smoke else None)
    tokenizer = stdlib_text.train_tokenizer([t for t, _ in train], args.vocab_size)
    x_train = classify.encode(tokenizer, [t for t, _ in train], args.length)
    x_test = classify.encode(tokenizer, [t for t, _ in test], args.length)
    y_train, y_test = np.array([c for _, c in train]), np.array([c for _, c in test])

    model = build_classifier(tokenizer.get_vocab_size(), len(labels), **args.sizes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit({"token_ids": x_train}, y_train, validation_data=({"token_ids": x_test}, y_test),
                        batch_size=32, epochs=args.epochs, verbose=0 if args.smoke else 2)
    logits = model.predict({"token_ids": x_test}, verbose=0)
    print(f"Test accuracy with gated residuals: {np.mean(np.argmax(logits, -1) == y_test):.1%}")
    gates = [float(np.mean(keras.ops.convert_to_numpy(
        keras.activations.sigmoid(block.feed_forward_gate.bias))))
        for block in model.layers if isinstance(block, GatedEncoderBlock)]
    print("Mean feed-forward gate bias opening per block: " + ", ".join(f"{g:.2f}" for g in gates))

    os.makedirs(args.output, exist_ok=True)
    model_path = os.path.join(args.output, "gated_classifier.keras")
    curves_path = os.path.join(args.output, "training_curves.png")
    model.save(model_path)
    plot_training_curves(history, curves_path, title="classifier with GatedEncoderBlock")
    reloaded = keras.saving.load_model(model_path)
    reloaded_logits = reloaded.predict({"token_ids": x_test}, verbose=0)
    np.testing.assert_allclose(reloaded_logits, logits, rtol=1e-5, atol=1e-5)
    print(f"Saved {model_path} and {curves_path}; the reloaded model gives the same logits.")

    if not args.no_onnx:
        try:
            from export import to_onnx
        except ImportError as error:
            print(f"ONNX step skipped: export.to_onnx is not available ({error}).")
            return 0
        import onnxruntime

        onnx_path = os.path.join(args.output, "gated_classifier.onnx")
        report = to_onnx(reloaded, onnx_path, overwrite=True)
        session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: x_test})
        difference = float(np.max(np.abs(onnx_logits - logits)))
        print(f"Exported {onnx_path} ({report.method} path); "
              f"max |onnxruntime - Keras| = {difference:.2e}")
        if difference > 1e-3:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
