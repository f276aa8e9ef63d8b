"""Shared benchmark helpers: the machine's matmul peak, timing, and JSON/PNG result files.

Every benchmark reports ratios against peers measured in the same run and, where it counts
FLOPs, the fraction of a float32 matmul peak measured in the same run, so numbers stay
meaningful on a shared or throttled machine.
"""

import json
import os
import platform
import statistics
import time

import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _backend_from_command_line(argv):
    """`--backend NAME` (or `--backend=NAME`) of `python -m bench ...`: applied here, before any
    benchmark imports Keras, which reads KERAS_BACKEND once."""
    for index, arg in enumerate(argv):
        if arg == "--backend" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


if _backend_from_command_line(sys.argv):
    os.environ["KERAS_BACKEND"] = _backend_from_command_line(sys.argv)
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def time_call(fn, repeats=10, warmup=2):
    """Median wall-clock seconds of `fn()` over `repeats` runs after `warmup` runs.

    Returns:
        `(median_seconds, all_seconds)`.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def interleaved(calls, repeats, warmup=2, settle_s=0.0, alternate=False, statistic=statistics.median,
                self_timed=False):
    """`{name: statistic(seconds)}` of each `{name: call}`: the calls take turns, one each per
    round, so that load from other processes on a shared machine falls on all of them alike.

    Args:
        warmup: untimed rounds first.
        settle_s: an untimed pause before each call, so that threads still spinning after the
            previous call (onnxruntime workers spin ~50 ms after a run unless told to stop)
            slow nobody.
        alternate: reverse the order every other round, so that a load that rises or falls
            during the rounds favours nobody.
        statistic: applied to each call's list of timed seconds.
        self_timed: each call returns its own seconds (e.g. an epoch timer that leaves out
            `fit`'s set-up) instead of being timed here.
    """
    samples = {name: [] for name in calls}
    order = list(calls)
    for round_index in range(repeats + warmup):
        for name in order[::-1] if alternate and round_index % 2 else order:
            if settle_s:
                time.sleep(settle_s)
            start = time.perf_counter()
            reported = calls[name]()
            if round_index >= warmup:
                samples[name].append(reported if self_timed else time.perf_counter() - start)
    return {name: statistic(values) for name, values in samples.items()}


def matmul_peak_flops(size=1024, repeats=10):
    """Float32 matmul throughput (FLOP/s) of this machine, measured now with TensorFlow.

    A compiled `size x size` matrix product, median of `repeats` timings; this is the yardstick
    for "fraction of peak" (what a perfectly matmul-bound model could reach right now).
    """
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))

    @tf.function(jit_compile=False)
    def product(x, y):
        # A few dependent products per call so that Python overhead does not count.
        for _ in range(4):
            x = tf.linalg.matmul(x, y) * (1.0 / size)
        return x

    seconds, _ = time_call(lambda: product(a, b).numpy(), repeats=repeats, warmup=2)
    return 4 * 2 * size**3 / seconds


def machine_info():
    """A short description of where the numbers were taken."""
    import importlib.metadata

    import keras

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "keras_backend": keras.backend.backend(),
        "tensorflow": version("tensorflow"),
        "jax": version("jax"),
        "torch": version("torch"),
        "keras": keras.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(name, data, directory=RESULTS_DIR):
    """Write `data` to `<directory>/<name>.json` (atomically) and return the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.json")
    partial = path + ".partial"
    with open(partial, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=float)
    os.replace(partial, path)
    return path


def write_bar_chart(name, values, title, xlabel, directory=RESULTS_DIR):
    """Write a horizontal bar chart of `{label: value}` to `<directory>/<name>.png`.

    Returns:
        The path, or None (with a note) when matplotlib is missing: the measurements, already
        written as JSON, must not be lost to the picture.
    """
    from keras_transformer.visualize import plot_bars

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"{name}.png not drawn: matplotlib is missing (pip install -e '.[bench]')")
        return None
    return plot_bars(values, os.path.join(directory, f"{name}.png"), title=title, ylabel=xlabel)


def print_table(title, columns, rows):
    """Print a table with rich (falls back to plain text when rich is missing)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is in the bench/export extras
        print(title)
        print(" | ".join(columns))
        for row in rows:
            print(" | ".join(str(cell) for cell in row))
        return
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    Console().print(table)
