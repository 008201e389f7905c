"""Hydra callbacks: at the end of a multirun, aggregate the points into summary.csv, the plots and the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class AggregateSweep(Callback):
    """Runs ``qfi_cli.report.aggregate`` on the sweep directory when the multirun ends, and gives the sweep's files
    to the experiment tracker (``logger``). (The CLI counts failed points from the points' own files.)"""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from qfi_cli.commands import COMMANDS
        from qfi_cli.loggers import log_run
        from qfi_cli.report import aggregate

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        aggregate(sweep_dir)
        files = COMMANDS.get("sweep").outputs
        logger = OmegaConf.to_container(config.logger, resolve=True) if "logger" in config else None
        log_run(logger, sweep_dir, OmegaConf.select(config, "paths.root"), {"sweep": str(sweep_dir)},
                artifacts=[sweep_dir / f for f in files])
