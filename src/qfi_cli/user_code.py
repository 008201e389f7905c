"""Hydra's ``_target_`` convention without Hydra: a dotted path to the user's own class or function.

``model._target_=mypkg.nets.MyNet`` and ``data._target_=mypkg.data.make`` name an object qfi imports the way Python
does (an installed package, ``PYTHONPATH``, or the working directory, which is searched last). Anything that goes
wrong on the way is a one-line :class:`QfiError` naming the key.

>>> resolve_target("collections.OrderedDict", "model._target_").__name__
'OrderedDict'
>>> target_label("mypkg.nets.MyNet")
'MyNet'
>>> resolve_target("collections.NoSuchThing", "model._target_")
Traceback (most recent call last):
...
qfi_cli.errors.QfiError: model._target_=collections.NoSuchThing: module collections has no attribute NoSuchThing
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from qfi_cli.errors import QfiError, first_line

TARGET = "_target_"


def target_label(path: str) -> str:
    """The last part of a dotted path: the name results and reports show."""
    return str(path).rpartition(".")[2]


def named_targets(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every ``_target_`` of a nested config (dicts, lists and tuples), by dotted key.

    >>> named_targets({"model": {"_target_": "m.Net"}, "data": {"name": "digits"}, "x": [{"_target_": "os.system"}]})
    {'model._target_': 'm.Net', 'x.0._target_': 'os.system'}
    """
    items = (config.items() if isinstance(config, Mapping)
             else enumerate(config) if isinstance(config, (list, tuple)) else ())
    found = {}
    for key, value in items:
        if key == TARGET:
            found[prefix + TARGET] = value
        elif isinstance(value, (Mapping, list, tuple)):
            found.update(named_targets(value, f"{prefix}{key}."))
    return found


@dataclass(frozen=True)
class Trust:
    """Which ``_target_`` a saved config (a checkpoint's) may name, so that importing it is the user's choice: those
    this run's own config names (``given``, dotted key -> path), or any with ``code`` (``--trust-code``).

    >>> Trust({"model._target_": "m.Net"}).check({"model": {"_target_": "m.Net"}}, "model.pt")
    >>> Trust().check({"model": {"_target_": "os.system"}}, "model.pt")
    Traceback (most recent call last):
    ...
    qfi_cli.errors.QfiError: model.pt names model._target_=os.system: pass model._target_=os.system or --trust-code to import it
    """

    given: Mapping[str, Any] = field(default_factory=dict)
    code: bool = False

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> "Trust":
        """The trust a run's own (composed) config gives: the targets it names, and ``trust_code``."""
        return cls(named_targets({k: v for k, v in config.items() if k != "trust_code"}),
                   config.get("trust_code") is True)

    def check(self, saved: Any, source: str) -> None:
        """Raise a one-line QfiError for the first ``_target_`` of ``saved`` that this trust does not cover."""
        if self.code:
            return
        for key, path in named_targets(saved).items():
            if not (isinstance(path, str) and self.given.get(key) == path):
                shown = path if isinstance(path, str) else repr(path)[:80]
                raise QfiError(f"{source} names {key}={shown}: pass {key}={shown} or --trust-code to import it")


def _import_longest(parts: list[str], key: str, path: str) -> tuple[Any, int]:
    """The longest importable module prefix of ``parts`` and its length."""
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        try:
            return importlib.import_module(module), i
        except ModuleNotFoundError as e:
            if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise QfiError(f"{key}={path}: importing {module} failed: {first_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - the user's module raised while importing
            raise QfiError(f"{key}={path}: importing {module} failed: {type(e).__name__}: {first_line(e)}") from None
    raise QfiError(f"{key}={path}: no module named {parts[0]} (install it, put it on PYTHONPATH, or run qfi from "
                   "the directory that holds it)")


def resolve_target(path: Any, key: str) -> Callable[..., Any]:
    """The callable that the dotted ``path`` names (``key`` is the config key, for messages)."""
    if not isinstance(path, str) or "." not in path.strip(".") or any(not p.isidentifier() for p in path.split(".")):
        raise QfiError(f"{key} must be a dotted path such as mypkg.nets.MyNet, got {path!r}")
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)  # like `python -m`, but last: an installed package of the same name wins
    parts = path.split(".")
    obj, i = _import_longest(parts, key, path)
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            owner = f"module {obj.__name__}" if inspect.ismodule(obj) else ".".join(parts[:j])
            raise QfiError(f"{key}={path}: {owner} has no attribute {parts[j]}")
        obj = getattr(obj, parts[j])
    if not callable(obj):
        raise QfiError(f"{key}={path} is not callable (it is a {type(obj).__name__}): name a class or function")
    return obj


def call_target(fn: Callable[..., Any], kwargs: dict[str, Any], key: str, path: str,
                optional: dict[str, Any] | None = None) -> Any:
    """``fn(**kwargs)``, plus each ``optional`` argument that ``fn`` names as a parameter and ``kwargs`` leaves out.

    An argument ``fn`` does not take, or an exception inside ``fn``, is a one-line QfiError.

    >>> def make(n, num_classes=2): return n, num_classes
    >>> call_target(make, {"n": 3}, "data._target_", "m.make", optional={"num_classes": 10, "in_channels": 1})
    (3, 10)
    >>> call_target(make, {"m": 3}, "data._target_", "m.make")
    Traceback (most recent call last):
    ...
    qfi_cli.errors.QfiError: unknown setting data.m for m.make (it takes: n, num_classes)
    """
    section = key.rpartition(".")[0]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature: just call
        params = None
    args = dict(kwargs)
    if params is not None:
        named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(args) - set(named))
            if unknown:
                raise QfiError(f"unknown setting {section}.{unknown[0]} for {path} (it takes: "
                               f"{', '.join(named) or 'nothing'})")
        args.update({k: v for k, v in (optional or {}).items() if k in named and k not in args})
    try:
        return fn(**args)
    except Exception as e:  # noqa: BLE001 - the user's code raised
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise QfiError(f"{key}={path}: {target_label(path)}({shown}) failed: {type(e).__name__}: "
                       f"{first_line(e)}") from None
