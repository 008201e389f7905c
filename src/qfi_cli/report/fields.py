"""Checks of the values a run's JSON file holds (results.json, attack.json): each names the first value that does
not hold in one line, as ``Invalid``; and how such a value is shown in that line.

>>> number({"ber": 0.5}, "ber"), integer({"trials": 3.0}, "trials", low=1)
(0.5, 3)
>>> number({"ber": "x"}, "ber")
Traceback (most recent call last):
...
qfi_cli.report.fields.Invalid: ber is "x", not a number
"""

from __future__ import annotations

import json
import math
from typing import Any


class Invalid(ValueError):
    """A results.json (or attack.json) whose status says ok but whose content does not hold."""


def is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def show(value: Any) -> str:
    """A value as the file spells it (JSON), cut to 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def number(res: dict, key: str, low: float | None = 0.0, high: float | None = 1.0,
            required: bool = True) -> float | None:
    value = res.get(key)
    if value is None:
        if required:
            raise Invalid(f"{key} is missing")
        return None
    if not is_number(value):
        raise Invalid(f"{key} is {show(value)}, not a number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise Invalid(f"{key} is {value}, outside [{low}, {high}]")
    return float(value)


def integer(res: dict, key: str, low: int | None = None, required: bool = True) -> int | None:
    value = res.get(key)
    if value is None:
        if required:
            raise Invalid(f"{key} is missing")
        return None
    if not is_number(value) or value != int(value):
        raise Invalid(f"{key} is {show(value)}, not a whole number")
    if low is not None and value < low:
        raise Invalid(f"{key} is {value}, below {low}")
    return int(value)


def one_line(text: Any) -> str:
    text = str(text or "").strip()
    return text.splitlines()[0] if text else ""
