"""ExportReport: what an export wrote, its interface, how it was validated and how long it took."""

import collections
import dataclasses
import os


@dataclasses.dataclass
class ExportReport:
    """The result of `to_onnx` / `to_savedmodel`; `print(report)` shows it as a table.

    Attributes:
        format: "onnx" or "savedmodel".
        path: the artefact (the `.onnx` file or the SavedModel directory).
        files: `{path: size in bytes}` of every file written (e.g. `model.onnx`, `model.onnx.data`).
        inputs / outputs: `TensorInfo`s (name, dtype, shape with axis names for dynamic dims).
        validation: the `ValidationTable`, or None with `validate=False`.
        timings: `{step: seconds}` (e.g. "convert", "write", "validate", "total").
        method: "tracing" (tf2onnx) or "native" for ONNX, "keras.export" for SavedModel.
        opset: the ONNX opset (None for SavedModel).
        precision: None (fp32), "fp16" or "int8".
        node_counts: `{op_type: count}` of the ONNX graph (empty for SavedModel).
    """

    format: str
    path: str
    files: dict
    inputs: tuple
    outputs: tuple
    validation: object = None
    timings: dict = dataclasses.field(default_factory=dict)
    method: str = ""
    opset: int = None
    precision: str = None
    node_counts: dict = dataclasses.field(default_factory=dict)

    @property
    def total_bytes(self):
        return sum(self.files.values())

    @property
    def num_nodes(self):
        return sum(self.node_counts.values())

    def as_text(self):
        lines = [f"{self.format} export -> {self.path}  (method: {self.method}"
                 + (f", opset {self.opset}" if self.opset else "")
                 + (f", precision {self.precision}" if self.precision else "") + ")"]
        for path, size in self.files.items():
            lines.append(f"  file    {os.path.basename(path):<28} {size / 1e6:10.3f} MB")
        for kind, infos in (("input", self.inputs), ("output", self.outputs)):
            for info in infos:
                lines.append(f"  {kind:<7} {info.describe()}")
        if self.node_counts:
            top = collections.Counter(self.node_counts).most_common(8)
            lines.append(f"  nodes   {self.num_nodes}: " + ", ".join(f"{op} {n}" for op, n in top))
        if self.timings:
            lines.append("  time    " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        lines.append("  " + (str(self.validation).replace("\n", "\n  ") if self.validation is not None
                             else "validation: SKIPPED (validate=False)"))
        return "\n".join(lines)

    __str__ = as_text


class StepTimer:
    """Times named steps into a `timings` dict and announces each to an optional `progress(step)`."""

    def __init__(self, progress=None):
        import time

        self._clock = time.perf_counter
        self._start = self._clock()
        self.timings = {}
        self._progress = progress

    def step(self, name):
        timer = self

        class _Step:
            def __enter__(self):
                if timer._progress is not None:
                    timer._progress(name)
                self.start = timer._clock()

            def __exit__(self, *exc):
                timer.timings[name] = timer.timings.get(name, 0.0) + timer._clock() - self.start
                return False

        return _Step()

    def finish(self):
        self.timings["total"] = self._clock() - self._start
        return self.timings
