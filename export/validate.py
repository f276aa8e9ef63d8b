"""Validation of an exported model against its Keras original: a shape sweep and a comparison table.

The API is small and reusable for any exported graph (tf2onnx, the native emitter, fp16, int8):

    from export import validate as v
    cases = v.build_sweep(inputs, batch_sizes=(1, 3), max_length=16, vocab_size=50)
    table = v.compare(reference, candidate, cases, v.allclose(atol=1e-4, rtol=1e-4))
    print(table)               # one row per (case, output): shapes, worst |diff|, verdict
    table.raise_if_failed()    # ExportValidationError carrying the table

- `inputs`: a sequence of `InputInfo`-like objects with `.name`, `.dtype` and `.shape` (`None` =
  dynamic), e.g. `export.signatures.model_signature(model).inputs`.
- `build_sweep(...)` returns `SweepCase`s (`.name`, `.feeds`: dict of numpy arrays). Integer
  inputs get token ids in `[1, vocab_size)` with right padding by `pad_id` (0) in every row but
  the first of a batch; inputs whose name contains "mask" get the matching 1/0 padding mask; float
  inputs get standard normal values. `value_ranges` gives named integer inputs their own
  `[low, high)` (e.g. BERT's `segment_ids`: `[0, 2)`; a model says so in `input_value_ranges`). Sequence lengths are 1, a middle length and `max_length`;
  inputs named `encoder*` / `decoder*` get different lengths so that a fixed cross-length fails.
- `reference` and `candidate` are callables `feeds -> {output_name: array}` (or a list in
  `output_names` order); `candidate` may also be an `onnxruntime.InferenceSession`.
  `keras_reference(model)` wraps a Keras model.
- Comparators: `allclose(atol, rtol)`, `allclose(..., relative_to_max=True)` for fp16 (tolerance
  scaled by the largest |reference|), `top1_agreement(min_agreement=0.99)` for int8 (share of
  positions whose argmax over the last axis agrees, per case and, for the verdict, over the
  whole sweep; the max |diff| is reported for information), and
  `comparator_for(precision, atol, rtol)` to pick one. A comparator is a callable
  `(expected, actual) -> Comparison(ok, max_abs_diff, detail, counts=None)`; it may carry an
  `aggregate(rows) -> bool` attribute that decides the table's verdict instead of "every row ok".
- Helpers for Keras models: `model_sweep(model, inputs, max_length, vocab_size, batch_sizes)`
  (vocabulary and longest length read from the model's layers, see `model_limits_max_length`),
  `keras_reference(model, output_names)`, `session_runner(session)`.
"""

import dataclasses

import numpy as np

DEFAULT_MAX_LENGTH = 512


class ExportValidationError(ValueError):
    """The exported artefact disagrees with the Keras model; `.table` holds the comparison."""

    def __init__(self, message, table=None):
        super().__init__(message)
        self.table = table


@dataclasses.dataclass(frozen=True)
class SweepCase:
    name: str
    feeds: dict


@dataclasses.dataclass(frozen=True)
class Comparison:
    ok: bool
    max_abs_diff: float
    detail: str
    counts: tuple = None  # (agreeing, total) positions, for top-1 comparators


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    case: str
    output: str
    shape: tuple
    max_abs_diff: float
    detail: str
    ok: bool
    counts: tuple = None


class ValidationTable:
    """Rows of a validation run.

    `passed` is True when every row passed, or, for a comparator with an `aggregate(rows)`
    method (top-1 agreement), when that overall verdict holds (agreement over all positions of
    the sweep, so that one flipped position in a 16-token case does not fail an int8 export).
    """

    def __init__(self, rows, comparator_name="", aggregate=None):
        self.rows = list(rows)
        self.comparator_name = comparator_name
        self._aggregate = aggregate

    @property
    def passed(self):
        if not self.rows:
            return False
        return bool(self._aggregate(self.rows)) if self._aggregate else all(row.ok for row in self.rows)

    @property
    def agreement(self):
        """Top-1 agreement over every compared position (None for tolerance comparisons)."""
        counted = [row.counts for row in self.rows if row.counts]
        return sum(a for a, _ in counted) / max(1, sum(t for _, t in counted)) if counted else None

    @property
    def worst(self):
        return max(self.rows, key=lambda row: row.max_abs_diff) if self.rows else None

    def as_text(self):
        header = ("case", "output", "shape", "max |diff|", "check", "ok")
        # With an overall verdict (top-1 over the sweep) a weak case is "low", not a failure.
        weak = "low" if self._aggregate else "FAIL"
        body = [
            (r.case, r.output, "x".join(map(str, r.shape)), f"{r.max_abs_diff:.3g}", r.detail,
             "PASS" if r.ok else weak)
            for r in self.rows
        ]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *body]]
        title = f"validation ({self.comparator_name}): {'PASSED' if self.passed else 'FAILED'}"
        if self.agreement is not None:
            title += f", top-1 agreement over the sweep {self.agreement:.2%}"
        return "\n".join([title, *lines])

    __str__ = as_text

    def raise_if_failed(self, what="exported model"):
        if not self.passed:
            failed = sum(not row.ok for row in self.rows)
            raise ExportValidationError(
                f"The {what} disagrees with the Keras model in {failed} of {len(self.rows)} "
                f"comparisons; nothing was written.\n{self.as_text()}",
                table=self,
            )


# --- comparators ---------------------------------------------------------------------------------


def allclose(atol=1e-4, rtol=1e-4, relative_to_max=False):
    """`|actual - expected| <= atol + rtol * |expected|` everywhere; with `relative_to_max` the
    atol is multiplied by `max(1, max|expected|)` (half precision loses absolute accuracy on large
    values)."""

    def compare_arrays(expected, actual):
        expected = np.asarray(expected, dtype=np.float64)
        actual = np.asarray(actual, dtype=np.float64)
        if expected.shape != actual.shape:
            return Comparison(False, float("inf"), f"shape {actual.shape} != {expected.shape}")
        scale = max(1.0, float(np.abs(expected).max(initial=0.0))) if relative_to_max else 1.0
        diff = np.abs(actual - expected)
        ok = bool(np.all(diff <= atol * scale + rtol * np.abs(expected)))
        return Comparison(ok, float(diff.max(initial=0.0)), f"atol={atol * scale:.2g} rtol={rtol:.2g}")

    compare_arrays.name = f"allclose atol={atol:g} rtol={rtol:g}"
    return compare_arrays


def top1_agreement(min_agreement=0.99):
    """Share of positions whose argmax over the last axis agrees must be >= `min_agreement`."""

    def compare_arrays(expected, actual):
        expected = np.asarray(expected, dtype=np.float64)
        actual = np.asarray(actual, dtype=np.float64)
        if expected.shape != actual.shape:
            return Comparison(False, float("inf"), f"shape {actual.shape} != {expected.shape}")
        agree = expected.argmax(-1) == actual.argmax(-1)
        agreement = float(agree.mean()) if agree.size else 1.0
        diff = float(np.abs(actual - expected).max(initial=0.0))
        return Comparison(agreement >= min_agreement, diff, f"top-1 agree {agreement:.1%}",
                          counts=(int(agree.sum()), int(agree.size)))

    def aggregate(rows):
        if any(row.counts is None for row in rows):  # a shape mismatch or a missing output
            return False
        return sum(row.counts[0] for row in rows) >= min_agreement * sum(row.counts[1] for row in rows)

    compare_arrays.name = f"top-1 agreement >= {min_agreement:.0%} of positions"
    compare_arrays.aggregate = aggregate
    return compare_arrays


MIN_TOP1 = {"int8": 0.99, "int4": 0.95}


def comparator_for(precision=None, atol=None, rtol=None, min_top1=None):
    """The comparator for an fp32 (`None`/"fp32"), "fp16", "int8" or "int4" export; `min_top1`
    overrides the top-1 agreement the integer precisions need (`MIN_TOP1`)."""
    if precision in (None, "fp32"):
        return allclose(1e-4 if atol is None else atol, 1e-4 if rtol is None else rtol)
    if precision == "fp16":
        return allclose(1e-2 if atol is None else atol, 1e-2 if rtol is None else rtol, relative_to_max=True)
    if precision in MIN_TOP1:
        if min_top1 is not None and (isinstance(min_top1, bool) or not isinstance(min_top1, (int, float))
                                     or not 0.0 <= min_top1 <= 1.0):
            raise ValueError(f"`min_top1` must be a number in [0, 1]; received min_top1={min_top1!r}.")
        return top1_agreement(MIN_TOP1[precision] if min_top1 is None else float(min_top1))
    raise ValueError(f"`precision` must be None, 'fp32', 'fp16', 'int8' or 'int4'; received precision={precision!r}.")


# --- sweep ---------------------------------------------------------------------------------------


def _sequence_lengths(max_length):
    return sorted({1, max(1, (max_length + 1) // 2), max_length})


def _axis_group(name):
    for prefix in ("encoder", "decoder"):
        if name.startswith(prefix):
            return prefix
    return "sequence"


def _row_lengths(batch, length):
    """Row 0 is full; later rows are right-padded to shorter lengths (at least 1 real token)."""
    return [length] + [max(1, length - (row * length) // batch - 1) for row in range(1, batch)]


def _make_input(spec, batch, length, row_lengths, vocab_size, pad_id, rng, value_range=None):
    shape = [batch if i == 0 else (length if d is None else d) for i, d in enumerate(spec.shape)]
    dtype = np.dtype(spec.dtype)
    real = np.arange(shape[1])[None, :] < np.asarray(row_lengths)[:, None] if len(shape) >= 2 else None
    if "mask" in spec.name.lower() and len(shape) == 2:
        return real.astype(dtype)
    if np.issubdtype(dtype, np.integer):
        low, high = value_range or (1, max(2, vocab_size))
        ids = rng.integers(low, high, size=shape).astype(dtype)
        if len(shape) == 2:
            ids = np.where(real, ids, np.asarray(pad_id, dtype))
        return ids
    if dtype == np.bool_:
        return real if real is not None else np.ones(shape, bool)
    return rng.standard_normal(shape).astype(dtype)


def build_sweep(inputs, batch_sizes=(1, 3), max_length=DEFAULT_MAX_LENGTH, vocab_size=2, pad_id=0, seed=0,
                lengths=None, value_ranges=None):
    """Inputs for every (batch size, sequence length) combination; see the module docstring.

    Args:
        inputs: objects with `.name`, `.dtype`, `.shape` (batch first, `None` for dynamic dims).
        batch_sizes: batch sizes to try.
        max_length: the longest sequence to try (the model's maximum, or a cap).
        vocab_size: token ids are drawn from `[1, vocab_size)`.
        pad_id: the id that right-pads shorter rows.
        seed: seed of the numpy generator.
        lengths: explicit sequence lengths; default `{1, middle, max_length}`.
        value_ranges: `{input_name: (low, high)}`: integer inputs drawn from `[low, high)`
            instead of `[1, vocab_size)`.

    Returns:
        A list of `SweepCase`. With separate `encoder*`/`decoder*` inputs the decoder length
        differs from the encoder length in every case with length > 1.
    """
    if max_length is None or max_length < 1:
        raise ValueError(f"`max_length` must be a positive int; received max_length={max_length!r}.")
    rng = np.random.default_rng(seed)
    groups = sorted({_axis_group(spec.name) for spec in inputs})
    cases = []
    for batch in batch_sizes:
        for length in lengths or _sequence_lengths(max_length):
            # The second group (decoder) uses a different length than the first (encoder).
            group_lengths = {g: (length if i == 0 else max(1, length - 1 - (length > 2))) for i, g in enumerate(groups)}
            if len(groups) > 1 and length == 1:
                group_lengths[groups[0]] = min(max_length, 2)
            feeds = {}
            for spec in inputs:
                group_length = group_lengths[_axis_group(spec.name)]
                rows = _row_lengths(batch, group_length)
                feeds[spec.name] = _make_input(spec, batch, group_length, rows, vocab_size, pad_id, rng,
                                               (value_ranges or {}).get(spec.name))
            label = ",".join(f"{g}={n}" for g, n in group_lengths.items())
            cases.append(SweepCase(f"batch={batch},{label}", feeds))
    return cases


# --- running and comparing -----------------------------------------------------------------------


def keras_reference(model, output_names=None):
    """`feeds -> {output_name: numpy}` for a Keras model (inference mode).

    Off TensorFlow the forward is compiled once (`keras_transformer.backend.compile_function`:
    a stateless `jax.jit` without XLA's costly passes, or `torch.no_grad`) and reused for every
    case: op-by-op eager JAX compiles every op for every new shape, which made a sweep ~20x
    slower than TensorFlow's eager forward (which stays as it is).

    On JAX, where each new input shape costs an XLA compile, `compare` first hands the sweep to
    `run.prepare(cases)`: every case then runs at the sweep's largest batch (a smaller batch is
    padded with copies of its first row and the outputs are cut back to its rows), so batch
    sizes {1, 3} x 3 lengths compile 3 shapes, not 6. Rows are independent in inference (no
    layer of a transformer mixes examples), so the rows kept are those of an unpadded call.
    """
    import keras

    from export.signatures import call_model, model_signature, outputs_as_dict

    names = output_names or model_signature(model).output_names

    def forward(feeds):
        return outputs_as_dict(call_model(model, feeds), names)

    if keras.backend.backend() != "tensorflow":
        from keras_transformer.backend import compile_function

        forward = compile_function(forward, model, fast_compile=True)

    bucket = {"batch": None}

    def run(feeds):
        batch = _batch_size(feeds)
        if bucket["batch"] and batch and batch < bucket["batch"]:
            outputs = forward(_pad_batch(feeds, batch, bucket["batch"]))
            if all(np.ndim(value) and len(value) == bucket["batch"] for value in outputs.values()):
                return {name: np.asarray(value)[:batch] for name, value in outputs.items()}
        outputs = forward(feeds)
        return {name: np.asarray(value) for name, value in outputs.items()}

    if hasattr(forward, "output_shapes"):  # JAX: shapes by a trace alone, without compiling
        run.output_shapes = lambda feeds: {name: tuple(value.shape) for name, value in forward.output_shapes(feeds).items()}

        def prepare(cases):
            bucket["batch"] = max((_batch_size(case.feeds) or 0 for case in cases), default=None)

        run.prepare = prepare
        run.compiled_shapes = forward.compiled_shapes
    return run


def _batch_size(feeds):
    sizes = {len(value) for value in feeds.values() if np.ndim(value)}
    return sizes.pop() if len(sizes) == 1 else None


def _pad_batch(feeds, batch, size):
    """`feeds` with `size` rows: each input's first row repeated after its `batch` rows."""
    return {name: np.concatenate([value, np.repeat(value[:1], size - batch, axis=0)])
            if np.ndim(value) and len(value) == batch else value for name, value in feeds.items()}


def session_runner(session):
    """`feeds -> {output_name: numpy}` for an `onnxruntime.InferenceSession`."""
    names = [output.name for output in session.get_outputs()]
    input_names = {i.name for i in session.get_inputs()}

    def run(feeds):
        values = session.run(names, {k: v for k, v in feeds.items() if k in input_names})
        return dict(zip(names, values))

    return run


def _as_runner(candidate):
    if hasattr(candidate, "get_outputs") and hasattr(candidate, "run"):
        return session_runner(candidate)
    return candidate


def compare(reference, candidate, cases, comparator=None):
    """Runs both sides on every case and compares every output of the reference.

    Returns:
        A `ValidationTable` with one row per (case, output). A candidate output that is missing
        is a failed row.
    """
    comparator = comparator or allclose()
    candidate = _as_runner(candidate)
    if hasattr(reference, "prepare"):
        reference.prepare(cases)  # see `keras_reference`: the shapes the sweep will compile
    rows = []
    for case in cases:
        expected = reference(case.feeds)
        actual = candidate(case.feeds)
        if isinstance(actual, (list, tuple)):
            actual = dict(zip(expected, actual))
        for name, value in expected.items():
            value = np.asarray(value)
            if name not in actual:
                rows.append(ComparisonRow(case.name, name, value.shape, float("inf"),
                                          f"missing; got {sorted(actual)}", False))
                continue
            result = comparator(value, actual[name])
            rows.append(ComparisonRow(case.name, name, value.shape, result.max_abs_diff, result.detail, result.ok,
                                      result.counts))
    return ValidationTable(rows, getattr(comparator, "name", ""), getattr(comparator, "aggregate", None))


def model_limits_max_length(model, max_length=None):
    """The longest sweep length: the model's own limit (learned positions), capped by `max_length`,
    else `DEFAULT_MAX_LENGTH` (512)."""
    from export.signatures import model_limits

    lengths = [n for n in (model_limits(model)[1], max_length) if n]
    return min(lengths) if lengths else DEFAULT_MAX_LENGTH


def model_sweep(model, inputs, max_length=None, vocab_size=None, batch_sizes=(1, 3), seed=0):
    """`build_sweep` with the vocabulary and the longest length read from the model's layers."""
    from export.signatures import model_limits

    return build_sweep(
        inputs, batch_sizes=batch_sizes, max_length=model_limits_max_length(model, max_length),
        vocab_size=vocab_size or model_limits(model)[0] or 2, seed=seed,
        value_ranges=getattr(model, "input_value_ranges", None),
    )
