"""Serving throughput (requests/s) against the number of client threads sharing one model.

Measured side by side in one run (`python -m bench serving [--quick]`), for 1, 2, 4 and 8
threads sending mixed-shape requests (batch 1-4, length 16-64) to a 2-layer decoder-only model
(vocab 2000, d_model 128) exported to ONNX:

* `OnnxModel` (our wrapper: input checks, casts, id-range checks) shared by all threads, with
  onnxruntime's default intra-op threads and with one intra-op thread per session;
* the peer: a bare `onnxruntime.InferenceSession.run` on the same file, same settings, so the
  wrapper's overhead is a ratio taken in the same run.

Each point is the median of 3 runs, the runners alternating so that load from other processes
hits them alike. On a shared machine only the ratios mean much. Results go to `bench/results/serving.json`.
"""

import argparse
import os
import statistics
import tempfile
import threading
import time

from bench import common

VOCAB, LAYERS, D_MODEL, HEADS, D_FF, MAX_LENGTH = 2000, 2, 128, 4, 512, 128
THREAD_COUNTS = (1, 2, 4, 8)
REPEATS = 3


def _export(directory):
    import export
    from keras_transformer.models import DecoderOnlyTransformer

    model = DecoderOnlyTransformer(
        vocab_size=VOCAB, num_layers=LAYERS, d_model=D_MODEL, num_heads=HEADS, d_ff=D_FF,
        dropout=0.0, max_length=MAX_LENGTH, positional="learned",
    )
    path = os.path.join(directory, "model.onnx")
    export.to_onnx(model, path, validate=False)
    return path


def _requests(count):
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = [(batch, length) for batch in (1, 2, 4) for length in (16, 32, 64)]
    return [
        {"token_ids": rng.integers(1, VOCAB, size=shapes[i % len(shapes)]).astype("int32")}
        for i in range(count)
    ]


def _throughput(call, requests, threads):
    """Requests per second when `threads` threads share `requests` (each sends its slice)."""
    slices = [requests[i::threads] for i in range(threads)]
    start_line = threading.Barrier(threads + 1)

    def client(mine):
        start_line.wait()
        for request in mine:
            call(request)

    workers = [threading.Thread(target=client, args=(mine,)) for mine in slices]
    for worker in workers:
        worker.start()
    start_line.wait()
    begin = time.perf_counter()
    for worker in workers:
        worker.join()
    return len(requests) / (time.perf_counter() - begin)


def _callers(path, intra_op_threads):
    import onnxruntime

    from export.runtime import OnnxModel

    ours = OnnxModel(path, intra_op_num_threads=intra_op_threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    bare = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return {
        "OnnxModel": lambda request: ours(request),
        "bare InferenceSession": lambda request: bare.run(None, request),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serving throughput against client threads.")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    args = parser.parse_args(argv)
    total = 72 if args.quick else 600
    requests = _requests(total)
    results, rows = {"machine": common.machine_info(), "requests": total, "runs": []}, []
    with tempfile.TemporaryDirectory() as directory:
        path = _export(directory)
        for intra in (0, 1):
            callers = _callers(path, intra)
            for name, call in callers.items():
                for request in requests[:18]:  # warm-up: every shape once
                    call(request)
            rates = {name: {} for name in callers}
            for threads in THREAD_COUNTS:
                # Runners alternate, REPEATS times, so that load from other processes hits
                # both alike; the median is kept.
                samples = {name: [] for name in callers}
                for _ in range(REPEATS):
                    for name, call in callers.items():
                        samples[name].append(_throughput(call, requests, threads))
                for name in callers:
                    rates[name][threads] = statistics.median(samples[name])
            for name in callers:
                label = f"{name}, intra_op={'default' if intra == 0 else intra}"
                for threads, rate in rates[name].items():
                    ratio = rate / rates[name][1]
                    results["runs"].append(dict(runner=label, threads=threads, requests_per_s=rate,
                                                vs_one_thread=ratio))
                    rows.append((label, threads, f"{rate:,.0f}", f"{ratio:.2f}x"))
    ours = {(r["runner"].split(",")[1], r["threads"]): r["requests_per_s"] for r in results["runs"]
            if r["runner"].startswith("OnnxModel")}
    bare = {(r["runner"].split(",")[1], r["threads"]): r["requests_per_s"] for r in results["runs"]
            if r["runner"].startswith("bare")}
    results["OnnxModel_vs_bare"] = {f"{k[0].strip()} threads={k[1]}": ours[k] / bare[k] for k in ours}
    common.print_table("Serving: requests/s vs client threads (shared machine: compare ratios)",
                       ["runner", "threads", "requests/s", "vs 1 thread"], rows)
    print("OnnxModel / bare session throughput:",
          {k: round(v, 2) for k, v in results["OnnxModel_vs_bare"].items()})
    print("wrote", common.write_json("serving", results))
    return results


if __name__ == "__main__":
    main()
