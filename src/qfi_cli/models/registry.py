"""The model registry: ``@register_model(name)`` on a builder ``(num_classes, in_channels, **kw) -> nn.Module``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from qfi_cli.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def build_model(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """Build a float model by name.

    >>> build_model("digits_cnn", num_classes=10, in_channels=1).__class__.__name__
    'DigitsCNN'
    """
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)


def list_models() -> list[str]:
    """Names of the registered models.

    >>> "resnet20" in list_models()
    True
    """
    return MODELS.names()
