"""Numbers as people read them, the same in the terminal, the live view and the report:
thousands separators, one precision per column, a setting whose values are all whole numbers
written as integers (warmup_epochs 0, 1, 2; not 0.00, 1.00, 2.00).
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Callable, Iterable, Sequence

from hpo.config import SCHEMA, schema_key

INTEGERS = {"rank", "best_epoch", "epochs_trained", "params", "epoch", "epochs", "seed",
            "runs"}
TEXTS = {"trial_id", "point", "status", "reason", "node", "config", "name"}
METRIC_PREFIXES = ("val_", "train_", "test_")
MAX_DECIMALS = 4  # beyond: scientific (5.00e-04, not 0.000500)
METRIC_DECIMALS = 4  # val_acc 0.8123: a validation split of 5,000 images moves it by 0.0002


def kind_of(column: str, values: Iterable[Any] = ()) -> str:
    """How a column's values read: "int", "float", "bool" or "text". A config key's comes from
    its schema (aug_rotate is a float even when every value is whole; convs_2 an int even when
    a CSV blank made pandas read it as float); other columns by name, else from the values."""
    if column in INTEGERS:
        return "int"
    if column in TEXTS:
        return "text"
    key = SCHEMA.get(schema_key(column))
    if key is not None:
        if key.choices is not None:
            first = key.choices[0]
            return "bool" if isinstance(first, bool) else "int" if isinstance(
                first, int) else "text"
        return "int" if key.allowed.whole else "float"
    present = [v for v in values if not _blank(v)]
    if present and all(_is_bool(v) for v in present):
        return "bool"
    if present and all(isinstance(v, numbers.Integral) for v in present):
        return "int"
    if present and all(isinstance(v, numbers.Real) for v in present):
        return "float"
    return "text"


def formatter(values: Sequence[Any], kind: str = "float", digits: int = 3,
              min_decimals: int = 0, scientific: bool = True,
              decimals: int | None = None) -> Callable[[Any], str]:
    """A function that writes any value of this column, all at one precision.

    "int": thousands separators (1,234,567). "float": `decimals` decimals, else as many as
    give the column's largest value `digits` significant digits, at least `min_decimals`
    (1 keeps a setting of 15.0 from reading as the integer 15); with `scientific`,
    scientific notation for the whole column when that would show a value below 1 with
    fewer than two significant digits (learning rates from 0.3 down to 0.0002).
    Blank (None, NaN) reads as "".
    """
    if kind == "int":
        return lambda v: "" if _blank(v) else _special(v) or f"{int(v):,}"
    if kind == "bool":
        return lambda v: "" if _blank(v) else str(bool(v))
    if kind == "text":
        return lambda v: "" if _blank(v) else str(v)
    finite = [abs(float(v)) for v in values if _finite(v)]
    nonzero = [v for v in finite if v > 0]
    top = max(finite, default=0.0)
    needed = decimals
    if decimals is None:
        needed = min_decimals
        if top > 0:
            needed = max(min_decimals, digits - 1 - math.floor(math.log10(top)))
        decimals = min(needed, MAX_DECIMALS)
    # a fraction shown with fewer than two significant digits (or as 0.000) says too little
    if scientific and nonzero and (needed > MAX_DECIMALS
                                   or min(nonzero) < min(1.0, 10 ** (1 - decimals))):
        return lambda v: ("" if _blank(v) else _special(v)
                          or ("0" if float(v) == 0 else f"{float(v):.{digits - 1}e}"))
    return lambda v: "" if _blank(v) else _special(v) or f"{float(v):,.{decimals}f}"


def column(name: str, values: Sequence[Any]) -> list[str]:
    """`values` of the column `name` as strings, one precision for all: see
    `column_formatter`."""
    values = list(values)
    write = column_formatter(name, values)
    return [write(v) for v in values]


def column_formatter(name: str, values: Sequence[Any]) -> Callable[[Any], str]:
    """The `formatter` of the column `name` holding `values`: metrics (val_*, train_*,
    test_*) to METRIC_DECIMALS, settings that are floats to three significant digits (as
    integers when every value is whole), measurements (wall_s, img_per_s) to three
    significant digits, none below the point beyond 99."""
    kind = kind_of(name, values)
    if name.startswith(METRIC_PREFIXES):
        return formatter(values, kind, decimals=METRIC_DECIMALS)
    setting = SCHEMA.get(schema_key(name)) is not None
    present = [v for v in values if _finite(v)]
    if setting and kind == "float" and present and all(float(v).is_integer() for v in present):
        kind = "int"  # a float setting searched over whole values reads as what it is
    return formatter(values, kind, scientific=setting)


def metric(v: Any) -> str:
    """A metric's value on its own, as its column shows it (val_acc 0.8123)."""
    return "—" if _blank(v) else formatter([v], decimals=METRIC_DECIMALS)(v)


def value(v: Any) -> str:
    """One number on its own: an int with separators (1,234), a float to three significant
    digits."""
    return formatter([v], kind_of("", [v]))(v)


def duration(seconds: float | None) -> str:
    """42s, 3m 05s, 1h 02m: wall times and estimates at a glance."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


# numpy and pandas are looked up, never imported: `hpo leaderboard` formats plain values without
# them, and a value of theirs exists only once something else has imported them
def _blank(v: Any) -> bool:
    if v is None:
        return True
    pd = sys.modules.get("pandas")
    if pd is not None:  # its missing values: NaN, NA, NaT
        return pd.api.types.is_scalar(v) and bool(pd.isna(v))
    return (isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)
            and math.isnan(v))


def _is_bool(v: Any) -> bool:
    np = sys.modules.get("numpy")
    return isinstance(v, bool) or (np is not None and isinstance(v, np.bool_))


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not _is_bool(v) and math.isfinite(v)


def _special(v: Any) -> str:
    """inf and -inf (a diverged loss), which no precision applies to; "" otherwise."""
    if isinstance(v, numbers.Real) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return ""
