"""The whole checkpoint journey: pretrain, save as Hugging Face, load, fine-tune with LoRA, export.

1. A small GPT-2-shaped model (learned positions, pre-LayerNorm, tanh GELU, tied embeddings) is
   pretrained briefly on the Python standard library's docstrings (`_stdlib_text.py`) and saved
   as a Hugging Face checkpoint directory (`config.json`, `model.safetensors`, `tokenizer.json`).
2. It is loaded back the way any checkpoint is: `DecoderOnlyTransformer.from_preset(path)` and
   `keras_transformer.tokenizers.from_preset(path)` (the logits are checked to be identical).
3. A new task: given a standard-library function's signature, write its docstring's summary
   line (`"json.dumps(obj, *, skipkeys=False, ...) :: Serialize ``obj`` to a JSON formatted
   ``str``."`). The model is fine-tuned with LoRA adapters (`model.enable_lora(rank)`) and `fit`.
4. The merged model is exported to ONNX (validated against Keras, with KV-cache generation
   graphs) and generates from text prompts with `export.runtime` (onnxruntime only).
Prints before/after samples on held-out signatures and writes a loss-curve PNG.

    python examples/fine_tune.py            # a few minutes on 2 CPU cores
    python examples/fine_tune.py --smoke    # tiny sizes and a few steps, for tests
"""

import argparse
import inspect
import os
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _stdlib_text as stdlib_text  # noqa: E402

SEPARATOR = " ::"
TASK_MODULES = ("json", "os.path", "shutil", "textwrap", "string", "random", "statistics", "glob",
                "fnmatch", "difflib", "calendar", "base64", "gzip", "zlib", "heapq", "bisect",
                "functools", "itertools", "operator", "copy", "pprint", "shlex", "tempfile", "math")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="artifacts/fine_tune", help="output folder")
    parser.add_argument("--max-chars", type=int, default=200_000, help="pretraining corpus size cap")
    parser.add_argument("--vocab-size", type=int, default=1000, help="BPE vocabulary size")
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--fine-tune-epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--new-tokens", type=int, default=20, help="tokens to generate per prompt")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.max_chars, args.vocab_size, args.length, args.batch_size = 20_000, 300, 32, 16
        args.pretrain_epochs, args.fine_tune_epochs = 1, 2
        args.d_model, args.layers, args.heads, args.rank, args.new_tokens = 16, 1, 2, 2, 5
    return args


# -- data ------------------------------------------------------------------------------------


def signature_examples():
    """`"module.function(signature) :: summary line"` for documented public functions."""
    import importlib

    examples = []
    for module_name in TASK_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, function in sorted(vars(module).items()):
            if name.startswith("_") or not callable(function) or inspect.isclass(function):
                continue
            doc = inspect.getdoc(function)
            try:
                signature = str(inspect.signature(function))
            except (TypeError, ValueError):
                continue
            if not doc or len(signature) > 80:
                continue
            summary = doc.strip().split("\n")[0].strip()
            if 10 <= len(summary) <= 100:
                examples.append((f"{module_name}.{name}{signature}{SEPARATOR}", f" {summary}"))
    random.Random(0).shuffle(examples)
    return examples


def pretraining_blocks(tokenizer, texts, length):
    import numpy as np

    end = tokenizer.token_to_id("<eos>")
    stream = []
    for encoding in tokenizer.encode_batch(texts):
        stream += encoding.ids + [end]
    count = len(stream) // (length + 1)
    return np.array(stream[: count * (length + 1)], dtype="int32").reshape(count, length + 1)


def task_arrays(tokenizer, examples, length):
    """Inputs and labels `(N, length)`: the loss covers only the summary and `<eos>` (labels of
    the prompt are the pad id 0, which the masked loss ignores)."""
    import numpy as np

    end = tokenizer.token_to_id("<eos>")
    inputs = np.zeros((len(examples), length), "int32")
    labels = np.zeros((len(examples), length), "int32")
    for row, (prompt, answer) in enumerate(examples):
        prompt_ids, answer_ids = tokenizer.encode(prompt).ids, tokenizer.encode(answer).ids + [end]
        ids = (prompt_ids + answer_ids)[: length + 1]
        inputs[row, : len(ids) - 1] = ids[:-1]
        labels[row, len(prompt_ids) - 1: len(ids) - 1] = ids[len(prompt_ids):]
    return inputs, labels


# -- steps -----------------------------------------------------------------------------------


def compile_model(model, learning_rate):
    import keras

    from keras_transformer import training

    model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.0),
                  loss=training.MaskedSparseCategoricalCrossentropy(pad_id=0))


def pretrain(args, tokenizer, texts):
    from keras_transformer.models import DecoderOnlyTransformer

    blocks = pretraining_blocks(tokenizer, texts, args.length)
    model = DecoderOnlyTransformer(  # GPT-2's architecture, small
        vocab_size=tokenizer.get_vocab_size(), num_layers=args.layers, d_model=args.d_model,
        num_heads=args.heads, d_ff=4 * args.d_model, dropout=0.1, max_length=128,
        positional="learned", norm_first=True, activation="gelu_approximate", tie_embeddings=True,
        scale_embeddings=False, layer_norm_epsilon=1e-5, pad_id=0, name="docstring_gpt2",
    )
    compile_model(model, 2e-3)
    if args.smoke:
        blocks = blocks[: 2 * args.batch_size]
    model.fit(blocks[:, :-1], blocks[:, 1:], batch_size=args.batch_size, epochs=args.pretrain_epochs,
              verbose=0 if args.smoke else 2)
    return model


def complete(model, tokenizer, prompts, args):
    """Greedy completions (Keras), cut at `<eos>`."""
    end = tokenizer.token_to_id("<eos>")
    rows = model.generate([tokenizer.encode(p).ids for p in prompts], max_new_tokens=args.new_tokens,
                          temperature=0.0, end_id=end)
    texts = []
    for prompt, row in zip(prompts, rows):
        new = [int(i) for i in row[len(tokenizer.encode(prompt).ids):] if i not in (0, end)]
        texts.append(tokenizer.decode(new))
    return texts


def export_and_generate(model, tokenizer, prompts, args, folder):
    """ONNX export of the merged model, then text generation with export.runtime alone."""
    import export
    from export import native, runtime

    onnx_path = os.path.join(folder, "fine_tuned.onnx")
    report = export.to_onnx(model, onnx_path, overwrite=True, max_length=args.length)
    generation = os.path.join(folder, "generation")
    native.save_generation_graphs(model, generation, overwrite=True)
    end = tokenizer.token_to_id("<eos>")
    prompt_ids = [tokenizer.encode(p).ids for p in prompts]
    onnx_rows = runtime.generate(generation, prompt_ids, max_new_tokens=args.new_tokens, temperature=0.0,
                                 end_id=end)
    keras_rows = model.generate(prompt_ids, max_new_tokens=args.new_tokens, temperature=0.0, end_id=end)
    same = all(list(a) == list(b) for a, b in zip(onnx_rows, keras_rows))
    print(f"Exported {onnx_path} (validated: {report.validation.passed}) and {generation}/; onnxruntime "
          f"greedy decoding is {'token for token identical to' if same else 'DIFFERENT from'} Keras:")
    for prompt, row, ids in zip(prompts, onnx_rows, prompt_ids):
        print(f"  {prompt}{tokenizer.decode([int(i) for i in row[len(ids):] if i not in (0, end)])}")
    return same


def main(argv=None):
    args = parse_args(argv)
    from keras_transformer.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras
    import numpy as np

    from keras_transformer import tokenizers
    from keras_transformer.models import DecoderOnlyTransformer
    from keras_transformer.visualize import plot_training_curves

    keras.utils.set_random_seed(0)
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()

    # 1. Pretrain and save as a Hugging Face checkpoint.
    texts = stdlib_text.corpus_text(args.max_chars)
    tokenizer = stdlib_text.train_tokenizer(texts, args.vocab_size)
    pretrained = pretrain(args, tokenizer, texts)
    checkpoint = os.path.join(args.output, "pretrained_hf")
    pretrained.export_to_transformers(checkpoint, tokenizer=tokenizer)
    print(f"Pretrained {pretrained.count_params():,} parameters on {len(texts)} docstrings "
          f"({time.perf_counter() - start:.0f} s); saved the Hugging Face checkpoint {checkpoint}/: "
          f"{', '.join(sorted(os.listdir(checkpoint)))}")

    # 2. Load it like any checkpoint.
    model = DecoderOnlyTransformer.from_preset(checkpoint)
    tokenizer = tokenizers.from_preset(checkpoint)
    probe = np.array([tokenizer.encode("Return the").ids], "int32")
    difference = float(np.abs(np.asarray(model(probe)) - np.asarray(pretrained(probe))).max())
    print(f"Loaded with DecoderOnlyTransformer.from_preset({checkpoint!r}): max |logit difference| "
          f"{difference:.1e}")

    # 3. Fine-tune with LoRA on the new task.
    examples = signature_examples()
    held_out, train_examples = examples[:4], examples[4:]
    if args.smoke:
        train_examples = train_examples[: 2 * args.batch_size]
    prompts = [prompt for prompt, _ in held_out]
    before = complete(model, tokenizer, prompts, args)
    inputs, labels = task_arrays(tokenizer, train_examples, args.length)
    model.enable_lora(args.rank, target_names=("query", "value", "intermediate_dense", "output_dense"))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    print(f"Fine-tuning on {len(train_examples)} signature -> summary pairs with LoRA rank {args.rank}: "
          f"{trainable:,} of {model.count_params():,} parameters train")
    compile_model(model, 3e-3)
    split = max(1, len(inputs) // 10)
    history = model.fit(inputs[split:], labels[split:], validation_data=(inputs[:split], labels[:split]),
                        batch_size=args.batch_size, epochs=args.fine_tune_epochs, verbose=0 if args.smoke else 2)
    losses = history.history
    print(f"Fine-tuning loss {losses['loss'][0]:.2f} -> {losses['loss'][-1]:.2f} (validation "
          f"{losses['val_loss'][0]:.2f} -> {losses['val_loss'][-1]:.2f})")
    curves = os.path.join(args.output, "loss_curve.png")
    plot_training_curves(history, curves, title="LoRA fine-tuning: signature -> summary")
    after = complete(model, tokenizer, prompts, args)
    print("Held-out signatures, before -> after fine-tuning (greedy):")
    for (prompt, truth), old, new in zip(held_out, before, after):
        print(f"  {prompt}\n    before: {old!r}\n    after:  {new!r}\n    truth:  {truth.strip()!r}")
    print(f"Saved {curves}")

    # 4. Export the merged model and generate with onnxruntime.
    if not export_and_generate(model, tokenizer, prompts, args, args.output):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
