"""Batched greedy decoding: `export.decoding` against keras-hub's XLA `generate`, same weights.

`.venv/bin/python -m bench batched_decoding [--quick]`

The GPT-2-shaped model of `bench/onnx_inference.py` (vocab 8000, 4 layers, d_model 256, 4 heads,
d_ff 1024, learned positions, tied embeddings), with tanh GELU so that keras-hub's
`GPT2Backbone` holds it: ours is written as a keras-hub preset (`save_to_preset`) and
keras-hub loads those very weights. For batch 8 and 32, prompts of different lengths
(`PROMPT_LENGTHS`, fixed seed) and `NEW_TOKENS` greedy tokens per row:

* ours: `OnnxGenerator` on the fp32 KV-cache graphs (`save_generation_graphs`), its default
  threads, and pinned to one thread;
* keras-hub: `GPT2CausalLM.generate` (greedy sampler, `jit_compile=True`) on the right-padded
  prompts and their padding mask, a buffer of `max(prompt) + NEW_TOKENS` positions.

Both fill the same buffer position by position from the shortest prompt on (a row takes its own
prompt token until its prompt ends), so they run the same number of steps; keras-hub fills the
shorter rows beyond `NEW_TOKENS`, which costs it nothing extra. Throughput counts `NEW_TOKENS`
per row for both (`batch * NEW_TOKENS / seconds`). The greedy tokens are compared: the share of
the rows' first `NEW_TOKENS` new tokens that the two choose alike (float32 rounding can flip a
near-tie, after which a row diverges). Rounds interleaved, medians, a pause before each call.
Results: `bench/results/batched_decoding.json`.
"""

import os
import tempfile

import numpy as np

from bench import common
from bench.common import interleaved
from bench.onnx_inference import D_FF, D_MODEL, HEADS, LAYERS, MAX_POSITIONS, VOCAB

BATCHES = (8, 32)
PROMPT_LENGTHS = (8, 48)  # each prompt's length is drawn from [8, 48)
NEW_TOKENS = 32
TARGET = 3.0  # our tokens/s over keras-hub XLA's (issue 16)


def build_models(folder):
    """Our model (random weights, tanh GELU) and keras-hub's `GPT2CausalLM` loading its preset."""
    import keras_hub

    from keras_transformer.models import DecoderOnlyTransformer

    ours = DecoderOnlyTransformer(
        VOCAB, LAYERS, D_MODEL, HEADS, D_FF, dropout=0.0, max_length=MAX_POSITIONS, positional="learned",
        norm_first=True, activation="gelu_approximate", scale_embeddings=False, layer_norm_epsilon=1e-5,
    )
    ours({"token_ids": np.ones((1, 8), "int32")})
    preset = os.path.join(folder, "preset")
    ours.save_to_preset(preset)
    backbone = keras_hub.models.GPT2Backbone.from_preset(preset)
    hub = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    hub.compile(sampler="greedy", jit_compile=True)
    return ours, hub


def prompts_for(batch, seed=0):
    """`batch` prompts of different lengths in `PROMPT_LENGTHS`, ids in [1, VOCAB)."""
    rng = np.random.default_rng(seed + batch)
    lengths = rng.integers(*PROMPT_LENGTHS, size=batch)
    return [rng.integers(1, VOCAB, size=int(length)).tolist() for length in lengths]


def hub_call(hub, prompts):
    """keras-hub's greedy `generate` over the right-padded prompts; returns the token buffer."""
    width = max(map(len, prompts)) + NEW_TOKENS
    token_ids = np.zeros((len(prompts), width), "int32")
    padding_mask = np.zeros((len(prompts), width), bool)
    for row, prompt in enumerate(prompts):
        token_ids[row, :len(prompt)], padding_mask[row, :len(prompt)] = prompt, True
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    return lambda: np.asarray(hub.generate(inputs, stop_token_ids=None)["token_ids"])


def onnx_call(generator, prompts):
    return lambda: generator.generate(prompts, max_new_tokens=NEW_TOKENS, temperature=0.0)


def agreement(prompts, ours, theirs):
    """Share of the first `NEW_TOKENS` new tokens of every row that both chose alike."""
    same = [np.mean(ours[row, len(p):len(p) + NEW_TOKENS] == theirs[row, len(p):len(p) + NEW_TOKENS])
            for row, p in enumerate(prompts)]
    return float(np.mean(same))


def main(argv=()):
    from export.decoding import OnnxGenerator
    from export.native import save_generation_graphs

    repeats = 3 if "--quick" in argv else 7
    results = {}
    with tempfile.TemporaryDirectory(prefix="kt-bench-batched-") as folder:
        ours, hub = build_models(folder)
        save_generation_graphs(ours, os.path.join(folder, "fp32"), opset=18)
        generators = {"onnx": OnnxGenerator(os.path.join(folder, "fp32"), providers=["CPUExecutionProvider"]),
                      "onnx_1_thread": OnnxGenerator(os.path.join(folder, "fp32"), providers=["CPUExecutionProvider"],
                                                     intra_op_num_threads=1)}
        for batch in BATCHES:
            prompts = prompts_for(batch)
            calls = {name: onnx_call(generator, prompts) for name, generator in generators.items()}
            calls["keras_hub_xla"] = hub_call(hub, prompts)
            same = agreement(prompts, calls["onnx"](), calls["keras_hub_xla"]())
            seconds = interleaved(calls, repeats, warmup=1, settle_s=0.1, alternate=True)
            tokens_per_s = {name: batch * NEW_TOKENS / value for name, value in seconds.items()}
            results[batch] = {"seconds": seconds, "tokens_per_s": tokens_per_s, "greedy_agreement": same,
                              "prompt_lengths": [len(p) for p in prompts]}
    return report(results, repeats)


def report(results, repeats):
    rows, ratios = [], {}
    for batch, measured in results.items():
        speeds = measured["tokens_per_s"]
        for name, value in speeds.items():
            rows.append((batch, name, f"{value:.0f}", f"{1000 * measured['seconds'][name]:.0f}"))
        ratios[f"batch {batch}: onnx / keras-hub XLA, tokens/s (target >= {TARGET})"] = (
            speeds["onnx"] / speeds["keras_hub_xla"])
        ratios[f"batch {batch}: onnx 1 thread / keras-hub XLA, tokens/s"] = speeds["onnx_1_thread"] / speeds["keras_hub_xla"]
        ratios[f"batch {batch}: greedy tokens equal to keras-hub's (share)"] = measured["greedy_agreement"]
    common.print_table(f"batched greedy decoding, {NEW_TOKENS} new tokens per row (median of {repeats})",
                       ["batch", "runner", "tokens/s", "ms per call"], rows)
    common.print_table("ratios (same run)", ["ratio", "value"], [(k, f"{v:.3f}") for k, v in ratios.items()])
    path = common.write_json("batched_decoding", {
        "machine": common.machine_info(), "load_average": os.getloadavg(), "new_tokens": NEW_TOKENS,
        "results": {str(batch): measured for batch, measured in results.items()}, "ratios": ratios,
    })
    print(f"results: {path}")
    return ratios


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
