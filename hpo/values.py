"""The allowed values of a setting, and the one check of them.

Config keys (hpo.config), a space file's settings (hpo.space) and the options of `hpo search`
and `hpo train` (hpo.options) all say what they take with a `Range`, a `OneOf` or a `Name`, so
each value is checked the same way wherever it comes from, with the same message:
"<name> must be <what>, got <value>" (the command line's: "argument --<name>: must be ...").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hpo.errors import ConfigError


class Allowed:
    """What a setting takes: `problem(value)` says what is wrong with a value (None: nothing),
    `parse(text)` reads the command line's text, `describe()` says it in words."""

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """The value in `text`; ValueError (the problem) when it is not allowed."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, name: str, value: Any) -> Any:
        """`value` if allowed; ConfigError "<name> must be ..., got ..." otherwise."""
        problem = self.problem(value)
        if problem:
            raise ConfigError(f"{name} {problem}")
        return value


@dataclass(frozen=True)
class Range(Allowed):
    """Numbers from `low` (excluded when `low_open`) to `high`; `whole` numbers only when
    set."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    whole: bool = False

    def problem(self, value: Any) -> str | None:
        kind = "a whole number" if self.whole else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {kind}, got {value!r}"
        if self.whole and (not math.isfinite(value) or int(value) != value):
            return f"must be {kind}, got {value!r}"
        low_ok = self.low < value if self.low_open else self.low <= value
        if math.isnan(value) or not low_ok or value > self.high:
            return f"must be {self.describe()}, got {_show(value)}"
        return None

    def parse(self, text: str) -> int | float:
        try:
            value = int(text) if self.whole else float(text)
        except ValueError:
            kind = "a whole number" if self.whole else "a number"
            raise ValueError(f"must be {kind}, got {text!r}") from None
        problem = self.problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def describe(self) -> str:
        """The allowed values in words: "1 or more", "in (0, 1]", "in 0..16"."""
        low, high = _show(self.low), _show(self.high)
        if self.high == math.inf:
            if self.low == -math.inf:
                return "a number"
            return f"above {low}" if self.low_open else f"{low} or more"
        if self.whole and not self.low_open:
            return f"in {low}..{high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}]"


@dataclass(frozen=True)
class OneOf(Allowed):
    """One of `choices` (compared with their type: True is not 1)."""

    choices: tuple

    def problem(self, value: Any) -> str | None:
        if any(value == c and type(value) is type(c) for c in self.choices):
            return None
        return f"must be {self.describe()}, got {value!r}"

    def parse(self, text: str) -> Any:
        by_text = {str(c): c for c in self.choices}
        if text not in by_text:
            raise ValueError(f"must be {self.describe()}, got {text!r}")
        return by_text[text]

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


@dataclass(frozen=True)
class Name(Allowed):
    """A name that becomes one folder: not empty, no path separator, not . or .."""

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be {self.describe()}, got {value!r}"
        if value.strip() in ("", ".", "..") or "/" in value or "\\" in value:
            return f"must be {self.describe()}, got {value!r}"
        return None

    def parse(self, text: str) -> str:
        problem = self.problem(text)
        if problem:
            raise ValueError(problem)
        return text

    def describe(self) -> str:
        return "a folder's name (not empty, no / or \\, not . or ..)"


WHOLE = Range(1, whole=True)  # 1, 2, 3, ...
COUNT = Range(0, whole=True)  # 0, 1, 2, ...
BOOL = OneOf((False, True))
FRACTION = Range(0, 1, low_open=True)  # of the training images a study trains on
VAL_FRACTION = Range(0, 0.9, low_open=True)  # of those, held out to validate every trial
IMAGE_SIZE = Range(1, 4096, whole=True)  # pixels of the square every image is resized to
CHANNELS = OneOf((1, 3))  # grayscale or RGB


def _show(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)
