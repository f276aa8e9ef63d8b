"""Property-based tests (hypothesis): random batch sizes, lengths and padding patterns.

Each property is checked on layers built once per module (eager calls, so no retracing), with
few derandomized examples so that the run is deterministic and cheap on a shared CI machine:
- outputs stay finite, even for rows that are entirely padding;
- padding invariance: an encoder's outputs at real positions do not depend on the padding;
- causality: a decoder's output at position t does not depend on inputs after t;
- cached (incremental) decoding equals full decoding, for every split of prompt and steps;
- and through the model classes: batched greedy generation with the KV cache equals full
  recomputation for prompts of mixed lengths, and a classifier ignores trailing padding.
Each layer property runs for the paper's blocks and for Llama-shaped ones (grouped-query
attention, rotary positions, RMSNorm, gated SiLU feed-forward, no biases).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keras import ops

from keras_transformer.layers import DecoderBlock, EncoderBlock, TokenAndPositionEmbedding

D_MODEL, NUM_HEADS, D_FF, MAX_LENGTH, VOCAB = 16, 2, 32, 8, 30
TOLERANCE = dict(rtol=1e-4, atol=1e-5)

# Length-1 keys make Keras warn that softmax over one position is constant: that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")

PROPERTY_SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


MODERN = dict(num_key_value_heads=1, rotary_max_wavelength=10000.0, normalization="rms_norm",
              gated_feed_forward=True, activation="silu", use_bias=False)


@pytest.fixture(scope="module", params=["paper", "modern"])
def layers(request):
    """Tiny layers, built once: dropout 0 so that every call is deterministic."""
    options = MODERN if request.param == "modern" else {}
    encoder = EncoderBlock(NUM_HEADS, D_FF, dropout=0.0, **options)
    encoder.build((None, None, D_MODEL))
    decoder = DecoderBlock(NUM_HEADS, D_FF, dropout=0.0, norm_first=True, **options)
    decoder.build((None, None, D_MODEL), (None, None, D_MODEL))
    embedding = TokenAndPositionEmbedding(VOCAB, D_MODEL)
    embedding.build((None, None))
    return encoder, decoder, embedding


@st.composite
def padded_batches(draw, max_batch=3, max_length=MAX_LENGTH, allow_empty_rows=False):
    """A float batch `(B, T, D_MODEL)` and per-row real lengths (the rest is padding)."""
    batch = draw(st.integers(1, max_batch))
    length = draw(st.integers(1, max_length))
    smallest = 0 if allow_empty_rows else 1
    lengths = draw(st.lists(st.integers(smallest, length), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**31 - 1))
    x = np.random.default_rng(seed).normal(size=(batch, length, D_MODEL)).astype("float32")
    return x, np.array(lengths)


def _padding_mask(lengths, length):
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


@PROPERTY_SETTINGS
@given(padded_batches(allow_empty_rows=True))
def test_outputs_are_finite_for_any_padding(layers, batch):
    encoder, decoder, _ = layers
    x, lengths = batch
    mask = _padding_mask(lengths, x.shape[1])
    encoded = encoder(x, padding_mask=mask)
    decoded = decoder(x, encoder_outputs=encoded, padding_mask=mask, encoder_padding_mask=mask)
    assert encoded.shape == x.shape and decoded.shape == x.shape
    assert np.isfinite(ops.convert_to_numpy(encoded)).all()
    assert np.isfinite(ops.convert_to_numpy(decoded)).all()


@PROPERTY_SETTINGS
@given(padded_batches(), st.integers(0, 2**31 - 1))
def test_encoder_ignores_padding(layers, batch, seed):
    """Real positions give the same output whatever fills the padded positions, and the same
    output as the unpadded row on its own."""
    encoder, _, _ = layers
    x, lengths = batch
    mask = _padding_mask(lengths, x.shape[1])
    noise = np.random.default_rng(seed).normal(scale=10.0, size=x.shape).astype("float32")
    x_other_padding = np.where(mask[..., None], x, noise)
    out = ops.convert_to_numpy(encoder(x, padding_mask=mask))
    out_other = ops.convert_to_numpy(encoder(x_other_padding, padding_mask=mask))
    for row, length in enumerate(lengths):
        alone = ops.convert_to_numpy(encoder(x[row : row + 1, :length]))
        np.testing.assert_allclose(out[row, :length], alone[0], **TOLERANCE)
        np.testing.assert_allclose(out_other[row, :length], alone[0], **TOLERANCE)


@PROPERTY_SETTINGS
@given(padded_batches(), st.data())
def test_decoder_is_causal(layers, batch, data):
    """Changing inputs at positions >= t leaves the outputs at positions < t unchanged."""
    _, decoder, _ = layers
    x, _ = batch
    length = x.shape[1]
    cut = data.draw(st.integers(0, length - 1), label="cut")
    memory = np.random.default_rng(cut).normal(size=(x.shape[0], 3, D_MODEL)).astype("float32")
    changed = x.copy()
    changed[:, cut:] = np.random.default_rng(length).normal(size=changed[:, cut:].shape)
    out = ops.convert_to_numpy(decoder(x, encoder_outputs=memory))
    out_changed = ops.convert_to_numpy(decoder(changed, encoder_outputs=memory))
    np.testing.assert_allclose(out[:, :cut], out_changed[:, :cut], **TOLERANCE)
    if cut < length:  # the property is not vacuous: the changed positions do change
        assert not np.allclose(out[:, cut:], out_changed[:, cut:], atol=1e-3)


@PROPERTY_SETTINGS
@given(
    batch_size=st.integers(1, 3),
    total=st.integers(1, MAX_LENGTH),
    data=st.data(),
)
def test_cached_decoding_equals_full_decoding(layers, batch_size, total, data):
    """Embedding + decoder: a prompt of random length, then one token per step through the KV
    cache (and the cross-attention cache) gives the same states as one full causal pass."""
    _, decoder, embedding = layers
    prompt = data.draw(st.integers(1, total), label="prompt_length")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, VOCAB, size=(batch_size, total)).astype("int32")
    memory = rng.normal(size=(batch_size, 5, D_MODEL)).astype("float32")

    full = ops.convert_to_numpy(decoder(embedding(token_ids), encoder_outputs=memory))

    (cache,) = decoder.self_attention.cache_spec().zeros(batch_size, MAX_LENGTH)
    cross_cache = decoder.compute_cross_attention_cache(ops.convert_to_tensor(memory))
    steps = []
    start = 0
    for stop in [prompt] + list(range(prompt + 1, total + 1)):
        x = embedding(token_ids[:, start:stop], start_index=start)
        out, cache = decoder(
            x, cache=cache, cache_index=start, cross_attention_cache=cross_cache
        )
        steps.append(ops.convert_to_numpy(out))
        start = stop
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, **TOLERANCE)


# -- the same properties through the model classes ------------------------------------------------


@pytest.fixture(scope="module", params=["paper", "modern"])
def models(request):
    from keras_transformer.models import DecoderOnlyTransformer, EncoderOnlyTransformer

    common = dict(vocab_size=VOCAB, num_layers=1, d_model=D_MODEL, num_heads=NUM_HEADS, d_ff=D_FF,
                  dropout=0.0, max_length=2 * MAX_LENGTH, positional="learned")
    if request.param == "modern":
        common.update(MODERN, positional="rotary", norm_first=True)
    decoder = DecoderOnlyTransformer(**common)
    classifier = EncoderOnlyTransformer(**common, head="classification", num_classes=3, pooling="mean")
    return decoder, classifier


@PROPERTY_SETTINGS
@given(st.lists(st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=MAX_LENGTH), min_size=1, max_size=3),
       st.integers(1, MAX_LENGTH))
def test_batched_cached_generation_equals_full_recomputation(models, prompts, new_tokens):
    """Prompts of different lengths in one batch: greedy decoding through the KV cache gives
    the tokens that re-running the whole sequence at every step gives."""
    decoder, _ = models
    cached = decoder.generate(prompts, max_new_tokens=new_tokens, temperature=0.0, use_cache=True)
    full = decoder.generate(prompts, max_new_tokens=new_tokens, temperature=0.0, use_cache=False)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))


@PROPERTY_SETTINGS
@given(st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=MAX_LENGTH), st.integers(1, MAX_LENGTH))
def test_classifier_ignores_trailing_padding(models, tokens, padding):
    """A sequence padded with `pad_id` is classified exactly as the same sequence unpadded."""
    _, classifier = models
    unpadded = np.array([tokens], dtype="int32")
    padded = np.array([tokens + [0] * padding], dtype="int32")
    alone = ops.convert_to_numpy(classifier({"token_ids": unpadded}))
    with_padding = ops.convert_to_numpy(classifier({"token_ids": padded}))
    np.testing.assert_allclose(with_padding, alone, **TOLERANCE)
