"""Every bad input we know of, in one table: each gives a clear error naming the problem (or a
documented, tested result), never a traceback from deep inside TensorFlow or onnxruntime, never a
silently wrong answer.

Each case is `(id, action, expected exception type, regex the message must match)`; `action`
receives a `Kit` of tiny objects built once per module. Documented results (empty batches,
zero-length sequences, NaN) are separate tests at the end, as are the CLI cases.
"""

import functools
import os
import pickle
import re
import tempfile
import zipfile

import keras
import numpy as np
import pytest

from keras_transformer import saving
from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    MultiHeadAttention,
    PositionalEncoding,
    TokenAndPositionEmbedding,
)
from keras_transformer.models import DecoderOnlyTransformer, EncoderOnlyTransformer

VOCAB, D_MODEL, MAX_LENGTH = 30, 16, 8
IDS = np.array([[3, 4, 5, 6], [7, 8, 9, 1]], dtype="int32")
X = np.random.default_rng(0).normal(size=(2, 4, D_MODEL)).astype("float32")


class Kit:
    """Tiny built layers, a model, its `.keras`/`.onnx` files and broken variants, in `root`."""

    def __init__(self, root):
        self.root = root
        self.attention = MultiHeadAttention(2)
        self.attention(X)
        self.encoder = EncoderBlock(2, 32, dropout=0.0)
        self.encoder(X)
        self.decoder = DecoderBlock(2, 32, dropout=0.0)
        self.decoder(X, X)
        self.embedding = TokenAndPositionEmbedding(VOCAB, D_MODEL, max_length=MAX_LENGTH, positional="learned")
        self.embedding(IDS)
        self.model = DecoderOnlyTransformer(
            vocab_size=VOCAB, num_layers=1, d_model=D_MODEL, num_heads=2, d_ff=32, dropout=0.0,
            max_length=MAX_LENGTH, positional="learned",
        )
        self.keras_path = self.path("model.keras")
        self.model.save(self.keras_path)
        self.marker = self.path("code-was-run")

    def path(self, name):
        return os.path.join(self.root, name)

    def write(self, name, data):
        path = self.path(name)
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    @functools.cached_property
    def onnx_path(self):
        import export

        path = self.path("model.onnx")
        export.to_onnx(self.model, path, validate=False)
        return path

    @functools.cached_property
    def onnx_model(self):
        from export.runtime import OnnxModel

        return OnnxModel(self.onnx_path)

    def lambda_keras_file(self):
        """A `.keras` file whose Lambda layer would create `self.marker` if its code ran."""
        inputs = keras.Input((4,))
        marker = self.marker
        outputs = keras.layers.Lambda(lambda x: (open(marker, "w").close(), x)[1])(inputs)
        model = keras.Model(inputs, outputs)
        if os.path.exists(marker):  # building the model ran the lambda once: start clean
            os.remove(marker)
        path = self.path("lambda.keras")
        model.save(path)
        return path

    def pickle_file(self):
        """A pickle (not a zip) named `.keras`, which would create `self.marker` if unpickled."""
        return self.write("pickled.keras", pickle.dumps(_CreatesFile(self.marker)))

    def zip_slip_keras_file(self):
        """A valid model archive plus a member named `../escaped.txt`."""
        path = self.path("zip-slip.keras")
        with zipfile.ZipFile(self.keras_path) as source, zipfile.ZipFile(path, "w") as target:
            for item in source.infolist():
                target.writestr(item, source.read(item.filename))
            target.writestr("../escaped.txt", "outside")
        return path

    def savedmodel_dir(self):
        path = self.path("saved_model")
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, "saved_model.pb"), "wb").close()
        return path


class _CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return Kit(str(tmp_path_factory.mktemp("bad_input")))


def _keras_bytes(kit, keep):
    with open(kit.keras_path, "rb") as handle:
        data = handle.read()
    return data[: int(len(data) * keep)]


def _corrupt_member(kit):
    """Flip bytes inside the archive's compressed config (the zip directory stays intact)."""
    data = bytearray(_keras_bytes(kit, 1.0))
    start = data.index(b"config.json") + 40
    for i in range(start, start + 20):
        data[i] ^= 0xFF
    return bytes(data)


def _onnx_bytes(kit, keep):
    with open(kit.onnx_path, "rb") as handle:
        data = handle.read()
    return data[: int(len(data) * keep)]


CASES = [
    # -- layers: dtypes, ranks, shapes, masks ----------------------------------------------------
    ("attention_query_rank_2", lambda k: k.attention(X[0]), ValueError, r"`query` must have rank 3"),
    ("attention_int_query", lambda k: k.attention(IDS[..., None] * np.ones(D_MODEL, "int32")), TypeError, r"`query` must be a float tensor; received dtype int32"),
    ("attention_wrong_width", lambda k: k.attention(X[..., :8]), ValueError, r"`query` must have last dimension 16"),
    ("attention_mask_does_not_broadcast", lambda k: k.attention(X, attention_mask=np.ones((2, 4, 5), bool)), ValueError, r"`attention_mask` must broadcast to .*\(2, 4, 5\)"),
    ("attention_mask_rank_4", lambda k: k.attention(X, attention_mask=np.ones((2, 1, 4, 4), bool)), ValueError, r"`attention_mask` must have rank 2 or 3"),
    ("cache_index_without_cache", lambda k: k.attention(X, cache_index=0), ValueError, r"`cache_index` was given without a `cache`"),
    ("cache_wrong_num_heads", lambda k: k.attention(X, cache=np.zeros((2, 2, 3, 8, 8), "float32"), cache_index=0), ValueError, r"`cache` must have shape"),
    ("padding_mask_wrong_length", lambda k: k.encoder(X, padding_mask=np.ones((2, 6), bool)), ValueError, r"`padding_mask` must have shape .*received shape \(2, 6\)"),
    ("padding_mask_wrong_batch", lambda k: k.encoder(X, padding_mask=np.ones((3, 4), bool)), ValueError, r"`padding_mask` must have shape .*received shape \(3, 4\)"),
    ("encoder_input_rank_2", lambda k: k.encoder(X[0]), ValueError, r"`x` must have rank 3"),
    ("decoder_without_encoder_outputs", lambda k: k.decoder(X), ValueError, r"pass `encoder_outputs`"),
    ("token_ids_out_of_range", lambda k: k.embedding(IDS + VOCAB), ValueError, r"token ids in \[0, vocab_size=30\); received ids in \[31, 39\]"),
    ("token_ids_negative", lambda k: k.embedding(-IDS), ValueError, r"token ids in \[0, vocab_size=30\); received ids in \[-9, -1\]"),
    ("token_ids_float", lambda k: k.embedding(IDS.astype("float32") + 0.5), TypeError, r"must hold integer token ids; received dtype float32"),
    ("token_ids_rank_3", lambda k: k.embedding(IDS[..., None]), ValueError, r"`inputs` must have rank 2"),
    ("sequence_past_learned_positions", lambda k: k.embedding(np.ones((1, MAX_LENGTH + 1), "int32")), ValueError, r"covers 8 positions .*length 9"),
    ("start_index_past_learned_positions", lambda k: k.embedding(IDS, start_index=6), ValueError, r"covers 8 positions .*start_index=6"),
    # -- layer and model constructors ------------------------------------------------------------
    ("num_heads_zero", lambda k: MultiHeadAttention(0), ValueError, r"`num_heads` must be a positive integer; received num_heads=0"),
    ("dropout_one", lambda k: EncoderBlock(2, 32, dropout=1.0), ValueError, r"`dropout` must be a float in \[0, 1\); received dropout=1.0"),
    ("unknown_activation", lambda k: EncoderBlock(2, 32, activation="swishy"), ValueError, r"activation.*swishy"),
    ("unknown_positional_mode", lambda k: PositionalEncoding(mode="rotary"), ValueError, r"`mode` must be one of .*rotary"),
    ("d_model_not_divisible_by_heads", lambda k: DecoderOnlyTransformer(vocab_size=VOCAB, num_layers=1, d_model=15, num_heads=2, d_ff=32), ValueError, r"d_model=15, num_heads=2"),
    ("pad_id_out_of_vocab", lambda k: DecoderOnlyTransformer(vocab_size=VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, pad_id=VOCAB), ValueError, r"`pad_id` must be an integer in \[0, vocab_size=30\); received pad_id=30"),
    ("classification_without_num_classes", lambda k: EncoderOnlyTransformer(vocab_size=VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, head="classification"), ValueError, r"num_classes"),
    ("unknown_preset", lambda k: DecoderOnlyTransformer.from_preset("gpt5"), ValueError, r"Unknown preset name='gpt5'. Known presets: .*gpt_tiny"),
    ("preset_of_another_model_class", lambda k: DecoderOnlyTransformer.from_preset("bert_tiny"), ValueError, r"'bert_tiny' is a EncoderOnlyTransformer, not a DecoderOnlyTransformer"),
    # -- model calls and generation ----------------------------------------------------------------
    ("model_input_wrong_name", lambda k: k.model({"tokens": IDS}), ValueError, r"Missing data for input \"token_ids\""),
    ("model_token_ids_out_of_range", lambda k: k.model({"token_ids": IDS * 10}), ValueError, r"token ids in \[0, vocab_size=30\)"),
    ("model_sequence_past_max_length", lambda k: k.model({"token_ids": np.ones((1, 9), "int32")}), ValueError, r"covers 8 positions"),
    ("generate_negative_max_new_tokens", lambda k: k.model.generate(IDS, max_new_tokens=-1), ValueError, r"`max_new_tokens` must be a positive integer; received max_new_tokens=-1"),
    ("generate_past_max_length", lambda k: k.model.generate(IDS, max_new_tokens=10), ValueError, r"needs 14 positions.*max_length=8"),
    ("generate_empty_prompt", lambda k: k.model.generate(np.zeros((1, 0), "int32"), max_new_tokens=2), ValueError, r"at least one token"),
    ("generate_prompt_out_of_vocab", lambda k: k.model.generate(np.array([[1, 99]]), max_new_tokens=2), ValueError, r"vocab_size=30\); received 99"),
    ("generate_float_prompt", lambda k: k.model.generate(np.array([[1.5, 2.0]]), max_new_tokens=2), ValueError, r"`prompt_token_ids` must hold token ids \(integers, or floats with whole values\); received 1.5 at position \[0, 0\]"),
    # -- .keras files --------------------------------------------------------------------------------
    ("keras_file_missing", lambda k: saving.load_model(k.path("nope.keras")), FileNotFoundError, r"No model file at .*nope.keras"),
    ("keras_path_is_directory", lambda k: saving.load_model(k.root), IsADirectoryError, r"Expected a `.keras` model file; .* is a directory"),
    ("keras_path_is_savedmodel", lambda k: saving.load_model(k.savedmodel_dir()), IsADirectoryError, r"is a TensorFlow SavedModel directory.*TFSMLayer"),
    ("keras_file_truncated", lambda k: saving.load_model(k.write("truncated.keras", _keras_bytes(k, 0.5))), ValueError, r"truncated.keras' is not a valid `.keras` archive"),
    ("keras_file_corrupt_member", lambda k: saving.load_model(k.write("corrupt.keras", _corrupt_member(k))), ValueError, r"corrupt.keras' is not a valid `.keras` archive"),
    ("keras_file_random_bytes", lambda k: saving.load_model(k.write("noise.keras", os.urandom(2048))), ValueError, r"noise.keras' is not a valid `.keras` archive"),
    ("keras_file_is_a_pickle", lambda k: saving.load_model(k.pickle_file()), ValueError, r"pickled.keras' is not a valid `.keras` archive"),
    ("keras_file_with_lambda", lambda k: saving.load_model(k.lambda_keras_file()), ValueError, r"Refusing to load .*lambda.keras.*contains a Python lambda.*safe_mode=False"),
    ("keras_file_wrong_suffix", lambda k: saving.load_model(k.write("model.h5", b"x")), ValueError, r"Expected a `.keras` model file"),
    ("keras_weights_file", lambda k: saving.load_model(k.write("model.weights.h5", b"x")), ValueError, r"holds weights only.*load_weights"),
    ("keras_path_not_a_path", lambda k: saving.load_model(42), TypeError, r"`path` must be a path .*received path=42 of type int"),
    ("save_into_missing_directory", lambda k: saving.save_model(k.model, k.path("missing/dir/m.keras")), FileNotFoundError, r"directory of `path` does not exist"),
    # -- .onnx files and the onnxruntime wrapper --------------------------------------------------
    ("onnx_file_missing", lambda k: _onnx_model(k.path("nope.onnx")), FileNotFoundError, r"existing .onnx file; received path=.*nope.onnx"),
    ("onnx_path_is_directory", lambda k: _onnx_model(k.root), FileNotFoundError, r"existing .onnx file"),
    ("onnx_file_truncated", lambda k: _onnx_model(k.write("truncated.onnx", _onnx_bytes(k, 0.5))), ValueError, r"truncated.onnx.*not a valid ONNX model"),
    ("onnx_file_random_bytes", lambda k: _onnx_model(k.write("noise.onnx", os.urandom(2048))), ValueError, r"noise.onnx.*not a valid ONNX model"),
    ("onnx_input_wrong_name", lambda k: k.onnx_model({"tokens": IDS}), ValueError, r"exactly the keys \['token_ids'\].*unknown: \['tokens'\]"),
    ("onnx_input_wrong_rank", lambda k: k.onnx_model({"token_ids": IDS[0]}), ValueError, r"'token_ids' must have rank 2"),
    ("onnx_float_ids", lambda k: k.onnx_model({"token_ids": IDS + 0.5}), ValueError, r"inputs\['token_ids'\]` must hold token ids \(integers, or floats with whole values\); received"),
    ("onnx_ids_overflow_int32", lambda k: k.onnx_model({"token_ids": IDS.astype("int64") + 2**40}), ValueError, r"outside int32"),
    ("onnx_ids_out_of_vocab", lambda k: k.onnx_model({"token_ids": IDS + VOCAB}), ValueError, r"'token_ids' must hold token ids in \[0, 30\)"),
    ("onnx_ids_negative", lambda k: k.onnx_model({"token_ids": -IDS}), ValueError, r"'token_ids' must hold token ids in \[0, 30\)"),
    # -- export targets ----------------------------------------------------------------------------
    ("export_target_exists", lambda k: _to_onnx(k, k.onnx_path), FileExistsError, r"already exists; pass overwrite=True"),
    ("export_under_a_regular_file", lambda k: _to_onnx(k, os.path.join(k.keras_path, "model.onnx")), OSError, r"cannot write .*model.keras/model.onnx'.*directory .*model.keras' is not a writable directory"),
    ("export_to_unwritable_directory", lambda k: _to_onnx(k, "/proc/kt-test/model.onnx"), OSError, r"cannot write '/proc/kt-test/model.onnx'.* is not a writable directory"),
]


def _onnx_model(path):
    from export.runtime import OnnxModel

    return OnnxModel(path)


def _to_onnx(kit, path):
    import export

    return export.to_onnx(kit.model, path, validate=False)


@pytest.mark.parametrize("action, error, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error(kit, action, error, pattern):
    with pytest.raises(error) as raised:
        action(kit)
    message = str(raised.value)
    assert re.search(pattern, message, re.DOTALL), message
    assert type(raised.value).__module__ == "builtins", type(raised.value)  # not a TF/ORT error
    assert not os.path.exists(kit.marker)  # no code from a file ever ran


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


# -- documented results -------------------------------------------------------------------------


def test_empty_batch_gives_empty_outputs(kit):
    """A batch of zero examples is valid: the output has zero rows, in Keras and in ONNX."""
    empty = np.zeros((0, 4), "int32")
    logits = keras.ops.convert_to_numpy(kit.model({"token_ids": empty}))
    assert logits.shape == (0, 4, VOCAB)
    assert kit.onnx_model({"token_ids": empty})["logits"].shape == (0, 4, VOCAB)


@pytest.mark.xfail(keras.backend.backend() != "tensorflow", strict=True,
                   reason="JAX/torch: the zero-size reshape in MultiHeadAttention._project fails "
                          "(issue 12 rewrites the projections as EinsumDense)")
def test_zero_length_sequences_give_zero_length_outputs(kit):
    empty = np.zeros((2, 0), "int32")
    assert keras.ops.convert_to_numpy(kit.model({"token_ids": empty})).shape == (2, 0, VOCAB)
    assert keras.ops.convert_to_numpy(kit.encoder(X[:, :0])).shape == (2, 0, D_MODEL)
    assert kit.onnx_model({"token_ids": empty})["logits"].shape == (2, 0, VOCAB)


def test_nan_in_float_inputs_stays_in_its_example(kit):
    """NaN is not checked at run time (a reduction per call): it propagates to every output of
    the example holding it, and never reaches the other examples of the batch."""
    poisoned = X.copy()
    poisoned[0, 2, 5] = np.nan
    for layer in (kit.encoder, kit.attention, lambda x: kit.decoder(x, X)):
        output = keras.ops.convert_to_numpy(layer(poisoned))
        clean = keras.ops.convert_to_numpy(layer(X))
        assert np.isnan(output[0]).all()
        np.testing.assert_allclose(output[1], clean[1], rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Skipping invalid path during archive extraction")
def test_keras_archive_member_with_dot_dot_never_writes_outside(kit, tmp_path):
    """A `../` member name in a `.keras` zip is never extracted next to the file or in the cwd."""
    path = kit.zip_slip_keras_file()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        model = saving.load_model(path)
    finally:
        os.chdir(cwd)
    assert model.count_params() == kit.model.count_params()
    folders = (os.path.dirname(kit.root), kit.root, str(tmp_path.parent), str(tmp_path), tempfile.gettempdir())
    for folder in folders:
        assert not os.path.exists(os.path.join(folder, "escaped.txt"))


@pytest.mark.xfail(keras.backend.backend() != "torch", strict=True,
                   reason="inside compiled graphs (fit/predict) out-of-range ids are reported by "
                   "TensorFlow's GatherV2 (InvalidArgumentError naming the id and the range), not by "
                   "our layer: an in-graph check would be backend-specific (PyTorch's predict runs "
                   "eagerly, so our layer's check runs there)")
def test_out_of_range_ids_in_predict_give_a_value_error(kit):
    with pytest.raises(ValueError, match="vocab_size"):
        kit.model.predict({"token_ids": IDS * 10}, verbose=0)


@pytest.mark.xfail(strict=True, reason="a functional keras.Model casts float inputs to its int32 "
                   "Input dtype before any layer runs, so 1.5 becomes 1 silently (Keras behaviour)")
def test_float_token_ids_into_a_model_give_a_type_error(kit):
    with pytest.raises(TypeError):
        kit.model({"token_ids": IDS.astype("float32") + 0.5})


# -- CLI misuse -----------------------------------------------------------------------------------


def _cli(capsys, *argv):
    from export import cli

    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse errors exit(2) after printing usage
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


CLI_CASES = [
    ("no_arguments", lambda k: [], r"usage: kt-export.*required"),
    ("unknown_format", lambda k: [k.keras_path, "--out", k.root, "--to", "tflite"], r"invalid choice: 'tflite'"),
    ("missing_model_file", lambda k: [k.path("nope.keras"), "--out", k.root], r"not found.*nope.keras"),
    ("model_is_a_directory", lambda k: [k.root, "--out", k.path("o")], r"(not found|directory).*"),
    ("corrupt_model_file", lambda k: [k.write("cli-noise.keras", os.urandom(512)), "--out", k.path("o")], r"cannot load .*cli-noise.keras.*(not a valid|zip)"),
    ("model_with_lambda", lambda k: [k.lambda_keras_file(), "--out", k.path("o")], r"cannot load .*lambda"),
    ("target_exists", lambda k: [k.keras_path, "--out", os.path.dirname(k.onnx_path)], r"exists; pass --overwrite"),
    ("bad_opset_type", lambda k: [k.keras_path, "--out", k.root, "--opset", "latest"], r"invalid int value: 'latest'"),
]


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_misuse_exits_2_with_a_one_line_reason(kit, capsys, argv, pattern):
    code, output = _cli(capsys, *argv(kit))
    assert code == 2, output
    assert re.search(pattern, output, re.DOTALL | re.IGNORECASE), output
    assert "Traceback" not in output
    assert not os.path.exists(kit.marker)
