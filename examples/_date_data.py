"""Dates written the way people write them, paired with ISO 8601 (`2021-03-05`).

Pure standard library (no TensorFlow), so the ONNX decoding path can use it too. Every format
is unambiguous on its own (US `03/05/21` is month/day, dotted `05.03.2021` is day.month), and
two-digit years mean 1950-2049. Character-level vocabulary shared by source and target.
"""

import datetime
import random

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
FIRST_DAY = datetime.date(1950, 1, 1)
LAST_DAY = datetime.date(2049, 12, 31)


def ordinal(n):
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _month(d):
    return MONTHS[d.month - 1]


def _day(d):
    return DAYS[d.weekday()]


# English names are spelled out here (not strftime) so the data never depends on the locale.
FORMATS = (
    lambda d: f"{_day(d)[:3]}, {d.day} {_month(d)} {d.year}",        # Sat, 5 March 2021
    lambda d: f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",        # 03/05/21
    lambda d: f"{ordinal(d.day)} of {_month(d)} {d.year}",            # 5th of March 2021
    lambda d: f"{_month(d)} {d.day}, {d.year}",                       # March 5, 2021
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",                  # 05.03.2021
    lambda d: f"{d.day} {_month(d)[:3]} {d.year}",                    # 5 Mar 2021
    lambda d: f"{_day(d)}, {_month(d)} {ordinal(d.day)}, {d.year}",   # Saturday, March 5th, 2021
    lambda d: f"{d.day}-{_month(d)[:3].upper()}-{d.year % 100:02d}",  # 5-MAR-21
    lambda d: f"{d.year}/{d.month}/{d.day}",                          # 2021/3/5
    lambda d: f"{_month(d)[:3]} {ordinal(d.day)} {d.year}",           # Mar 5th 2021
    lambda d: f"{d.month}/{d.day}/{d.year}",                          # 3/5/2021
    lambda d: f"the {ordinal(d.day)} of {_month(d).lower()}, {d.year}",  # the 5th of march, 2021
    lambda d: d.isoformat(),                                          # 2021-03-05 (already ISO)
)

PAD, START, END = 0, 1, 2
ALPHABET = "".join(sorted(set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,./-"
)))
VOCAB_SIZE = 3 + len(ALPHABET)
SOURCE_LENGTH = 32  # characters (the longest format has 31)
TARGET_LENGTH = 11  # "YYYY-MM-DD" + END
_ID = {ch: i + 3 for i, ch in enumerate(ALPHABET)}


def random_date(rng):
    return FIRST_DAY + datetime.timedelta(days=rng.randrange((LAST_DAY - FIRST_DAY).days + 1))


def make_pairs(count, seed=0, exclude=()):
    """`count` distinct `(human text, iso)` pairs; pairs whose text is in `exclude` are skipped."""
    rng = random.Random(seed)
    exclude, pairs, seen = set(exclude), [], set()
    while len(pairs) < count:
        date = random_date(rng)
        text = rng.choice(FORMATS)(date)
        if text in exclude or text in seen:
            continue
        seen.add(text)
        pairs.append((text, date.isoformat()))
    return pairs


def format_of(text, iso):
    """The example of the format (`FORMATS[i]` applied to 2021-03-05) that wrote `text` for the
    date `iso`, e.g. `"March 5, 2021"`; for accuracy per format."""
    date = datetime.date.fromisoformat(iso)
    example = datetime.date(2021, 3, 5)
    for write in FORMATS:
        if write(date) == text:
            return write(example)
    raise ValueError(f"`text` {text!r} is not written in any of FORMATS for the date {iso}.")


def encode(text, length):
    """Characters -> ids, right-padded with PAD to `length` (ValueError if it does not fit)."""
    if len(text) > length:
        raise ValueError(f"`text` must have at most {length} characters; received {len(text)}: {text!r}.")
    unknown = sorted(set(text) - set(_ID))
    if unknown:
        raise ValueError(f"`text` has characters outside the vocabulary: {unknown} in {text!r}.")
    return [_ID[ch] for ch in text] + [PAD] * (length - len(text))


def decode(ids):
    """Ids -> text, stopping at END or PAD."""
    chars = []
    for i in ids:
        i = int(i)
        if i in (END, PAD):
            break
        if i >= 3:
            chars.append(ALPHABET[i - 3])
    return "".join(chars)


def to_arrays(pairs):
    """`(sources, targets)` as nested lists of ints: `(N, SOURCE_LENGTH)` source ids and
    `(N, TARGET_LENGTH)` target ids (the ISO characters then END)."""
    sources = [encode(text, SOURCE_LENGTH) for text, _ in pairs]
    targets = [encode(iso, TARGET_LENGTH - 1) + [END] for _, iso in pairs]
    return sources, targets
