"""The model registry: ``@register_model(name, input_size=...)`` on a builder ``(num_classes, in_channels, **kw)``."""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.registry import Registry

Builder = Callable[..., nn.Module]
MODELS: Registry[Builder] = Registry("model")
_INPUT_SIZE: dict[str, int] = {}


def register_model(name: str, input_size: int | None = None) -> Callable[[Builder], Builder]:
    """Register a float-model builder under ``name``; ``input_size`` is the image side it is made for (errors say it).

    Used as ``@register_model("lenet5", input_size=28)`` on ``def lenet5(num_classes=10, in_channels=1)``:

    >>> input_size("lenet5"), input_size("no_such_model")
    (28, None)
    """
    def add(builder: Builder) -> Builder:
        MODELS.register(name)(builder)
        if input_size is not None:
            _INPUT_SIZE[name] = input_size
        return builder

    return add


def input_size(name: str) -> int | None:
    """The image side a registered model is made for (None when any size works or it is not known)."""
    return _INPUT_SIZE.get(name)


def build_model(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """Build a float model by name; an argument the builder does not take is a one-line QfiError.

    >>> build_model("digits_cnn", num_classes=10, in_channels=1).__class__.__name__
    'DigitsCNN'
    """
    builder = MODELS.get(name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            takes = ", ".join(p for p in params if p not in ("num_classes", "in_channels")) or "nothing"
            raise QfiError(f"unknown setting model.{unknown[0]} for model {name} (it takes: {takes})")
    return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)


def list_models() -> list[str]:
    """Names of the registered models.

    >>> "resnet20" in list_models()
    True
    """
    return MODELS.names()
