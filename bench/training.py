"""Training throughput (`model.fit`, with and without XLA) and Keras inference latency.

Our encoder and decoder stacks against the same sizes built from keras-hub's
`TransformerEncoder`/`TransformerDecoder` and from core `keras.layers.MultiHeadAttention`
(vocab 8000, d_model 256, 4 heads, d_ff 1024, 4 layers, batch 16 x 128, dropout 0.1 everywhere,
untied output projection everywhere so every model does the same arithmetic). Inputs come from
a repeated `tf.data` dataset (numpy inputs to `fit` stall at the start of some epochs).

All models are built and warmed up first (and one untimed round), then timed in interleaved
rounds (one 5-step epoch of each model per round, in alternating order, the median round
kept), so a busy neighbour on a shared machine slows every model alike. Results: ratios against the best peer of the same
family, and the fraction of the float32 matmul peak measured in the same run (a training step
counted as three forward passes). Our model with no blocks ("head only": embedding, vocabulary
projection, loss, Adam) runs in the same rounds, which splits a step into what every model
shares and what its stack costs, and gives what our stack would need for the 1.2x goal.

Run: `python -m bench training [--quick]`.

Last full run: 2026-11-21 18:38-18:56 UTC, `python -m bench training` (a warm-up round, then
7 rounds of 5 steps, both jit modes, median round), 2-core AMD EPYC, TensorFlow 2.21 (oneDNN
off, its default on this CPU), same-run matmul peak 133 GFLOP/s: decoder ours 2,391 tokens/s vs
best peer (keras-hub, no XLA) 2,152 = 1.11x; encoder ours 2,383 vs keras-hub (no XLA) 2,142 =
1.11x; stack alone (below) 1.21x / 1.21x. The 1.2x goal is not met at `fit` level. Split of a
step (ms): head (our model with no blocks) 321-335; the rest (blocks forward, backward, Adam)
ours 525-535, best peer 622-631; 1.2x needs our rest <= 462-472 ms, less than our blocks'
forward + backward alone take (506-509 ms median) before their optimizer update. XLA is slower
for our stacks. Earlier runs (best of 2 rounds of 10 steps, a noisier statistic): 1.09x / 1.10x,
1.00x / 1.08x, and 1.32x / 0.95x in one run; median round without the warm-up round: 1.07x /
1.02x. In-process A/B at 18:30 (8 alternations, ours vs core Keras decoder): 1.15x with `fit`,
1.06x with `train_on_batch`, per-round ratios 0.81-1.22: the machine's noise is as large as the
gap to the goal.

Where the time goes (`stack_seconds`, also printed by this benchmark: embedding + 4 blocks,
forward + backward in one `tf.function`, no logits; interleaved, min / median of 12-15
alternations, several runs): ours 437-506 / 497-586 ms, keras-hub 582-672 / 663-752 ms, core
Keras 573-662 / 631-720 ms: our stack is 1.18-1.34x the peers' (same-run ratios). The vocabulary
projection, its loss and Adam (~45% of a step) are the same for everyone and dilute that to
~1.1x. In our step (TensorFlow profiler, one inter-op thread): MatMul 47% (these shapes run at
95-130 GFLOP/s in Eigen), the attention's batched 128 x 64 products 16% (Eigen runs them at
20-40 GFLOP/s), LayerNorm ~11%, dropout ~10% (its random numbers alone ~5.5 ns per element).
Tried, none measurably faster at `model.fit` level on this shared machine (run-to-run spread
+-10%): a LayerNorm with a hand-written gradient, 1/sqrt(d_k) folded into the query projection,
dropout drawing one 32-bit random word per 2 (16-bit thresholds) or 4 (8-bit, rates in steps of
1/256) elements (stack-only 1.03-1.16x, not confirmed by `fit`), the feed-forward as 2-D MatMul
+ BiasAdd; TF_ENABLE_ONEDNN_OPTS=1 makes the batched products 4x faster but every stack equal
(ours 511 ms, peers 524-535 ms).
"""

import argparse
import gc
import statistics
import time

from bench import common  # noqa: I001 - sets the TensorFlow environment before keras loads

import keras
import numpy as np
import tensorflow as tf

SIZES = dict(vocab_size=8000, d_model=256, num_heads=4, d_ff=1024, num_layers=4, batch=16,
             length=128, dropout=0.1)
IMPLEMENTATIONS = ("ours", "keras_hub", "core_keras")
FAMILIES = ("encoder", "decoder")
HEAD_ONLY = "head_only"  # our model with 0 blocks
TARGET_RATIO = 1.2  # the goal: our tokens/s over the best peer's


def forward_flops_per_token(sizes):
    """Matmul FLOPs of one forward pass per token (attention counted over the full length)."""
    d, dff, layers = sizes["d_model"], sizes["d_ff"], sizes["num_layers"]
    projections = 4 * d * d + 2 * d * dff  # Q, K, V, O and the two feed-forward maps
    attention = 2 * sizes["length"] * d  # Q K^T and P V
    return 2 * (layers * (projections + attention) + d * sizes["vocab_size"])


# -- the three stacks ------------------------------------------------------------------------


def _ours(family, sizes, ids):
    from keras_transformer.layers import DecoderBlock, EncoderBlock, TokenAndPositionEmbedding

    rate = sizes["dropout"]
    x = TokenAndPositionEmbedding(sizes["vocab_size"], sizes["d_model"], dropout=rate)(ids)
    for _ in range(sizes["num_layers"]):
        if family == "encoder":
            block = EncoderBlock(sizes["num_heads"], sizes["d_ff"], dropout=rate, attention_dropout=rate)
        else:
            block = DecoderBlock(sizes["num_heads"], sizes["d_ff"], dropout=rate,
                                 attention_dropout=rate, cross_attention=False)
        x = block(x)
    return x


def _keras_hub(family, sizes, ids):
    import keras_hub

    x = keras_hub.layers.TokenAndPositionEmbedding(
        sizes["vocab_size"], sizes["length"], sizes["d_model"]
    )(ids)
    for _ in range(sizes["num_layers"]):
        layer = (keras_hub.layers.TransformerEncoder if family == "encoder"
                 else keras_hub.layers.TransformerDecoder)
        x = layer(sizes["d_ff"], sizes["num_heads"], dropout=sizes["dropout"])(x)
    return x


def _core_keras(family, sizes, ids):
    d, rate = sizes["d_model"], sizes["dropout"]
    x = keras.layers.Embedding(sizes["vocab_size"], d)(ids)
    # Position ids from the (symbolic) input: an Embedding called on a concrete arange ran once
    # at build time, froze its output into the model as a constant (never trained), and on
    # PyTorch carried an autograd graph that the second training step cannot backward through.
    position_ids = keras.ops.zeros_like(ids) + keras.ops.arange(sizes["length"], dtype="int32")
    x = x + keras.layers.Embedding(sizes["length"], d)(position_ids)
    for _ in range(sizes["num_layers"]):
        attended = keras.layers.MultiHeadAttention(
            sizes["num_heads"], d // sizes["num_heads"], dropout=rate
        )(x, x, use_causal_mask=family == "decoder")
        x = keras.layers.LayerNormalization(epsilon=1e-6)(x + keras.layers.Dropout(rate)(attended))
        hidden = keras.layers.Dense(sizes["d_ff"], activation="relu")(x)
        hidden = keras.layers.Dense(d)(hidden)
        x = keras.layers.LayerNormalization(epsilon=1e-6)(x + keras.layers.Dropout(rate)(hidden))
    return x


BUILDERS = {"ours": _ours, "keras_hub": _keras_hub, "core_keras": _core_keras}


def build_model(implementation, family, sizes, jit_compile):
    """A compiled language-model-shaped model: token ids -> logits over the vocabulary."""
    ids = keras.Input((sizes["length"],), dtype="int32", name="token_ids")
    hidden = BUILDERS[implementation](family, sizes, ids)
    logits = keras.layers.Dense(sizes["vocab_size"], name="logits")(hidden)
    model = keras.Model(ids, logits, name=f"{implementation}_{family}")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def _dataset(sizes, seed=0):
    rng = np.random.default_rng(seed)
    shape = (sizes["batch"], sizes["length"])
    ids = rng.integers(1, sizes["vocab_size"], shape).astype("int32")
    targets = rng.integers(1, sizes["vocab_size"], shape).astype("int32")
    return tf.data.Dataset.from_tensors((ids, targets)).repeat().prefetch(2), ids


class _EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch (the data pipeline set-up of `fit` is excluded)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def stack_seconds(implementations, families, sizes, repeats):
    """`{(implementation, family): (min, median)}` seconds of one forward + backward pass of the
    stack alone: embedding and blocks, without the vocabulary projection, the loss and the
    optimizer, which are the same for everyone. One `tf.function` per stack (traced in the first
    of two warm-up rounds), calls interleaved in alternating order, gradients of every weight
    against a fixed random upstream gradient."""
    ids = tf.constant(np.random.default_rng(1).integers(1, sizes["vocab_size"], (sizes["batch"], sizes["length"]),
                                                        dtype=np.int32))
    upstream = tf.random.stateless_normal((sizes["batch"], sizes["length"], sizes["d_model"]), seed=(1, 2))
    steps = {}
    for implementation in implementations:
        for family in families:
            keras.utils.set_random_seed(0)
            inputs = keras.Input((sizes["length"],), dtype="int32")
            stack = keras.Model(inputs, BUILDERS[implementation](family, sizes, inputs))

            @tf.function
            def step(stack=stack):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(stack(ids, training=True) * upstream)
                grads = tape.gradient(loss, stack.trainable_variables)
                return tf.add_n([tf.reduce_sum(tf.convert_to_tensor(g)) for g in grads])

            steps[(implementation, family)] = lambda step=step: step().numpy()
    return common.interleaved(steps, repeats, warmup=2, alternate=True,
                              statistic=lambda seconds: (min(seconds), statistics.median(seconds)))


def run(quick=False, implementations=IMPLEMENTATIONS, families=FAMILIES, jit_modes=(False, True),
        steps=None, rounds=None, log=print):
    """Measure every (implementation, family, jit) configuration; return a result dict."""
    sizes = dict(SIZES)
    steps = steps or (3 if quick else 5)
    rounds = rounds or (1 if quick else 7)
    dataset, sample = _dataset(sizes)
    tokens_per_step = sizes["batch"] * sizes["length"]
    log("Measuring the float32 matmul peak ...")
    peak = common.matmul_peak_flops()
    log(f"  {peak / 1e9:.1f} GFLOP/s (measured again after the runs; the best is kept)")

    # HEAD_ONLY: our model without blocks (embedding, vocabulary projection, loss, Adam), timed in
    # the same rounds, so a step splits into what every model shares and what its stack costs.
    configurations = [(implementation, family, jit) for implementation in implementations
                      for family in families for jit in jit_modes]
    if "ours" in implementations:
        configurations += [(HEAD_ONLY, family, False) for family in families]
    models = {}
    for key in configurations:
        implementation, family, jit = key
        start = time.perf_counter()
        keras.utils.set_random_seed(0)
        model = (build_model("ours", family, dict(sizes, num_layers=0), jit)
                 if implementation == HEAD_ONLY else build_model(implementation, family, sizes, jit))
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace/compile
        models[key] = model
        log(f"  built + warmed {implementation:<10} {family:<7} jit={jit!s:<5} "
            f"({time.perf_counter() - start:.0f} s)")

    def epoch(model):
        timer = _EpochTimer()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
        return timer.seconds[0] / steps

    log(f"  timing 1 untimed + {rounds} timed rounds of {steps} steps, in alternating order ...")
    # The first epochs after building ran 25-40% slower (measured): one round is not timed.
    round_seconds = common.interleaved({key: (lambda model=model: epoch(model)) for key, model in models.items()},
                                       rounds, warmup=1, alternate=True, statistic=list, self_timed=True)
    # The median round: on a shared machine the best round of one model and of another can fall
    # in a quiet and a busy moment; the median of several interleaved rounds is steadier.
    step_seconds = {key: statistics.median(values) for key, values in round_seconds.items()}

    latency = {}
    for key, model in models.items():
        seconds, _ = common.time_call(lambda: model.predict_on_batch(sample),
                                      repeats=3 if quick else 10, warmup=1)
        latency[key] = seconds
    del models
    gc.collect()
    peak = max(peak, common.matmul_peak_flops())

    stacks = {}
    if keras.backend.backend() == "tensorflow":  # the stack-alone timing is a tf.GradientTape step
        log("Stack alone (forward + backward, no logits/loss/optimizer) ...")
        stacks = stack_seconds(implementations, families, sizes, repeats=4 if quick else 15)
    stack_only = []
    for (implementation, family), (fastest, median) in stacks.items():
        peer_medians = [m for (i, f), (_, m) in stacks.items() if f == family and i != "ours"]
        ratio = min(peer_medians) / median if implementation == "ours" and peer_medians else None
        stack_only.append(dict(implementation=implementation, family=family, min_ms=fastest * 1e3,
                               median_ms=median * 1e3, best_peer_median_over_this_median=ratio))

    train_flops = 3 * forward_flops_per_token(sizes)
    results = []
    for key, median_seconds in step_seconds.items():
        implementation, family, jit = key
        if implementation == HEAD_ONLY:
            continue
        tokens_per_second = tokens_per_step / median_seconds
        results.append(dict(
            implementation=implementation, family=family, jit_compile=jit,
            tokens_per_second=tokens_per_second, round_seconds=round_seconds[key],
            fraction_of_matmul_peak=tokens_per_second * train_flops / peak,
            inference_ms_per_batch=latency[key] * 1e3,
        ))
    for family in families:
        peers = [r["tokens_per_second"] for r in results
                 if r["family"] == family and r["implementation"] != "ours"]
        for r in results:
            if r["family"] == family:
                r["ratio_to_best_peer"] = r["tokens_per_second"] / max(peers) if peers else None
    return dict(benchmark="training", quick=quick, sizes=sizes, steps_per_epoch=steps,
                rounds=rounds, matmul_peak_gflops=peak / 1e9,
                goal=_goal_needs(step_seconds, families, sizes, peak),
                train_flops_per_token=train_flops, machine=common.machine_info(),
                results=results, stack_only=stack_only)


def _goal_needs(step_seconds, families, sizes, peak):
    """Per family: how a `fit` step splits into the head every model shares (timed as our model
    with no blocks) and the rest (the blocks' forward, backward and optimizer update), for ours and
    the best peer, and how fast our rest would have to be for `TARGET_RATIO` x the best peer."""
    stack_flops = 3 * forward_flops_per_token(dict(sizes, vocab_size=0)) * sizes["batch"] * sizes["length"]

    def of_peak(seconds):
        return stack_flops / seconds / peak if seconds > 0 else float("inf")

    goal = []
    for family in families:
        steps = {key: seconds for key, seconds in step_seconds.items() if key[1] == family}
        head = steps.get((HEAD_ONLY, family, False))
        ours = min((s for (i, _, _), s in steps.items() if i == "ours"), default=None)
        peer = min((s for (i, _, _), s in steps.items() if i not in ("ours", HEAD_ONLY)), default=None)
        if None in (head, ours, peer):
            continue
        needed = peer / TARGET_RATIO - head
        goal.append(dict(family=family, head_ms=head * 1e3, ours_rest_ms=(ours - head) * 1e3,
                         best_peer_rest_ms=(peer - head) * 1e3, needed_rest_ms=needed * 1e3,
                         ours_rest_of_peak=of_peak(ours - head),
                         best_peer_rest_of_peak=of_peak(peer - head), needed_rest_of_peak=of_peak(needed)))
    return goal


def report(data):
    """Print the table; write JSON and the bar chart. Returns the written paths."""
    rows, bars = [], {}
    for r in sorted(data["results"], key=lambda r: (r["family"], -r["tokens_per_second"])):
        label = f"{r['family']} {r['implementation']} jit={r['jit_compile']}"
        ratio = r.get("ratio_to_best_peer")
        rows.append([label, f"{r['tokens_per_second']:,.0f}",
                     f"{100 * r['fraction_of_matmul_peak']:.0f}%",
                     "-" if ratio is None else f"{ratio:.2f}x",
                     f"{r['inference_ms_per_batch']:.1f}"])
        bars[label] = r["tokens_per_second"]
    common.print_table(
        f"Training (model.fit), batch {data['sizes']['batch']}x{data['sizes']['length']}; "
        f"matmul peak {data['matmul_peak_gflops']:.0f} GFLOP/s",
        ["configuration", "tokens/s", "of peak", "vs best peer", "infer ms/batch"], rows)
    common.print_table(
        "Stack alone: forward + backward, no vocabulary projection, loss or optimizer",
        ["stack", "min ms", "median ms", "best peer / ours (medians)"],
        [[f"{r['family']} {r['implementation']}", f"{r['min_ms']:.0f}", f"{r['median_ms']:.0f}",
          "" if r["best_peer_median_over_this_median"] is None else f"{r['best_peer_median_over_this_median']:.2f}x"]
         for r in sorted(data.get("stack_only", []), key=lambda r: (r["family"], r["median_ms"]))])
    common.print_table(
        f"A fit step = head (our model with 0 blocks) + the rest (the blocks' forward, backward and "
        f"Adam update); the rest's FLOPs over its time, as a fraction of the peak, in brackets",
        ["family", "head ms", "ours: rest ms", "best peer: rest ms", f"rest for {TARGET_RATIO}x: ms"],
        [[g["family"], f"{g['head_ms']:.0f}",
          f"{g['ours_rest_ms']:.0f} ({100 * g['ours_rest_of_peak']:.0f}%)",
          f"{g['best_peer_rest_ms']:.0f} ({100 * g['best_peer_rest_of_peak']:.0f}%)",
          f"{g['needed_rest_ms']:.0f} ({100 * g['needed_rest_of_peak']:.0f}%)"]
         for g in data.get("goal", [])])
    json_path = common.write_json("training", data)  # first: the picture must not risk the numbers
    print(f"wrote {json_path}", flush=True)
    png_path = common.write_bar_chart("training", bars, "Training tokens/s (model.fit)", "tokens/s")
    if png_path:
        print(f"wrote {png_path}")
    return json_path, png_path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few steps, one round")
    parser.add_argument("--no-jit", action="store_true", help="skip the jit_compile=True runs")
    parser.add_argument("--only", choices=FAMILIES, help="measure one family only")
    parser.add_argument("--steps", type=int, help="timed steps per epoch (default 5, quick 3)")
    parser.add_argument("--rounds", type=int, help="timed rounds after one untimed round (default 7, quick 1)")
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"),
                        help="Keras backend (set before Keras loads, by bench.common; default tensorflow). "
                             "Ours and keras-hub run on the same backend; the stack-alone timing is TF only")
    args, _ = parser.parse_known_args(argv)
    jit_modes = (False,) if args.no_jit else (False, True)
    if keras.backend.backend() == "jax":
        jit_modes = (True,)  # fit is always XLA-compiled on JAX; jit_compile=False would mean eager
    data = run(quick=args.quick, families=(args.only,) if args.only else FAMILIES,
               jit_modes=jit_modes, steps=args.steps,
               rounds=args.rounds)
    report(data)
    return data


if __name__ == "__main__":
    main()
