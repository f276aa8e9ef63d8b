"""The key/value cache of a generation graph between steps, numpy and onnxruntime only.

Two ways to carry it, chosen per graph by `cached_session`:

* `CachedSession`: each run returns `present.*`, which become the next run's
  `past_key_values.*` (any graph; onnxruntime copies the whole cache into the new present every
  step).
* `SharedCacheSession`: one `(batch, kv_heads, total_length, head_dim)` buffer per cache tensor for
  the whole generation, bound (IO binding) as both the past input and the present output, so
  onnxruntime's `GroupQueryAttention` writes each step's keys/values in place and reads the
  first `attention_mask.shape[1]` positions: no cache copy per step, no cache allocation. Used
  where the graph's metadata says `past_present_share_buffer` (`export.native.cache`) and the
  session runs on the CPU (the buffers are host memory).
"""

import numpy as np
import onnxruntime


def _empty_cache(batch, metadata, dtype, length=0):
    heads = metadata.get("num_key_value_heads", metadata["num_heads"])  # the cache holds the KV heads
    shape = (batch, heads, length, metadata["head_dim"])
    return [np.zeros(shape, dtype) for _ in range(2 * metadata["num_layers"])]


class CachedSession:
    """Runs one KV-cache graph and keeps its `present.*` outputs as the next `past_key_values.*`."""

    def __init__(self, session, metadata):
        self.session, self.metadata = session, metadata
        self.input_names = [i.name for i in session.get_inputs()]
        self.past_names = [n for n in self.input_names if n.startswith("past_key_values.")]
        self.output_names = [o.name for o in session.get_outputs()]
        past_input = next(i for i in session.get_inputs() if i.name in self.past_names)
        self.cache_dtype = np.float16 if past_input.type == "tensor(float16)" else np.float32

    def reset(self, batch, total_length=None):
        """Start `batch` empty sequences (`total_length`: the most positions they will reach)."""
        del total_length  # the cache grows with each run
        self.past = _empty_cache(batch, self.metadata, self.cache_dtype)

    def run(self, feeds):
        """Run the graph on `feeds` (all inputs but the cache); returns the last position's
        float32 logits `(batch, vocab)`."""
        feeds = dict(feeds, **dict(zip(self.past_names, self.past)))
        logits, *presents = self.session.run(self.output_names, feeds)
        self.past = presents
        return np.asarray(logits[:, -1, :], dtype=np.float32)

    def reorder(self, rows):
        self.past = [cache[rows] for cache in self.past]

    @property
    def cached_length(self):
        return self.past[0].shape[2]


class SharedCacheSession(CachedSession):
    """A `CachedSession` whose past and present are one preallocated buffer per cache tensor."""

    def reset(self, batch, total_length=None):
        if total_length is None:
            raise ValueError("A shared cache buffer needs the most positions the sequences will reach; "
                             "received total_length=None.")
        self.capacity, self.length = int(total_length), 0
        self.buffers = _empty_cache(batch, self.metadata, self.cache_dtype, self.capacity)
        self.binding = self.session.io_binding()
        vocab = self.session.get_outputs()[0].shape[-1]
        # One-token runs write their logits into one array; longer runs get onnxruntime's.
        self.step_logits = np.zeros((batch, 1, vocab), np.float32)
        self.step_logits_value = onnxruntime.OrtValue.ortvalue_from_numpy(self.step_logits)
        self.binding.bind_output("logits", "cpu")  # bound first: output 0 (rebound by each run)
        for name, buffer in zip(self.past_names, self.buffers):
            value = onnxruntime.OrtValue.ortvalue_from_numpy(buffer)  # wraps the numpy memory
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(name.replace("past_key_values.", "present.", 1), value)

    def run(self, feeds):
        new = feeds["input_ids"].shape[1]
        if self.length + new > self.capacity:
            raise ValueError(f"The shared cache holds {self.capacity} positions; {self.length} are used and this "
                             f"run adds {new}.")
        for name, value in feeds.items():
            self.binding.bind_cpu_input(name, np.ascontiguousarray(value))
        if new == 1:
            self.binding.bind_ortvalue_output("logits", self.step_logits_value)
        else:
            self.binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(self.binding)
        self.length += new
        logits = self.step_logits if new == 1 else self.binding.get_outputs()[0].numpy()
        return np.array(logits[:, -1, :], dtype=np.float32)  # a fresh array: callers edit it

    def reorder(self, rows):
        for buffer in self.buffers:
            buffer[...] = buffer[rows]  # in place: the bound OrtValues keep pointing at the buffers

    @property
    def cached_length(self):
        return self.length


def cached_session(session, metadata):
    """`SharedCacheSession` where the graph allows it and runs on the CPU, else `CachedSession`."""
    shared = metadata.get("past_present_share_buffer") and session.get_providers()[0] == "CPUExecutionProvider"
    return (SharedCacheSession if shared else CachedSession)(session, metadata)
