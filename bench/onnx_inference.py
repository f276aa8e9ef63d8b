"""ONNX Runtime inference and generation: the native graph against Keras's own ONNX export.

Measured side by side in one run (`.venv/bin/python -m bench onnx_inference [--quick]`):

* a GPT-style 4-layer stack (vocab 8000, d_model 256, 4 heads, d_ff 1024, pre-norm, GELU,
  learned positions, tied embeddings): our `DecoderOnlyTransformer` exported natively (fused
  attention; the portable MatMul/Softmax variant; int8) and keras-hub's `GPT2CausalLM` of the
  same size exported by Keras's own `model.export(format="onnx")`, also after onnxruntime's
  transformer optimizer (`keras_export_ort_transformers`; it fuses nothing in that graph);
* latency at 1 x 128 and 16 x 128 with 2 threads (all cores) and with 1 thread, as ratios and
  as GFLOP/s over an onnxruntime float32 MatMul peak timed in the same rounds;
* the int8 ceiling: fp32 / int8 time of the largest MatMul alone (the vocabulary projection);
* greedy generation, 64 new tokens from a 16-token prompt, batch 1: `export.decoding` on our
  KV-cache graphs against keras-hub's cached greedy `generate` (XLA and not), same run;
* export time (`export.to_onnx`, validation included, against `model.export` alone), node counts.

Every graph runs with the same session options (`ort_session`); the rounds are interleaved, one
call per graph per round, medians reported. Results: `bench/results/onnx_inference.json`.

Last full run: 2026-11-21 14:50-14:52 UTC, `.venv/bin/python -m bench onnx_inference`, 2-core
AMD EPYC (AVX2, no VNNI), onnxruntime 1.31.1, machine quiet: `uptime` load average 0.14 before,
1.11 after (this run's own load); ORT matmul peak in the rounds 143-148 GFLOP/s. In brackets, the
full run of 14:45-14:47 (load 1.5 before, 1.35 after) for the run-to-run spread:

    native / Keras-export ONNX        1 x 128: 0.69 [0.78] (target <= 0.85, met)  16 x 128: 0.79 [0.80] (<= 0.90, met)
      same, 1 thread                  1 x 128: 0.88 [0.86]                        16 x 128: 0.90 [0.88]
    fused / portable attention        1 x 128: 0.90 [0.98]                        16 x 128: 0.95 [1.00]
    fraction of the matmul peak       native 81% / 91%, Keras export 56% / 72%
    int8 speed-up over fp32, 16 x 128 1.40x [1.51x] (target 1.8x, NOT met); 1 thread 1.44x [1.46x]
      ceiling: vocab MatMul alone     1.53x [1.79x] (1 thread 1.64x [1.68x])
    greedy generation, ms/token       onnx fp32 0.99 [1.16] (1 thread 1.25), int8 0.56; keras-hub XLA 2.43 [2.69]
      fp32 / keras-hub XLA            0.41 [0.43] (target <= 0.33, NOT met); int8 0.23 [0.26]
    export + validation               2.2 s vs model.export 14.8 s (0.15x, met)
    nodes                             native 54, portable 157, int8 109, Keras export 727

What changed the numbers (each measured A/B, interleaved):
* `SkipLayerNormalization` (onnxruntime 1.31's CPU kernel) took 3.5x as long as Add + Add +
  `LayerNormalization` (16 x 128 x 256: 4.0 against 1.2 ms), so the graphs no longer use it:
  8% off a whole forward pass (1 thread: 19.7 against 21.4 ms at 1 x 128, 294 against 323 ms).
* Sessions taking turns must not spin after their run: with onnxruntime's default, the workers
  of one session kept spinning into the next session's run, and 1 x 128 measured 35-50 ms per
  graph instead of 11-14 ms, in an order-dependent way (most likely behind the earlier 0.87 at
  1 x 128 and the reading "portable is faster", with SkipLayerNormalization). All graphs here use
  `session.force_spinning_stop=1`; compute is unchanged.
* Generation: worker threads that spin during a run and stop after it made fp32 decoding 20-27%
  faster than one thread (see `export.decoding._session`); IO binding (present KV bound as the
  next past) measured no faster than `session.run` (2.2 against 2.0 ms per step) while the
  attention copied its cache; with one buffer shared by past and present (GroupQueryAttention,
  `export.kv_cache`, 2026-12-02) it is what the generator uses (see the README's issue 16 notes).

Second session, 2026-11-21 16:03 UTC, same command (load 1.2 at the end; keras-hub XLA slower
than at 14:50 on this shared machine): native / Keras export 0.74 at 1 x 128, 0.80 at 16 x 128
(native at 77% / 92% of the peak); int8 1.34x (vocab MatMul alone 1.79x); export + validation
2.25 s vs 15.6 s; generation fp32 1.54 ms/token = 0.47x keras-hub XLA (3.30 ms), int8 0.28x, and
the new floor (`decode_matmul_floor`: the step's MatMuls alone, same session options) 0.87 ms =
0.26x. Generation rounds now pause 0.1 s before each call (`settle_s`), because threads that
spin after a call (onnxruntime's default, ~50 ms of one core, measured) slowed whichever runner
came next: without the pause a spinning variant of our generator looked 30% faster than ours,
with it the two are equal (1.16 against 1.14 ms/token).

Why the two misses stand. fp32 generation: even a graph of nothing but one step's MatMuls (all
~21 MB of float32 weights read per token) is at 0.26x, so <= 0.33x leaves 0.07x for everything
else, and our step costs 1.5-1.8x that floor. Where the rest goes (interleaved, one process
without TensorFlow, ms per token): floor 0.69-0.79, our step graph with a fixed 48-token past
1.13-1.18 (onnxruntime's MultiHeadAttention for one query costs ~40 us per layer, measured alone;
GroupQueryAttention ~35 us; ~50 small nodes ~1-2 us each), feeding each step's `present.*` back as
the next `past_key_values.*` +0.13, our Python loop +0.03. Tried, not better: SkipLayerNormalization
in the step graph (-16 nodes; 0.95 against 0.91 ms per step), the portable attention (1.05),
IO binding with preallocated ping-pong cache buffers (1.72 against 1.68 ms/token), OrtValue
chaining without numpy (slower), spinning between runs (equal once measured fairly, above).
int8 at 16 x 128 cannot exceed the speed-up of its matmuls, and the biggest one alone reaches
only 1.5-2.1x across runs on this CPU (AVX2 u8s8 without VNNI; 7-bit weights, see
`export.precision`); the float32 softmax, GELU, LayerNorm and the 65 MB logits output are the
same in both (profile at 16 x 128, 2 threads: MatMul 136 ms fp32 against 90 ms int8
DynamicQuantizeMatMul; Attention 36 against QAttention 28). Tried and
not better: per-tensor weights (1.68x against 1.64x, 1 thread), quantizing MatMuls only (1.45x),
full-range weights (1.44x), `MatMulNBits` 8-bit (slower than fp32 at this size).
Issue 16 rows (2026-12-02 07:54 UTC, `python -m bench onnx_inference --quick`, one run, the
machine heavily shared: load average 5-7 on 2 cores, ORT matmul peak 33-35 GFLOP/s instead of
~145, so absolute times are ~2x the quiet runs above; only the same-run ratios mean something):
ms/token fp32 2.01, int8 0.82, int4 (MatMulNBits, block 32, accuracy_level 4) 0.95,
onnxruntime-genai on our `export.to_genai` folder 1.21, keras-hub XLA 2.45, floor 0.88. Ratios:
fp32 / floor 2.28 (target <= 1.25, NOT met), int8 / floor 0.93, int4 / floor 1.08; int4 / fp32
0.47 (target <= 0.4, NOT met); int4 / keras-hub XLA 0.39 (target <= 0.15, NOT met);
genai / ours 0.60 on the same graph: genai's C++ loop (its own cache buffers, no numpy copies)
takes 1.37x the floor where our Python loop takes 2.28x, so most of our distance to the floor is
the host loop and the past/present feeding, not the graph. Not measured yet: batched decoding
(batch 8 / 32) against keras-hub.
Shared cache buffers (2026-12-02 22:29 UTC, idle machine, load 0.2 before / 1.3 after, ORT
matmul peak 152-154 GFLOP/s, same command): the decoder-only cache graph's attention is
GroupQueryAttention, whose cache can be one buffer bound as past and present (no copy per step).
ms per token fp32 0.93 (1 thread 1.66), int8 0.92, int4 0.59, genai on our folder (its shared
buffer on) 1.56, keras-hub XLA 2.74, floor 0.61 (1 thread 1.10): fp32 / floor 1.51 (1 thread 1.51),
int4 / fp32 0.63, int4 / keras-hub XLA 0.21, genai / ours 1.69; fp32 / keras-hub XLA 0.34.
A second run (23:06, load 0.2 before, 1.2 after) with the int4 MatMul floor added: fp32 1.05 ms =
1.62x the floor 0.65 (one thread 1.29x), int4 0.59 = 0.56x fp32, the int4 MatMuls alone 0.32 =
0.49x the fp32 MatMuls alone (the lower bound of int4 / fp32 here), genai 1.37, keras-hub XLA 2.49.
The machine was shared with other engineers during development; only ratios from one run mean
something (runs under load 2-4, with the spinning artifact, gave 1.09-1.30 at 1 x 128).
"""

import os
import tempfile
import time

from bench import common
from bench.common import interleaved
from bench.ort_yardsticks import decode_matmul_floor, int8_matmul_ceiling, ort_matmul_peak_call, ort_session

VOCAB, LAYERS, D_MODEL, HEADS, D_FF, MAX_POSITIONS = 8000, 4, 256, 4, 1024, 256
PROMPT, NEW_TOKENS = 16, 64
LATENCY_GRAPHS = ("keras_export", "keras_export_ort_transformers", "native", "native_portable", "native_int8")


def forward_flops(batch, length):
    """Matmul FLOPs of one forward pass (projections, attention, FFN, vocabulary projection)."""
    tokens = batch * length
    per_layer = 2 * tokens * D_MODEL * (4 * D_MODEL + 2 * D_FF) + 2 * 2 * batch * length * length * D_MODEL
    return LAYERS * per_layer + 2 * tokens * D_MODEL * VOCAB


def node_count(path):
    import onnx

    return len(onnx.load(path, load_external_data=False).graph.node)


def build_models():
    """Our decoder-only model and keras-hub's GPT-2 of the same size (random weights, no dropout)."""
    import keras_hub
    import numpy as np

    from keras_transformer.models import DecoderOnlyTransformer

    ours = DecoderOnlyTransformer(
        VOCAB, LAYERS, D_MODEL, HEADS, D_FF, dropout=0.0, max_length=MAX_POSITIONS, positional="learned",
        norm_first=True, activation="gelu", scale_embeddings=False, layer_norm_epsilon=1e-5,
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS, hidden_dim=D_MODEL,
        intermediate_dim=D_FF, dropout=0.0, max_sequence_length=MAX_POSITIONS,
    )
    hub = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    ids = np.ones((1, 8), "int32")
    hub({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)})  # Keras exports called models only
    ours({"token_ids": ids})
    return ours, hub


def transformers_optimized(path, output):
    """The peer after onnxruntime's transformer optimizer (its Python fusions: opt_level=0; the
    session applies onnxruntime's own graph optimizations anyway). Needs `sympy`."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(path, model_type="gpt2", num_heads=HEADS, hidden_size=D_MODEL, opt_level=0)
    optimized.save_model_to_file(output)
    return output


def export_all(ours, hub, folder):
    """Write every graph; returns `{name: path}` and the export timings in seconds."""
    import onnx

    import export
    from export import precision
    from export.native import build, save_generation_graphs

    paths, timings = {name: os.path.join(folder, f"{name}.onnx") for name in LATENCY_GRAPHS}, {}
    start = time.perf_counter()
    export.to_onnx(ours, paths["native"], max_length=128, batch_sizes=(1, 3))
    timings["to_onnx_native_with_validation_s"] = time.perf_counter() - start
    start = time.perf_counter()
    hub.export(paths["keras_export"], format="onnx", verbose=False)
    timings["keras_model_export_onnx_s"] = time.perf_counter() - start
    transformers_optimized(paths["keras_export"], paths["keras_export_ort_transformers"])
    onnx.save(build(ours, opset=18, attention="portable"), paths["native_portable"])
    onnx.save(precision.convert(onnx.load(paths["native"]), "int8"), paths["native_int8"])
    for name, precision_name in (("generation", None), ("generation_int8", "int8"), ("generation_int4", "int4")):
        paths[name] = os.path.join(folder, name)
        save_generation_graphs(ours, paths[name], opset=18, precision=precision_name)
    paths["genai"] = os.path.join(folder, "genai")
    export.to_genai(ours, paths["genai"], opset=18)  # validated like any export
    return paths, timings


def _feeds(session, batch, length):
    import numpy as np

    ids = np.random.default_rng(0).integers(1, VOCAB, size=(batch, length))
    feeds = {}
    for graph_input in session.get_inputs():
        dtype = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}[graph_input.type]
        feeds[graph_input.name] = (ids if "token" in graph_input.name else np.ones_like(ids)).astype(dtype)
    return feeds


def latency(paths, shapes, threads, repeats, names=LATENCY_GRAPHS):
    """Median onnxruntime seconds per forward pass, `{graph: {shape: seconds}}` (interleaved;
    batch-1 rounds are short, so they get 3x the repeats), and the matmul peak FLOP/s measured
    in the same rounds, `{shape: flops}`."""
    sessions = {name: ort_session(paths[name], threads) for name in names}
    results, peaks = {name: {} for name in names}, {}
    peak_call, peak_flops = ort_matmul_peak_call(threads)
    for batch, length in shapes:
        calls = {"matmul_peak": peak_call}
        for name, session in sessions.items():
            feeds = _feeds(session, batch, length)
            calls[name] = lambda s=session, f=feeds: s.run(None, f)
        seconds = interleaved(calls, repeats * (3 if batch == 1 else 1))
        peaks[f"{batch}x{length}"] = peak_flops / seconds.pop("matmul_peak")
        for name, value in seconds.items():
            results[name][f"{batch}x{length}"] = value
    return results, peaks


def keras_predict_seconds(ours, repeats):
    import numpy as np

    ids = np.random.default_rng(0).integers(1, VOCAB, size=(16, 128)).astype("int32")
    ours.predict({"token_ids": ids}, verbose=0)
    seconds, _ = common.time_call(lambda: ours.predict({"token_ids": ids}, verbose=0), repeats=repeats, warmup=1)
    return seconds


def hub_generator(backbone, jit_compile):
    """keras-hub's cached greedy `generate` on `backbone` (a fresh CausalLM per XLA setting)."""
    import keras_hub
    import numpy as np

    causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    causal_lm.compile(sampler="greedy", jit_compile=jit_compile)
    total = PROMPT + NEW_TOKENS
    token_ids = np.zeros((1, total), "int32")
    token_ids[0, :PROMPT] = np.arange(1, PROMPT + 1)
    padding_mask = np.zeros((1, total), bool)
    padding_mask[0, :PROMPT] = True
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    return lambda: causal_lm.generate(inputs, stop_token_ids=None)


def onnx_generator(folder, **options):
    """`export.decoding.OnnxGenerator` (its defaults unless `options` say otherwise)."""
    from export.decoding import OnnxGenerator

    generator = OnnxGenerator(folder, providers=["CPUExecutionProvider"], **options)
    prompt = list(range(1, PROMPT + 1))
    return lambda: generator.generate([prompt], max_new_tokens=NEW_TOKENS, temperature=0.0)


def genai_generator(folder):
    """onnxruntime-genai (greedy, batch 1) on our `export.to_genai` folder, the same prompt;
    `min_length` keeps it from stopping at its eos id, so it makes as many tokens as ours."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(folder)
    prompt = np.arange(1, PROMPT + 1, dtype=np.int32)[None, :]

    def run():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=PROMPT + NEW_TOKENS, min_length=PROMPT + NEW_TOKENS, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        while not generator.is_done():
            generator.generate_next_token()
        return np.asarray(generator.get_sequence(0))[None, :]
    return run


def generation_ms_per_token(generators, repeats, yardsticks=()):
    """Median ms per new token of each `{name: run}` of `generators` (prefill included; their
    output length is checked) and of `yardsticks` (timed as they are), all taking turns."""
    def checked(name, run):
        def call():
            tokens = run()
            tokens = tokens["token_ids"] if isinstance(tokens, dict) else tokens  # keras-hub: a dict
            assert tokens.shape[-1] == PROMPT + NEW_TOKENS, (name, tokens.shape)
        return call

    # The generation sessions spin between steps (see `export.decoding._session`), and so for
    # ~50 ms after a call: the pause keeps that off the next runner's clock.
    calls = {name: checked(name, run) for name, run in generators.items()}
    seconds = interleaved({**calls, **dict(yardsticks)}, repeats, warmup=1, settle_s=0.1)
    return {name: 1000 * value / NEW_TOKENS for name, value in seconds.items()}


def main(argv=()):
    quick = "--quick" in argv
    repeats = 3 if quick else 10
    threads = os.cpu_count() or 1
    shapes = [(1, 128), (16, 128)]
    ours, hub = build_models()
    with tempfile.TemporaryDirectory(prefix="kt-bench-onnx-") as folder:
        paths, export_times = export_all(ours, hub, folder)
        nodes = {name: node_count(paths[name]) for name in LATENCY_GRAPHS}
        nodes["generation/decoder_with_past"] = node_count(os.path.join(paths["generation"], "decoder_with_past.onnx"))
        peak_tf = common.matmul_peak_flops(repeats=repeats)
        int8_ceiling = int8_matmul_ceiling(threads, repeats, 16 * 128, D_MODEL, VOCAB)
        times, peaks = latency(paths, shapes, threads, repeats)
        # One thread as well: less disturbed when other processes share the cores.
        int8_ceiling_1 = int8_matmul_ceiling(1, repeats, 16 * 128, D_MODEL, VOCAB)
        times_1, _ = latency(paths, shapes, 1, repeats, names=("keras_export", "native", "native_portable", "native_int8"))
        generation = generation_ms_per_token({
            "onnx": onnx_generator(paths["generation"]),
            "onnx_1_thread": onnx_generator(paths["generation"], intra_op_num_threads=1),
            "onnx_int8": onnx_generator(paths["generation_int8"]),
            "onnx_int4": onnx_generator(paths["generation_int4"]),
            "genai_fp32": genai_generator(paths["genai"]),
            "keras_hub_xla": hub_generator(hub.backbone, True),
            "keras_hub_no_xla": hub_generator(hub.backbone, False),
        }, repeats, yardsticks={
            "matmul_floor": decode_matmul_floor(folder, LAYERS, D_MODEL, D_FF, VOCAB, NEW_TOKENS),
            "matmul_floor_1_thread": decode_matmul_floor(folder, LAYERS, D_MODEL, D_FF, VOCAB, NEW_TOKENS, threads=1),
            "matmul_floor_int4": decode_matmul_floor(folder, LAYERS, D_MODEL, D_FF, VOCAB, NEW_TOKENS,
                                                     precision="int4"),
        })
    predict = keras_predict_seconds(ours, repeats)
    return report(locals())


def report(m):
    """Print the tables and write `bench/results/onnx_inference.json` from `main`'s measurements."""
    times, generation, export_times, nodes, peaks = m["times"], m["generation"], m["export_times"], m["nodes"], m["peaks"]
    rows, fractions = [], {}
    for name, by_shape in times.items():
        for shape, seconds in by_shape.items():
            batch, length = (int(v) for v in shape.split("x"))
            fractions[f"{name}@{shape}"] = fraction = forward_flops(batch, length) / seconds / peaks[shape]
            rows.append((name, shape, f"{1000 * seconds:.2f}", f"{forward_flops(batch, length) / seconds / 1e9:.0f}",
                         f"{100 * fraction:.0f}%", nodes[name]))
    common.print_table("onnxruntime latency (median, interleaved)",
                       ["graph", "batch x length", "ms", "GFLOP/s", "of peak", "nodes"], rows)
    hub_xla = generation["keras_hub_xla"]
    ratios = {}
    for shape, target in (("1x128", 0.85), ("16x128", 0.90)):
        ratios[f"native / keras_export @{shape} (target <= {target})"] = times["native"][shape] / times["keras_export"][shape]
        ratios[f"native / keras_export_ort_transformers @{shape}"] = (
            times["native"][shape] / times["keras_export_ort_transformers"][shape])
        ratios[f"native (fused attention) / native_portable @{shape}"] = times["native"][shape] / times["native_portable"][shape]
    ratios.update({
        "native fp32 / int8 @16x128 (target >= 1.8)": times["native"]["16x128"] / times["native_int8"]["16x128"],
        "fp32 / int8 of the vocabulary MatMul alone @16x128 (ceiling)": m["int8_ceiling"],
        "onnx generate / keras-hub XLA, ms per token (target <= 0.33)": generation["onnx"] / hub_xla,
        "onnx generate 1 thread / keras-hub XLA": generation["onnx_1_thread"] / hub_xla,
        "onnx generate int8 / keras-hub XLA": generation["onnx_int8"] / hub_xla,
        "onnx generate / keras-hub no XLA": generation["onnx"] / generation["keras_hub_no_xla"],
        "the step's MatMuls alone (fp32 floor) / keras-hub XLA": generation["matmul_floor"] / hub_xla,
        "onnx generate fp32 / the step's MatMuls alone (target <= 1.25)": generation["onnx"] / generation["matmul_floor"],
        "onnx generate fp32 1 thread / the step's MatMuls alone, 1 thread":
            generation["onnx_1_thread"] / generation["matmul_floor_1_thread"],
        "onnx generate int8 / the fp32 step's MatMuls alone": generation["onnx_int8"] / generation["matmul_floor"],
        "onnx generate int4 / the fp32 step's MatMuls alone": generation["onnx_int4"] / generation["matmul_floor"],
        "the step's int4 / fp32 MatMuls alone (int4 / fp32 floor)":
            generation["matmul_floor_int4"] / generation["matmul_floor"],
        "onnx generate int4 / the step's int4 MatMuls alone": generation["onnx_int4"] / generation["matmul_floor_int4"],
        "onnx generate int4 / fp32, ms per token (target <= 0.4)": generation["onnx_int4"] / generation["onnx"],
        "onnx generate int4 / keras-hub XLA (target <= 0.15)": generation["onnx_int4"] / hub_xla,
        "onnxruntime-genai fp32 / our generate fp32, same folder graph": generation["genai_fp32"] / generation["onnx"],
        "to_onnx native + validation / keras model.export (target < 1)":
            export_times["to_onnx_native_with_validation_s"] / export_times["keras_model_export_onnx_s"],
        "keras predict / native @16x128": m["predict"] / times["native"]["16x128"],
    })
    times_1 = m["times_1"]
    ratios.update({
        "1 thread: native / keras_export @1x128": times_1["native"]["1x128"] / times_1["keras_export"]["1x128"],
        "1 thread: native / keras_export @16x128": times_1["native"]["16x128"] / times_1["keras_export"]["16x128"],
        "1 thread: native / native_portable @1x128": times_1["native"]["1x128"] / times_1["native_portable"]["1x128"],
        "1 thread: native / native_portable @16x128": times_1["native"]["16x128"] / times_1["native_portable"]["16x128"],
        "1 thread: native fp32 / int8 @16x128": times_1["native"]["16x128"] / times_1["native_int8"]["16x128"],
        "1 thread: fp32 / int8 of the vocabulary MatMul alone (ceiling)": m["int8_ceiling_1"],
    })
    common.print_table("ratios (same run)", ["ratio", "value"], [(k, f"{v:.3f}") for k, v in ratios.items()])
    common.print_table("generation (ms per new token) and export", ["measure", "value"], [
        *((f"generate {name}, ms/token", f"{value:.2f}") for name, value in generation.items()),
        ("to_onnx native (+validation), s", f"{export_times['to_onnx_native_with_validation_s']:.2f}"),
        ("keras model.export onnx, s", f"{export_times['keras_model_export_onnx_s']:.2f}"),
        ("keras predict 16x128, ms", f"{1000 * m['predict']:.1f}"),
        ("matmul peak ORT (in the latency rounds, 1x128 / 16x128), GFLOP/s",
         " / ".join(f"{value / 1e9:.0f}" for value in peaks.values())),
        ("matmul peak TF (before), GFLOP/s", f"{m['peak_tf'] / 1e9:.0f}"),
        ("load average (1 min) at the end", f"{os.getloadavg()[0]:.2f}"),
    ])
    path = common.write_json("onnx_inference", {
        "machine": common.machine_info(), "load_average": os.getloadavg(), "threads": m["threads"],
        "quick": m["quick"], "session_options": "ORT_ENABLE_ALL, intra_op_num_threads=threads, "
        "session.force_spinning_stop=1, other defaults; the same for every graph",
        "latency_s": times, "latency_1_thread_s": m["times_1"], "fraction_of_peak": fractions,
        "matmul_peak_flops": {"tensorflow_before": m["peak_tf"], "onnxruntime_same_rounds": peaks},
        "generation_ms_per_token": generation, "export_s": export_times, "keras_predict_16x128_s": m["predict"],
        "node_counts": nodes, "ratios": ratios,
    })
    print(f"results: {path}")
    return ratios


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
