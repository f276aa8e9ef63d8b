"""Peak memory of loading a Hugging Face checkpoint, as a multiple of the checkpoint's size.

A random `gpt2_small`-shaped model (124M parameters, ~0.5 GB of float32) is written once as a
Hugging Face directory; a fresh process then imports Keras, records its resident memory, loads
the directory with `DecoderOnlyTransformer.from_preset(path)` and records its peak resident
memory, both the anonymous memory the process owns (sampled) and the resident set (which also
counts the page cache of the memory-mapped file). `(peak - before) / checkpoint bytes` is the
ratio (the loaded model itself is 1x: the weights have to live somewhere). The bound is ~1.5x. `--quick` uses `gpt_tiny` widened
to 16M parameters.

    python -m bench checkpoint_memory [--quick]
"""

import json
import os
import subprocess
import sys
import tempfile

from bench import common

_CHILD = r"""
import json, os, resource, sys, threading, time
from keras_transformer.quiet import import_tensorflow_quietly
import_tensorflow_quietly()
import keras
from keras_transformer.models import DecoderOnlyTransformer

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

DecoderOnlyTransformer(16, 1, 8, 2, 8)  # Keras and the backend fully initialised first
before_rss, before_anon = status("VmRSS"), status("RssAnon")
peak_anon, done = [before_anon], threading.Event()

def sample():  # anonymous memory (what the process owns) every 2 ms
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], status("RssAnon"))
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
model = DecoderOnlyTransformer.from_preset(sys.argv[1])
done.set()
sampler.join()
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"before_rss": before_rss, "peak_rss": peak_rss, "before_anon": before_anon,
                  "peak_anon": max(peak_anon[0], status("RssAnon")), "parameters": model.count_params()}))
"""


def _write_checkpoint(preset, overrides, directory):
    from keras_transformer.models import DecoderOnlyTransformer

    model = DecoderOnlyTransformer.from_preset(preset, **overrides)
    model.export_to_transformers(directory)
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.endswith(".safetensors"))


def main(argv=()):
    quick = "--quick" in argv
    preset, overrides = ("gpt_tiny", dict(vocab_size=32000, d_model=256, d_ff=1024, num_heads=4)) if quick \
        else ("gpt2_small", {})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hf")
        size = _write_checkpoint(preset, overrides, path)
        result = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, check=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    anonymous = (measured["peak_anon"] - measured["before_anon"]) / size
    resident = (measured["peak_rss"] - measured["before_rss"]) / size
    print(f"{preset} ({measured['parameters']:,} parameters), checkpoint {size / 2**20:.0f} MiB. Peak while "
          f"loading, above the process before: anonymous memory {anonymous:.2f}x the checkpoint; resident "
          f"memory {resident:.2f}x (it also counts the memory-mapped file's page cache, which the kernel "
          "reclaims). Bound ~1.5x.")
    common.write_json("checkpoint_memory", {"preset": preset, "checkpoint_bytes": size, **measured,
                                            "anonymous_ratio": anonymous, "resident_ratio": resident})


if __name__ == "__main__":
    main(sys.argv[1:])
