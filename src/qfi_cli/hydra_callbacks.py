"""Hydra callbacks: at the end of a multirun, aggregate the points into summary.csv, the plots and the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class AggregateSweep(Callback):
    """Runs ``qfi_cli.report.aggregate`` on the sweep directory when the multirun ends; its rows go to
    ``qfi_cli.app.LAST["rows"]`` (the CLI exits non-zero when points failed)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from qfi_cli.app import LAST
        from qfi_cli.report import aggregate

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            LAST["rows"] = aggregate(sweep_dir)
