"""Hydra callbacks: at the end of a multirun, aggregate the points into summary.csv, the plots and the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class AggregateSweep(Callback):
    """Runs ``qfi_cli.report.aggregate`` on the sweep directory when the multirun ends; its rows go to
    ``qfi_cli.app.LAST["rows"]`` (the CLI exits non-zero when points failed), and the sweep's files to the
    experiment tracker (``logger``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from qfi_cli import layout
        from qfi_cli.app import LAST
        from qfi_cli.loggers import log_run
        from qfi_cli.report import aggregate

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        LAST["rows"] = aggregate(sweep_dir)
        files = (layout.SUMMARY, layout.BER_CURVE, layout.RERR_CURVE, layout.TABLE_MD, layout.TABLE_CSV,
                 layout.PAIRED, layout.ATTACKS_CSV)
        logger = OmegaConf.to_container(config.logger, resolve=True) if "logger" in config else None
        log_run(logger, sweep_dir, OmegaConf.select(config, "paths.root"), {"sweep": str(sweep_dir)},
                artifacts=[sweep_dir / f for f in files])
