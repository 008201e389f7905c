"""Reading plain config dicts into dataclasses: type coercion, unknown keys refused, one-line errors.

>>> from dataclasses import dataclass
>>> @dataclass
... class Opt:
...     lr: float = 0.1
...     steps: int = 3
>>> section(Opt, {"lr": 1}, "opt")
Opt(lr=1.0, steps=3)
>>> section(Opt, {"lr": 1, "speed": 2}, "opt")
Traceback (most recent call last):
...
qfi_cli.errors.QfiError: unknown setting opt.speed: no part of qfi reads it (known: lr, steps)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from qfi_cli.errors import QfiError

SEED_MAX = 2**63 - 1


def _describe(value: Any) -> str:
    return "null" if value is None else repr(value)


def coerce(path: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (bool, int, float, str, Optional[...], list[...], dict), or a one-line QfiError.

    >>> coerce("eval.trials", 10.0, int), coerce("fault.layers", "conv*", list[str])
    (10, ['conv*'])
    >>> coerce("train.lr", "fast", float)
    Traceback (most recent call last):
    ...
    qfi_cli.errors.QfiError: train.lr must be a number, got 'fast'
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return coerce(path, value, next(a for a in args if a is not type(None)))
    if value is None:
        raise QfiError(f"{path} must be set, got null")
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise QfiError(f"{path} must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise QfiError(f"{path} must be a whole number, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise QfiError(f"{path} must be a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise QfiError(f"{path} must be a finite number, got {value}")
        return float(value)
    if hint is str:
        if isinstance(value, (bool, list, dict)):
            raise QfiError(f"{path} must be a string, got {_describe(value)}")
        return str(value)
    if origin is list:
        items = value if isinstance(value, (list, tuple)) else [value]  # one value is a list of one
        return [coerce(f"{path}[{i}]", v, args[0] if args else Any) for i, v in enumerate(items)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise QfiError(f"{path} must be a mapping, got {_describe(value)}")
        return dict(value)
    if dataclasses.is_dataclass(hint):  # a class may read its own section (``from_plain``)
        return hint.from_plain(value, path) if hasattr(hint, "from_plain") else section(hint, value, path)
    raise TypeError(f"unsupported config type {hint!r} at {path}")


def section(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from the mapping ``data``: every field coerced, unknown keys refused, then
    ``cls.validated()`` if it has one."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise QfiError(f"{path} must be a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise QfiError(f"unknown setting {where}: no part of qfi reads it (known: {', '.join(sorted(names))})")
    values = {k: coerce(f"{path}.{k}" if path else k, v, hints[k]) for k, v in data.items()}
    obj = cls(**values)
    return obj.validated() if hasattr(obj, "validated") else obj


def require(ok: bool, message: str) -> None:
    if not ok:
        raise QfiError(message)


def check_seed(path: str, seed: int) -> int:
    require(0 <= seed <= SEED_MAX, f"{path} must lie in 0..2**63-1, got {seed}")
    return seed


