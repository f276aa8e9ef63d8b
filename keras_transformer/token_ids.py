"""Token-id inputs of generation, checked on the host before anything runs (numpy only).

`keras_transformer.search` re-exports these; they are shared by the Keras models' `generate` and
by onnxruntime generation (`export.decoding`), so both accept and refuse the same inputs.
"""

import numpy as np


def check_token_id(name, value, vocab_size, allow_none=False):
    """Check one token id argument (`start_id`, `end_id`) and return it as a Python int.

    Args:
        name: the argument's name, for the error message.
        value: the id received.
        vocab_size: ids must lie in `[0, vocab_size)`.
        allow_none: whether `None` (no such token) is accepted.

    Returns:
        `int(value)`, or None when `value` is None and that is allowed.

    Raises:
        ValueError: `value` is not an integer id in range.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < vocab_size:
        raise ValueError(f"`{name}` must be a token id in [0, {vocab_size}); received {name}={value!r}.")
    return int(value)


def check_token_ids(name, token_ids, vocab_size):
    """Raise a ValueError naming the first out-of-vocabulary id (ids are never clipped silently).

    Args:
        name: the argument's name, for the error message.
        token_ids: a 2-D integer array.
        vocab_size: ids must lie in `[0, vocab_size)`.
    """
    bad = (token_ids < 0) | (token_ids >= vocab_size)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` must hold token ids in [0, vocab_size={vocab_size}); received "
            f"{int(token_ids[row, col])} at position [{row}, {col}] "
            f"(range of the input: {int(token_ids.min())}..{int(token_ids.max())})."
        )


def whole_number_ids(name, array):
    """`array` as int64 when it holds floats that are all whole numbers (ids read from float data
    fit exactly); other arrays are returned as they are.

    Raises:
        ValueError: a float is not a whole number (or not finite); names `name`, the value and
            its position.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        return array
    bad = ~np.isfinite(array) | (array != np.round(array))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` must hold token ids (integers, or floats with whole values); received "
            f"{array[where].item()!r} at position {list(where)} (dtype {array.dtype})."
        )
    return array.astype(np.int64)


def _as_int_array(name, token_ids):
    try:
        array = np.asarray(token_ids)
    except ValueError:
        array = None  # ragged nested lists
    if array is not None and array.dtype != object:
        array = whole_number_ids(name, array)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"`{name}` must hold integer token ids; received dtype {array.dtype}.")
        return array.astype(np.int64), None
    rows = [whole_number_ids(name, row) for row in token_ids]
    for row in rows:
        if row.ndim != 1 or (row.size and not np.issubdtype(row.dtype, np.integer)):
            raise TypeError(f"`{name}` must be a list of integer id sequences; received a row {row!r}.")
    return None, rows


def prepare_prompts(prompt_token_ids, vocab_size, pad_id, name="prompt_token_ids"):
    """Normalise prompts to a right-padded `(batch, P)` int32 buffer and per-row lengths.

    Accepts one prompt (1-D), a `(batch, length)` array right-padded with `pad_id` (a row's
    length is up to its last non-pad token), or a list of lists of different lengths.

    Args:
        prompt_token_ids: the prompts, in one of the forms above.
        vocab_size: ids must lie in `[0, vocab_size)`.
        pad_id: the id that right-pads rows of a 2-D array (and the new buffer).
        name: the argument's name, for error messages.

    Returns:
        `(buffer, lengths, single)` where `single` says the input was one 1-D prompt.

    Raises:
        TypeError: the ids are not integers.
        ValueError: the shape is wrong, a prompt is empty or an id is out of range.
    """
    array, rows = _as_int_array(name, prompt_token_ids)
    single = array is not None and array.ndim == 1
    if array is not None:
        if single:
            array = array[None, :]
        if array.ndim != 2:
            raise ValueError(
                f"`{name}` must be 1-D (one sequence) or 2-D (batch, length); received "
                f"shape {array.shape}."
            )
        not_pad = array != pad_id
        lengths = np.zeros(array.shape[0], dtype=np.int64)  # zero columns: every prompt is empty
        if array.shape[1]:
            lengths = np.where(not_pad.any(axis=1), array.shape[1] - np.argmax(not_pad[:, ::-1], axis=1), 0)
        if single:
            lengths = np.array([array.shape[1]])
        rows = [array[i, : lengths[i]] for i in range(array.shape[0])]
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    if len(rows) == 0 or lengths.min() == 0:
        raise ValueError(
            f"Every sequence in `{name}` needs at least one token; received lengths "
            f"{lengths.tolist()}."
        )
    buffer = np.full((len(rows), int(lengths.max())), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        buffer[i, : len(row)] = row
    check_token_ids(name, buffer, vocab_size)
    return buffer.astype(np.int32), lengths, single


def suppressed_ids(vocab_size, pad_id, end_id=None, suppress_ids=None, allow_pad=False):
    """The ids generation never chooses, as a sorted int64 array.

    Args:
        vocab_size: ids must lie in `[0, vocab_size)`.
        pad_id: suppressed unless `allow_pad` (or it is also `end_id`): results are right-padded
            with it, so a generated pad could not be told from padding.
        end_id: the stop id; it cannot be suppressed.
        suppress_ids: further ids never to generate (an id or a sequence of ids), or None.
        allow_pad: let the model generate `pad_id`.

    Raises:
        ValueError: an id is out of range, `end_id` is in `suppress_ids`, or every id would be
            suppressed.
    """
    if suppress_ids is None:
        suppress_ids = ()
    elif isinstance(suppress_ids, (int, np.integer)):
        suppress_ids = (suppress_ids,)
    ids = {check_token_id("suppress_ids", value, vocab_size) for value in suppress_ids}
    if end_id is not None and end_id in ids:
        raise ValueError(f"`suppress_ids` must not contain end_id={end_id}; received suppress_ids={sorted(ids)}.")
    if not allow_pad and pad_id is not None and pad_id != end_id:
        ids.add(int(pad_id))
    if len(ids) >= vocab_size:
        raise ValueError(f"`suppress_ids` (with pad_id={pad_id}) must leave some of the {vocab_size} ids to "
                         f"generate; received suppress_ids={sorted(ids)}.")
    return np.array(sorted(ids), dtype=np.int64)
