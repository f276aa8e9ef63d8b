"""Tiny models and deterministic data shared by the worker scripts (run as subprocesses).

Each builder returns a compiled-ready `keras.Model` plus a `tf.data.Dataset` of
`(inputs, labels)` batches of `GLOBAL_BATCH` examples, in a fixed order (no shuffling), so that
two runs that see the same global batches must compute the same losses and weights.
"""

import numpy as np

VOCAB, LENGTH, D_MODEL, NUM_HEADS, D_FF = 24, 8, 16, 2, 32
EXAMPLES, GLOBAL_BATCH = 16, 8


def _token_ids(seed, shape):
    return np.random.default_rng(seed).integers(1, VOCAB, size=shape).astype("int32")


def layers_model():
    """A functional model built from the layers alone (available before the model classes)."""
    import keras

    from keras_transformer.layers import EncoderBlock, TokenAndPositionEmbedding

    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = TokenAndPositionEmbedding(VOCAB, D_MODEL)(token_ids)
    x = EncoderBlock(NUM_HEADS, D_FF, dropout=0.0)(x)
    logits = keras.layers.Dense(VOCAB, name="logits")(x)
    return keras.Model({"token_ids": token_ids}, logits)


def _model_class(name):
    from keras_transformer import models  # imported lazily: written by another engineer

    return getattr(models, name)


def decoder_only():
    return _model_class("DecoderOnlyTransformer")(
        vocab_size=VOCAB, num_layers=1, d_model=D_MODEL, num_heads=NUM_HEADS, d_ff=D_FF,
        dropout=0.0, max_length=LENGTH,
    )


def encoder_only():
    return _model_class("EncoderOnlyTransformer")(
        vocab_size=VOCAB, num_layers=1, d_model=D_MODEL, num_heads=NUM_HEADS, d_ff=D_FF,
        dropout=0.0, max_length=LENGTH, head="classification", num_classes=3,
    )


def encoder_decoder():
    return _model_class("EncoderDecoderTransformer")(
        vocab_size=VOCAB, num_encoder_layers=1, num_decoder_layers=1, d_model=D_MODEL,
        num_heads=NUM_HEADS, d_ff=D_FF, dropout=0.0, max_length=LENGTH,
    )


BUILDERS = {
    "layers_model": layers_model,
    "decoder_only": decoder_only,
    "encoder_only": encoder_only,
    "encoder_decoder": encoder_decoder,
}


def arrays(name):
    """Deterministic `(inputs, labels)` numpy arrays for the model `name`."""
    ids = _token_ids(0, (EXAMPLES, LENGTH))
    if name == "encoder_decoder":
        inputs = {"encoder_token_ids": ids, "decoder_token_ids": _token_ids(1, (EXAMPLES, LENGTH))}
        return inputs, _token_ids(2, (EXAMPLES, LENGTH))
    if name == "encoder_only":
        return {"token_ids": ids}, np.arange(EXAMPLES, dtype="int32") % 3
    return {"token_ids": ids}, _token_ids(3, (EXAMPLES, LENGTH))


def dataset(name):
    import tensorflow as tf

    inputs, labels = arrays(name)
    return tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(GLOBAL_BATCH)


def build(name, seed=1234):
    """Build and compile `name` in the current distribution scope, with seeded weights."""
    import keras

    keras.utils.set_random_seed(seed)
    model = BUILDERS[name]()
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def loss_recorder():
    """A Keras callback that records the running loss after every batch in `.losses`."""
    import keras

    class LossRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    return LossRecorder()
