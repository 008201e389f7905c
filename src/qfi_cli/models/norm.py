"""Normalisation layers by name: batch norm, or group norm (Stutz et al. found it more robust to bit errors)."""

from __future__ import annotations

from torch import nn

from qfi_cli.errors import QfiError

NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``batch``: BatchNorm2d; ``group``: GroupNorm with up to 32 groups (as many as divide ``channels``).

    >>> norm_layer("group", 16)
    GroupNorm(16, 16, eps=1e-05, affine=True, bias=True)
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in range(min(32, channels), 0, -1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise QfiError(f"unknown model.norm {kind!r}; choose one of: {', '.join(NORMS)}")
