"""Hydra callbacks: at the end of a multirun, aggregate the points into summary.csv, ber_curve.png and a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class AggregateSweep(Callback):
    """Runs ``qfi_cli.report.aggregate`` on the sweep directory when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from qfi_cli.report import aggregate

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            aggregate(sweep_dir)
