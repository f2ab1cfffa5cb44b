"""Parse small duration strings once, at the edge: "30s", "500ms", "2m", or a bare number of seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: str | float | int) -> float:
    """Return seconds. Raises ValueError with the offending text."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite duration: {value!r}")
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    match = _PATTERN.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 500ms, 2m)")
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]


def parse_positive_duration(value: str | float | int) -> float:
    """As `parse_duration`, and more than zero: a deadline of `0s` can never be met."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"a duration of {value!r} can never be met: give more than 0s")
    return seconds


Seconds = Annotated[float, BeforeValidator(parse_duration)]
"""A pydantic field type: accepts "30s" / "500ms" / 12 and stores seconds as float."""
PositiveSeconds = Annotated[float, BeforeValidator(parse_positive_duration)]
"""`Seconds` that must be more than zero (a `within`)."""
