"""``qfi report DIR``: render a sweep directory's summary, study table, paired differences and plots again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qfi_cli.commands.base import Command
from qfi_cli.commands.options import fail
from qfi_cli.errors import QfiError


def options(sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory (qfi sweep --out).")]) -> None:
    """Render summary.csv, the study table, paired differences and the plots again from a sweep directory."""
    from qfi_cli.report import aggregate

    try:
        aggregate(sweep_dir)
    except QfiError as e:
        fail(str(e))


COMMAND = Command(None, "report", options, panel="Results", extra_args=False)
