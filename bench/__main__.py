"""`python -m bench [name ...] [--quick ...]`: run benchmark modules and write their results.

Without names, every `bench/<name>.py` module that defines `main(argv)` runs, in name order.
Options (e.g. `--quick`, given after the names) are passed on to each module's `main`; results go to `bench/results/`.
"""

import importlib
import inspect
import pkgutil
import sys
import traceback

import bench

_NOT_BENCHMARKS = {"common", "ort_yardsticks", "__main__"}


def available():
    """Names of the benchmark modules (those with a `main`)."""
    names = []
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name in _NOT_BENCHMARKS or info.name.startswith("_"):
            continue
        names.append(info.name)
    return sorted(names)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv) and not [a for a in argv if not a.startswith("-")]:
        print(__doc__)
        print("Benchmarks:", ", ".join(available()))
        return 0
    # Leading words are benchmark names; everything from the first option on is passed along.
    first_option = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names = list(argv[:first_option]) or available()
    options = list(argv[first_option:])
    unknown = sorted(set(names) - set(available()))
    if unknown:
        raise SystemExit(
            f"Unknown benchmark(s) {unknown}; expected names from {available()}."
        )
    import os

    from bench import common  # noqa: F401 - applies `--backend` before anything imports Keras
    from keras_transformer.quiet import import_tensorflow_quietly

    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        import_tensorflow_quietly()  # TensorFlow without its known start-up noise
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        if not callable(getattr(module, "main", None)):
            continue
        print(f"=== bench.{name} ===", flush=True)
        try:
            if inspect.signature(module.main).parameters:
                module.main(options)
            else:
                module.main()
        except Exception:  # keep going: one broken benchmark should not hide the others
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
