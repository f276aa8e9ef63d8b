"""The key/value cache between decoding steps (`export.kv_cache`): decoder-only graphs in the fused
form let past and present share one buffer (onnxruntime's GroupQueryAttention writes in place);
the tokens and logits are those of the copying path, and of Keras."""

import json

import keras
import numpy as np
import onnx
import pytest

from export.decoding import GENERATION_METADATA_KEY, OnnxGenerator
from export.kv_cache import CachedSession, SharedCacheSession, cached_session
from export.native import save_generation_graphs
from keras_transformer.models import DecoderOnlyTransformer, EncoderDecoderTransformer

VOCAB = 50
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


def _model(d_model=16, heads=2, seed=3):
    keras.utils.set_random_seed(seed)
    return DecoderOnlyTransformer(VOCAB, 2, d_model, heads, 32, dropout=0.0, max_length=48,
                                  positional="learned", norm_first=True, tie_embeddings=False)


def _metadata(path):
    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    return json.loads(props[GENERATION_METADATA_KEY])


def _copying(folder):
    """The same folder's generator, forced onto the copying cache."""
    generator = OnnxGenerator(folder, providers=["CPUExecutionProvider"])
    generator.decoder = CachedSession(generator.decoder.session, generator.metadata)
    return generator


@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory):
    model = _model()
    folder = tmp_path_factory.mktemp("shared") / "graphs"
    save_generation_graphs(model, folder)
    return model, folder


def test_fused_decoder_only_graph_shares_its_cache(shared_folder):
    model, folder = shared_folder
    graph = onnx.load(folder / "decoder_with_past.onnx")
    ops = {node.op_type for node in graph.graph.node}
    assert "GroupQueryAttention" in ops and "MultiHeadAttention" not in ops
    assert _metadata(folder / "decoder_with_past.onnx")["past_present_share_buffer"] is True
    generator = OnnxGenerator(folder, providers=["CPUExecutionProvider"])
    assert isinstance(generator.decoder, SharedCacheSession)
    expected = model.generate(PROMPTS, max_new_tokens=10, temperature=0.0)
    np.testing.assert_array_equal(generator.generate(PROMPTS, max_new_tokens=10, temperature=0.0), expected)
    np.testing.assert_array_equal(_copying(folder).generate(PROMPTS, max_new_tokens=10, temperature=0.0), expected)


def test_sampling_through_the_shared_cache_draws_the_copying_paths_tokens(shared_folder):
    _, folder = shared_folder
    arguments = dict(max_new_tokens=9, temperature=0.9, top_k=20, seed=5)
    shared = OnnxGenerator(folder, providers=["CPUExecutionProvider"]).generate(PROMPTS, **arguments)
    np.testing.assert_array_equal(shared, _copying(folder).generate(PROMPTS, **arguments))


def _step_feeds(ids, past, new):
    batch = ids.shape[0]
    return {"input_ids": ids[:, past:past + new], "attention_mask": np.ones((batch, past + new), np.int64),
            "position_ids": np.tile(np.arange(past, past + new), (batch, 1))}


def test_shared_cache_reorders_rows_in_place_and_refuses_to_overflow(shared_folder):
    _, folder = shared_folder
    generator = OnnxGenerator(folder, providers=["CPUExecutionProvider"])
    shared = generator.decoder
    copying = CachedSession(shared.session, generator.metadata)
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(2, 6))
    for cache in (shared, copying):
        cache.reset(2, 6)
        cache.run(_step_feeds(ids, 0, 4))
        cache.reorder(np.array([1, 0]))
    swapped = ids[[1, 0]]
    np.testing.assert_allclose(shared.run(_step_feeds(swapped, 4, 1)), copying.run(_step_feeds(swapped, 4, 1)),
                               atol=1e-5)
    assert shared.cached_length == copying.cached_length == 5
    with pytest.raises(ValueError, match="holds 6 positions; 5 are used and this run adds 2"):
        shared.run(_step_feeds(np.ones((2, 7), np.int64), 5, 2))
    with pytest.raises(ValueError, match="total_length=None"):
        shared.reset(2)


# fp16 graphs keep float32 inputs and outputs (a Cast between each past and its attention), so
# they copy; the int8/int4 graphs quantize the projections only and share.
@pytest.mark.parametrize("precision, shares", [("fp16", False), ("int8", True), ("int4", True)])
def test_lower_precision_graphs_record_whether_they_share(shared_folder, tmp_path, precision, shares):
    model, _ = shared_folder
    save_generation_graphs(model, tmp_path / precision, precision=precision)
    assert _metadata(tmp_path / precision / "decoder_with_past.onnx")["past_present_share_buffer"] is shares
    generator = OnnxGenerator(tmp_path / precision, providers=["CPUExecutionProvider"])
    assert type(generator.decoder) is (SharedCacheSession if shares else CachedSession)
    got = generator.generate(PROMPTS, max_new_tokens=8, temperature=0.0)
    np.testing.assert_array_equal(got, _copying(tmp_path / precision).generate(PROMPTS, max_new_tokens=8,
                                                                               temperature=0.0))


@pytest.mark.parametrize("case", ["head_dim_6", "portable", "encoder_decoder"])
def test_graphs_that_cannot_share_keep_the_copying_cache(tmp_path, case):
    if case == "encoder_decoder":
        keras.utils.set_random_seed(1)
        model = EncoderDecoderTransformer(VOCAB, 1, 1, d_model=16, num_heads=2, d_ff=32, dropout=0.0)
        save_generation_graphs(model, tmp_path / case)
        assert not _metadata(tmp_path / case / "decoder.onnx").get("past_present_share_buffer")
        return
    model = _model(d_model=12, heads=2) if case == "head_dim_6" else _model()
    save_generation_graphs(model, tmp_path / case, attention="portable" if case == "portable" else "fused")
    assert _metadata(tmp_path / case / "decoder_with_past.onnx")["past_present_share_buffer"] is False
    generator = OnnxGenerator(tmp_path / case, providers=["CPUExecutionProvider"])
    assert type(generator.decoder) is CachedSession
    assert type(cached_session(generator.decoder.session, generator.metadata)) is CachedSession
    expected = model.generate(PROMPTS, max_new_tokens=6, temperature=0.0)
    np.testing.assert_array_equal(generator.generate(PROMPTS, max_new_tokens=6, temperature=0.0), expected)


def test_shared_cache_false_keeps_multi_head_attention_and_copies(tmp_path):
    """For float32 on a GPU (onnxruntime's CUDA GroupQueryAttention is float16/bfloat16 only)."""
    import export

    model = _model()
    save_generation_graphs(model, tmp_path / "graphs", shared_cache=False)
    ops = {node.op_type for node in onnx.load(tmp_path / "graphs" / "decoder_with_past.onnx").graph.node}
    assert "MultiHeadAttention" in ops and "GroupQueryAttention" not in ops
    generator = OnnxGenerator(tmp_path / "graphs", providers=["CPUExecutionProvider"])
    assert type(generator.decoder) is CachedSession
    expected = model.generate(PROMPTS, max_new_tokens=6, temperature=0.0)
    np.testing.assert_array_equal(generator.generate(PROMPTS, max_new_tokens=6, temperature=0.0), expected)
    export.to_genai(model, tmp_path / "genai", shared_cache=False)
    config = json.loads((tmp_path / "genai" / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is False
    with pytest.raises(ValueError, match="shared_cache.*'yes'"):
        save_generation_graphs(model, tmp_path / "bad", shared_cache="yes")
    assert not (tmp_path / "bad").exists()
