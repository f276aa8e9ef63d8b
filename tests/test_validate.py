"""export.validate: the shape sweep, the comparators and the comparison table."""

import types

import numpy as np
import onnxruntime
import pytest

import _onnx_graphs as graphs
from export import validate as v


def _spec(name, dtype, shape):
    return types.SimpleNamespace(name=name, dtype=dtype, shape=shape)


def test_sweep_covers_batches_lengths_and_right_padding():
    cases = v.build_sweep([_spec("token_ids", "int32", (None, None))], batch_sizes=(1, 3), max_length=16,
                          vocab_size=50)
    assert [c.feeds["token_ids"].shape for c in cases] == [(1, 1), (1, 8), (1, 16), (3, 1), (3, 8), (3, 16)]
    for case in cases:
        ids = case.feeds["token_ids"]
        assert ids.dtype == np.int32 and ids.max() < 50
        assert (ids[0] >= 1).all()  # the first row is never padded
        for row in ids:  # right padding: real ids (>= 1) then only pad ids (0)
            real = int((row > 0).sum())
            assert real >= 1 and (row[:real] > 0).all() and (row[real:] == 0).all()
    assert (cases[-1].feeds["token_ids"] == 0).any()


def test_sweep_gives_encoder_and_decoder_different_lengths_and_masks():
    specs = [_spec("encoder_token_ids", "int32", (None, None)), _spec("decoder_token_ids", "int64", (None, None)),
             _spec("encoder_padding_mask", "int32", (None, None)), _spec("features", "float32", (None, 4))]
    cases = v.build_sweep(specs, batch_sizes=(3,), max_length=9, vocab_size=7, seed=1)
    for case in cases:
        enc, dec, mask = (case.feeds[k] for k in ("encoder_token_ids", "decoder_token_ids", "encoder_padding_mask"))
        assert enc.shape[1] != dec.shape[1]
        np.testing.assert_array_equal(mask, (enc != 0).astype(np.int32))
        assert dec.dtype == np.int64 and case.feeds["features"].shape == (3, 4)
        assert case.feeds["features"].dtype == np.float32


def test_sweep_rejects_bad_max_length():
    with pytest.raises(ValueError, match="max_length=0"):
        v.build_sweep([_spec("x", "float32", (None, 2))], max_length=0)


def test_allclose_and_fp16_scaling():
    expected = np.array([[100.0, -2.0]])
    strict, scaled = v.allclose(1e-4, 1e-4), v.allclose(1e-2, 0.0, relative_to_max=True)
    assert strict(expected, expected + 1e-6).ok
    assert not strict(expected, expected + [[0.0, 1e-3]]).ok
    # The fp16 tolerance grows with the largest |value| (100 -> atol 1.0).
    assert scaled(expected, expected + 0.5).ok and not scaled(expected, expected + 2.0).ok
    result = strict(expected, np.zeros((2, 2)))
    assert not result.ok and "shape" in result.detail


def test_top1_agreement_counts_positions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50, 10))
    noisy = logits + rng.normal(scale=1e-3, size=logits.shape)
    assert v.top1_agreement(0.99)(logits, noisy).ok
    flipped = noisy.copy()
    flipped[0, :5] = -flipped[0, :5]  # 5 of 200 positions (2.5%) change their argmax
    result = v.top1_agreement(0.99)(logits, flipped)
    assert not result.ok and "97.5%" in result.detail and result.max_abs_diff > 1


def test_top1_verdict_is_over_all_positions_of_the_sweep():
    """One flipped position per case: 15/16 fails that case, but 314/316 (99.37%) passes overall."""
    rng = np.random.default_rng(1)
    cases = [v.SweepCase(f"case{n}", {"x": rng.normal(size=(1, n, 5))}) for n in (16, 300)]

    def flip_first(feeds):  # negating a position's logits moves its argmax
        logits = feeds["x"].copy()
        logits[0, 0] = -logits[0, 0]
        return {"y": logits}

    table = v.compare(lambda f: {"y": f["x"]}, flip_first, cases, v.top1_agreement(0.99))
    assert not table.rows[0].ok and table.rows[1].ok
    assert table.passed and "over the sweep 99.37%" in str(table)
    only_short = v.compare(lambda f: {"y": f["x"]}, flip_first, cases[:1], v.top1_agreement(0.99))
    assert not only_short.passed


def test_comparator_for_precisions():
    assert "1e-04" in v.comparator_for().name or "0.0001" in v.comparator_for().name
    assert "top-1" in v.comparator_for("int8").name
    assert "95%" in v.comparator_for("int4").name and "90%" in v.comparator_for("int8", min_top1=0.9).name
    with pytest.raises(ValueError, match="precision='int3'"):
        v.comparator_for("int3")
    with pytest.raises(ValueError, match=r"min_top1.*-0\.1"):
        v.comparator_for("int4", min_top1=-0.1)


def test_compare_against_an_onnxruntime_session(tmp_path):
    session = onnxruntime.InferenceSession(graphs.embedding_classifier(str(tmp_path / "m.onnx")))
    specs = [_spec("token_ids", "int32", (None, None)), _spec("bias", "float32", (None, 1, 3))]
    cases = v.build_sweep(specs, max_length=6, vocab_size=graphs.VOCAB)

    def reference(feeds):
        return {"logits": graphs.reference(**feeds)}

    table = v.compare(reference, session, cases, v.allclose())
    assert table.passed and len(table.rows) == len(cases) and "PASSED" in str(table)
    table.raise_if_failed()

    def off_by_one_weight(feeds):  # a "wrong export": another seed's weights
        return {"logits": graphs.reference(**feeds, seed=1)}

    bad = v.compare(off_by_one_weight, session, cases, v.allclose())
    assert not bad.passed and bad.worst.max_abs_diff > 1e-2
    with pytest.raises(v.ExportValidationError, match="nothing was written") as caught:
        bad.raise_if_failed()
    assert "FAIL" in str(caught.value) and "batch=3,sequence=6" in str(caught.value)


def test_missing_candidate_output_fails_the_row():
    cases = v.build_sweep([_spec("x", "float32", (None, 2))], batch_sizes=(1,), max_length=1)
    table = v.compare(lambda f: {"y": f["x"]}, lambda f: {"z": f["x"]}, cases)
    assert not table.passed and "missing" in table.rows[0].detail


def test_keras_reference_runs_a_sweep_with_one_compile_per_length_and_the_model_s_outputs():
    import keras

    from export.signatures import model_signature
    from keras_transformer.models import EncoderDecoderTransformer

    model = EncoderDecoderTransformer(30, 1, 1, d_model=16, num_heads=2, d_ff=32, max_length=12,
                                      positional="learned", dropout=0.0)
    signature = model_signature(model)
    cases = v.model_sweep(model, signature.inputs)
    reference = v.keras_reference(model, signature.output_names)
    table = v.compare(reference, lambda feeds: {"logits": keras.ops.convert_to_numpy(model(feeds, training=False))},
                      cases, v.allclose(atol=1e-5, rtol=1e-5))
    assert table.passed and len(table.rows) == 6, table
    if keras.backend.backend() == "jax":  # batch 1 ran padded to batch 3: 3 lengths, 3 compiles
        assert reference.compiled_shapes() == 3
