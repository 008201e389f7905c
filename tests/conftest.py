"""Shared test fixtures: tiny models in float64 (so tolerances are set by float64 rounding) and tiny configs."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("MPLBACKEND", "Agg")


def tiny_cnn(seed: int = 0) -> nn.Module:
    """conv-BN-ReLU, conv-BN-ReLU, pool, linear: small, with batch norm, float64."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).double()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty directory so that outputs/ and latest_checkpoint.txt land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QFI_OUTPUTS", raising=False)
    return tmp_path


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """Run in an empty directory with the outputs root (QFI_OUTPUTS) inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QFI_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path


TINY_CFG_OVERRIDES = ["train.epochs=3", "model.width=8", "device=cpu"]


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A digits_cnn trained for a few epochs through the engine; returns (checkpoint path, config dict)."""
    from qfi_cli.engine.train import train
    from tests.helpers import compose

    cfg = compose(TINY_CFG_OVERRIDES)
    out = tmp_path_factory.mktemp("trained")
    metrics = train(cfg, out)
    assert metrics["test_accuracy"] > 0.8, "the fixture model should have learnt digits"
    return out / "model.pt", cfg
