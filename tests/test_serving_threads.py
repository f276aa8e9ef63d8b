"""Serving under load: one `export.runtime.OnnxModel` shared by 8 threads x 200 requests.

Every answer is checked against the single-threaded answer for the same request (mixed batch
sizes and lengths), no request may fail, and resident memory (VmRSS from /proc/self/status) must
not grow after a warm-up round that has seen every shape. No timing is asserted.
"""

import threading

import numpy as np
import pytest

THREADS, REQUESTS_PER_THREAD = 8, 200
VOCAB, MAX_LENGTH = 512, 16
# Growth allowed after warm-up (allocator noise, thread stacks): per-shape caches are already
# filled by the warm-up (measured growth: ~0.5 MiB), while keeping every request's logits alive
# would cost ~60 MiB (1600 requests x 38 KiB on average).
RSS_TOLERANCE_BYTES = 16 * 1024 * 1024


def resident_bytes():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny decoder-only model exported to ONNX, one shared OnnxModel, and mixed requests with
    their single-threaded answers."""
    import export
    from export.runtime import OnnxModel
    from keras_transformer.models import DecoderOnlyTransformer

    model = DecoderOnlyTransformer(
        vocab_size=VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.0,
        max_length=MAX_LENGTH, positional="learned",
    )
    path = str(tmp_path_factory.mktemp("serving") / "model.onnx")
    export.to_onnx(model, path, validate=False)
    session = OnnxModel(path)
    rng = np.random.default_rng(0)
    requests = [
        {"token_ids": rng.integers(0, VOCAB, size=(batch, length)).astype("int32")}
        for batch in (1, 2, 5)
        for length in (1, 3, 8, MAX_LENGTH)
    ]
    answers = [session(request)["logits"] for request in requests]
    return session, requests, answers


def _hammer(session, requests, answers, requests_per_thread):
    """Run THREADS threads, each sending `requests_per_thread` requests; return the failures."""
    failures, start = [], threading.Barrier(THREADS)

    def worker(thread_index):
        start.wait()
        for i in range(requests_per_thread):
            index = (thread_index * 7 + i) % len(requests)  # threads interleave different shapes
            try:
                logits = session(requests[index])["logits"]
                np.testing.assert_allclose(logits, answers[index], rtol=1e-6, atol=1e-6)
            except Exception as error:  # noqa: BLE001 - collected and reported by the test
                failures.append((thread_index, i, index, repr(error)[:300]))

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
        assert not thread.is_alive(), "a serving thread hung"
    return failures


def test_shared_session_gives_single_threaded_answers_without_memory_growth(served):
    session, requests, answers = served
    assert len({r["token_ids"].shape for r in requests}) == len(requests)  # mixed shapes
    assert not _hammer(session, requests, answers, requests_per_thread=len(requests))  # warm-up
    before = resident_bytes()
    failures = _hammer(session, requests, answers, REQUESTS_PER_THREAD)
    after = resident_bytes()
    assert not failures, failures[:5]
    assert after - before < RSS_TOLERANCE_BYTES, (
        f"resident memory grew by {(after - before) / 2**20:.1f} MiB over "
        f"{THREADS * REQUESTS_PER_THREAD} requests after warm-up"
    )


def test_threads_see_errors_of_their_own_bad_requests_only(served):
    """A bad request in one thread raises a clear error there and disturbs no other thread."""
    session, requests, answers = served
    bad = {"token_ids": np.full((2, 3), VOCAB + 5, dtype="int32")}
    errors = []

    def bad_worker():
        for _ in range(50):
            try:
                session(bad)
            except ValueError as error:
                errors.append(str(error))

    thread = threading.Thread(target=bad_worker, daemon=True)
    thread.start()
    failures = _hammer(session, requests, answers, requests_per_thread=50)
    thread.join(timeout=600)
    assert not failures, failures[:5]
    assert len(errors) == 50 and all("token ids in [0, 512)" in e for e in errors), errors[:1]
