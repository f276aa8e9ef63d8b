"""Native full-sequence graphs of the three model families against Keras, and the to_onnx plug-in."""

import keras
import numpy as np
import pytest

import export
from export.native import build, unsupported_reason
from keras_transformer.layers import DecoderBlock, TokenAndPositionEmbedding
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer, EncoderOnlyTransformer
from tests._native_helpers import run_onnx

ATOL = 1e-4
VOCAB = 40
SHAPES = [(1, 1), (2, 5), (3, 16)]  # (batch, length)


def _ids(batch, length, seed=0, pad_rows=True):
    """Token ids in [1, VOCAB) with right padding (pad_id 0) in every row but the first."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(batch, length)).astype("int32")
    if pad_rows:
        for row in range(1, batch):
            ids[row, max(1, length - row * 2):] = 0
    return ids


def _check(model, proto, feeds):
    expected = keras.ops.convert_to_numpy(model(feeds))
    got = run_onnx(proto, feeds)[0]
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("attention,norm_first,positional,tie",
                         [("fused", False, "sinusoidal", True), ("portable", True, "learned", False),
                          ("fused", True, "learned", False)])
def test_decoder_only_matches_keras_over_shapes(attention, norm_first, positional, tie):
    model = DecoderOnlyTransformer(VOCAB, 2, 16, 2, 32, norm_first=norm_first, positional=positional,
                                   max_length=32, tie_embeddings=tie, activation="gelu")
    proto = build(model, attention=attention)
    for batch, length in SHAPES:
        _check(model, proto, {"token_ids": _ids(batch, length)})


@pytest.mark.parametrize("attention,norm_first,target_vocab",
                         [("fused", False, None), ("portable", True, 30), ("fused", True, 30)])
def test_encoder_decoder_matches_keras_over_shapes(attention, norm_first, target_vocab):
    model = EncoderDecoderTransformer(VOCAB, 2, 1, d_model=16, num_heads=2, d_ff=32, norm_first=norm_first,
                                      target_vocab_size=target_vocab)
    proto = build(model, attention=attention)
    for (batch, length), target_length in zip(SHAPES, (2, 3, 9)):
        feeds = {"encoder_token_ids": _ids(batch, length), "decoder_token_ids": _ids(batch, target_length, 1, False) % 30}
        _check(model, proto, feeds)


@pytest.mark.parametrize(
    "head,pooling", [(None, "cls"), ("classification", "cls"), ("classification", "mean"),
                     ("token_classification", "cls"), ("masked_lm", "cls")],
)
def test_encoder_only_heads_match_keras(head, pooling):
    num_classes = 3 if head in ("classification", "token_classification") else None
    model = EncoderOnlyTransformer(VOCAB, 1, 16, 2, 32, head=head, num_classes=num_classes, pooling=pooling,
                                   norm_first=head == "masked_lm")
    proto = build(model)
    assert [o.name for o in proto.graph.output] == ["hidden_states" if head is None else "logits"]
    for batch, length in SHAPES:
        _check(model, proto, {"token_ids": _ids(batch, length)})


def test_graph_names_axes_and_fuses_attention():
    model = EncoderDecoderTransformer(VOCAB, 1, 2, d_model=16, num_heads=2, d_ff=32)
    proto = build(model)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"encoder_token_ids": ["batch", "encoder_sequence"],
                    "decoder_token_ids": ["batch", "decoder_sequence"]}
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Attention") == 1 + 2  # self-attention: projection + attention in one op
    assert ops.count("MultiHeadAttention") == 2  # cross-attention
    # standard LayerNormalization (onnxruntime's SkipLayerNormalization is slower on CPU)
    assert ops.count("LayerNormalization") == 2 * 1 + 3 * 2 and "SkipLayerNormalization" not in ops
    assert "Softmax" not in ops
    # the tied embedding is stored once: one (vocab, d_model) initializer
    assert sum(tuple(t.dims) == (VOCAB, 16) for t in proto.graph.initializer) == 1


def test_unknown_layers_and_call_overriding_subclasses_fall_back_to_tracing():
    class CustomBlock(DecoderBlock):
        pass

    ids = keras.Input((None,), dtype="int32", name="token_ids")
    hidden = CustomBlock(2, 32, cross_attention=False)(TokenAndPositionEmbedding(VOCAB, 16)(ids))
    functional = keras.Model({"token_ids": ids}, hidden)
    assert "Functional" in unsupported_reason(functional)  # a plain keras.Model is not a family

    class MyLM(DecoderOnlyTransformer):  # adds a method only: stays native
        def describe(self):
            return "mine"

    assert unsupported_reason(MyLM(VOCAB, 1, 16, 2, 32)) is None

    class CallingLM(DecoderOnlyTransformer):
        def call(self, inputs, training=None, mask=None):
            return super().call(inputs, training=training, mask=mask) * 2.0

    reason = unsupported_reason(CallingLM(VOCAB, 1, 16, 2, 32))
    assert "CallingLM overrides call() of DecoderOnlyTransformer" in reason
    assert "float16" in unsupported_reason(DecoderOnlyTransformer(VOCAB, 1, 16, 2, 32, dtype="mixed_float16"))
    odd_activation = DecoderOnlyTransformer(VOCAB, 1, 16, 2, 32, activation="softplus")
    assert "activation" in unsupported_reason(odd_activation)
    with pytest.raises(ValueError, match="does not support"):
        export.to_onnx(odd_activation, "unused.onnx", method="native")


def test_to_onnx_uses_native_path_and_validates(tmp_path):
    model = DecoderOnlyTransformer(VOCAB, 1, 16, 2, 32)
    report = export.to_onnx(model, tmp_path / "lm.onnx", max_length=16, batch_sizes=(2,))
    assert report.method == "native"
    assert report.validation.passed
    assert report.node_counts["Attention"] == 1
