"""`kt-export` / `python -m export`: export a saved `.keras` model to ONNX and/or SavedModel.

Exit codes: 0 success; 1 the export failed (validation mismatch, conversion error); 2 bad
arguments or an unusable input (missing file, existing target without --overwrite).
"""

import argparse
import importlib
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kt-export",
        description="Export a .keras model to ONNX and/or TF SavedModel, validated against Keras on a "
                    "shape sweep; nothing is written unless validation passes.",
        epilog="Exit codes: 0 success, 1 export or validation failed, 2 bad arguments or input.",
    )
    parser.add_argument("model", help="the .keras file to export, as written by model.save (loaded with safe_mode=True; not a SavedModel or .onnx)")
    parser.add_argument("--to", choices=("onnx", "savedmodel", "genai", "optimum", "all"), default="onnx",
                        help="what to write: OUT/model.onnx, OUT/saved_model/, OUT/genai/ (a folder that "
                             "onnxruntime-genai and optimum load; decoder-only models), OUT/optimum/ (optimum's "
                             "causal-LM or seq2seq folder; encoder-decoder models need --start-id), or onnx + "
                             "savedmodel (all; default: onnx)")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default: newest supported by both tf2onnx and onnxruntime)")
    parser.add_argument("--method", choices=("auto", "native", "tracing"), default="auto",
                        help="ONNX path: native emitter when it supports the model (auto), or tf2onnx")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8", "int4"), default="fp32",
                        help="ONNX weight precision (default fp32); int4: blockwise 4-bit MatMulNBits weights")
    parser.add_argument("--min-top1", type=float, default=None,
                        help="top-1 agreement with float32 that an int8/int4 export must reach "
                             "(default 0.99 int8, 0.95 int4)")
    parser.add_argument("--block-size", type=int, default=32, help="int4 block size (a power of two >= 16)")
    parser.add_argument("--tokenizer", default=None, help="genai: a tokenizer.json to copy into the folder")
    parser.add_argument("--end-id", type=int, default=None, help="genai/optimum: the end-of-sequence token id")
    parser.add_argument("--start-id", type=int, default=None,
                        help="optimum, encoder-decoder models: the decoder's first token (decoder_start_token_id)")
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance (fp32 default 1e-4)")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance (fp32 default 1e-4)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest sequence in the validation sweep (default: the model's limit or 512)")
    parser.add_argument("--no-validate", dest="validate", action="store_false",
                        help="skip validation against Keras (you accept the risk)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-shared-cache", dest="shared_cache", action="store_false",
                        help="genai/optimum: MultiHeadAttention and a KV cache copied every step instead of one "
                             "shared buffer (for float32 on a GPU: onnxruntime's CUDA GroupQueryAttention is fp16 only)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (registers custom layers); repeatable")
    return parser


def _load_model(path, imports):
    for module in ["keras_transformer.models", *imports]:
        importlib.import_module(module)
    from keras_transformer.saving import load_model  # clear errors for corrupt/truncated files

    return load_model(path, safe_mode=True)


_TAKES = "kt-export takes the .keras file written by model.save('model.keras')"


def _input_problem(path):
    """Why `path` is not a `.keras` file kt-export can read (a sentence), or None."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return f"{path} is a TensorFlow SavedModel directory (an export output, not an input); {_TAKES}"
        return f"{path} is a directory; {_TAKES}"
    if not os.path.exists(path):
        return f"model file not found: {path} ({_TAKES})"
    if path.endswith(".onnx"):
        return f"{path} is an ONNX file (an export output, not an input); {_TAKES}"
    return None


def _fail(console, code, message):
    console.print("error: ", style="bold red", end="")
    console.print(message, highlight=False, markup=False)
    return code


def main(argv=None):
    """Runs the CLI; returns the exit code (also used as the process status)."""
    args = build_parser().parse_args(argv)
    from rich.console import Console

    console = Console(soft_wrap=True)
    error_console = Console(stderr=True, soft_wrap=True)
    problem = _input_problem(args.model)
    if problem:
        return _fail(error_console, EXIT_USAGE, problem)
    targets = {"onnx": os.path.join(args.out, "model.onnx"), "savedmodel": os.path.join(args.out, "saved_model"),
               "genai": os.path.join(args.out, "genai"), "optimum": os.path.join(args.out, "optimum")}
    formats = ["onnx", "savedmodel"] if args.to == "all" else [args.to]
    for fmt in formats:
        if os.path.lexists(targets[fmt]) and not args.overwrite:
            return _fail(error_console, EXIT_USAGE, f"{targets[fmt]} exists; pass --overwrite to replace it")
    from keras_transformer.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # TensorFlow without its known start-up noise
    from export.validate import ExportValidationError

    with console.status("loading model") as status:
        try:
            model = _load_model(args.model, args.imports)
        except Exception as error:  # noqa: BLE001 - report any load failure in one line
            return _fail(error_console, EXIT_USAGE, f"cannot load {args.model}: {_one_line(error)}")
        common = dict(validate=args.validate, atol=args.atol, rtol=args.rtol, max_length=args.max_length,
                      overwrite=args.overwrite)
        for fmt in formats:
            progress = (lambda step, fmt=fmt: status.update(f"{fmt}: {step}"))
            try:
                precision = None if args.precision == "fp32" else args.precision
                if fmt == "onnx":
                    from export.onnx_export import to_onnx

                    report = to_onnx(model, targets[fmt], args.opset, method=args.method, precision=precision,
                                     min_top1=args.min_top1, block_size=args.block_size, progress=progress,
                                     **common)
                elif fmt in ("genai", "optimum"):
                    from export.deploy import to_genai, to_optimum

                    status.update(f"{fmt}: export and validation")
                    options = {} if args.start_id is None else {"start_id": args.start_id}
                    if not args.shared_cache:
                        options["shared_cache"] = False
                    written = (to_genai if fmt == "genai" else to_optimum)(
                        model, targets[fmt], tokenizer=args.tokenizer, precision=precision, end_id=args.end_id,
                        max_length=args.max_length, opset=args.opset, validate=args.validate,
                        min_top1=args.min_top1, atol=args.atol, rtol=args.rtol, block_size=args.block_size,
                        overwrite=args.overwrite, **options)
                    report = f"{fmt}: wrote {targets[fmt]} ({', '.join(os.path.basename(p) for p in written)})"
                else:
                    from export.savedmodel import to_savedmodel

                    report = to_savedmodel(model, targets[fmt], progress=progress, **common)
            except ExportValidationError as error:
                status.stop()
                console.print(str(error.table), highlight=False, markup=False)
                return _fail(error_console, EXIT_FAILED, f"{fmt} export failed validation; nothing was written")
            except (FileExistsError, ValueError, TypeError) as error:
                return _fail(error_console, EXIT_USAGE, f"{fmt} export: {_one_line(error)}")
            except Exception as error:  # noqa: BLE001 - one-line reason, non-zero status
                return _fail(error_console, EXIT_FAILED, f"{fmt} export failed: {_one_line(error)}")
            console.print(str(report), highlight=False, markup=False)
    return EXIT_OK


def _one_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
