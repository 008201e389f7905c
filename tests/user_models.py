"""A user's own model classes and data callables, reached from tests as ``tests.user_models.NAME``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MyNet(nn.Module):
    """A small CNN that is not one of qfi's models: conv-BN-ReLU, pooled to 2x2, then a linear head."""

    def __init__(self, num_classes: int, in_channels: int = 1, hidden: int = 8) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.features = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(4 * hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FixedNet(nn.Module):
    """A model whose constructor takes neither num_classes nor in_channels (always 10 classes of 1x8x8)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_mlp(num_classes: int, width: int = 16) -> nn.Module:
    """A factory function instead of a class."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))


class NotAModule:
    def __init__(self, num_classes: int = 10) -> None:
        self.num_classes = num_classes


def not_a_model(num_classes: int) -> str:
    return "a string"


WIDTH = 16  # not callable


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images * 15).astype(np.uint8)[:, None], bunch.target  # 0..240, (1797, 1, 8, 8)


def make_digits(n_test: int = 400) -> dict:
    """The user's data: digits as uint8 images (numpy), the last ``n_test`` for testing."""
    x, y = _digits()
    return {"x_train": x[:-n_test], "y_train": y[:-n_test], "x_test": x[-n_test:], "y_test": y[-n_test:]}


def make_flat() -> dict:
    """A wrong shape: flat (N, 64) vectors instead of (N, C, H, W) images."""
    x, y = _digits()
    return {"x_train": x.reshape(len(x), -1), "y_train": y, "x_test": x.reshape(len(x), -1), "y_test": y}
