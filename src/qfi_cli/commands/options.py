"""The pieces every command's options use: shared option types, option -> override, one-line usage errors, the
result table. Light to import (no torch, no Hydra): the CLI builds its help from every command.

>>> ov = []
>>> opt(ov, "sam.rho", 0.05); opt(ov, "resume", True); opt(ov, "model", None); opt(ov, "data.root", "my data")
>>> ov
['sam.rho=0.05', 'resume=true', "data.root='my data'"]
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from qfi_cli.progress import wide_console

console = wide_console()
errors = Console(stderr=True)


@functools.lru_cache(maxsize=None)
def default(group_file: str, key: str) -> str:
    """A default from the shipped config, for help pages.

    >>> default("quant/lsq", "wbits")
    '8'
    """
    from omegaconf import OmegaConf

    from qfi_cli.paths import conf_dir

    value = OmegaConf.select(OmegaConf.load(conf_dir() / f"{group_file}.yaml"), key)
    return str(value)


Overrides = Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides, e.g. train.lr=0.05 quant=minmax; "
                                                                "or --cfg job to print the composed config.",
                                                           show_default=False)]
Out = Annotated[Optional[Path], typer.Option("--out", help="Output directory.",
                                             show_default="outputs/<command>/<time>")]
Checkpoint = Annotated[Optional[Path], typer.Option(help="model.pt to evaluate.",
                                                    show_default="the latest from `qfi train`")]
Precision = Annotated[Optional[float], typer.Option(help="Run trials until the 95% interval of mean accuracy is "
                                                         "within +-this (0.01: one point), between eval.min_trials "
                                                         "and eval.max_trials; replaces --trials.",
                                                    show_default=False)]
TrustCode = Annotated[bool, typer.Option("--trust-code", help="Import the code (model._target_, data._target_) "
                                                              "that the checkpoint's saved config names; without "
                                                              "it only a _target_ this command line names is "
                                                              "imported.")]


def opt(overrides: list[str], key: str, value: Any) -> None:
    """Append ``key=value`` (quoted as Hydra reads it literally) unless the option was not given (None)."""
    if value is not None:
        overrides.append(f"{key}={quote(str(value).lower() if isinstance(value, bool) else value)}")


def quote(value: Any) -> str:
    """A value as Hydra's override grammar reads it literally: paths with spaces, quotes, ``~``, ``${...}``, ``=``.

    >>> quote(3), quote("a b"), quote("${x}")
    ('3', "'a b'", "'\\\\${x}'")
    """
    text = str(value)
    if isinstance(value, (int, float)) or all(c.isalnum() or c in "._-/:" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${") + "'"


def fail(message: str) -> None:
    """Print ``error: message`` (one line on stderr) and exit with status 2."""
    errors.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def float_text(name: str, text: str | None) -> float | None:
    """A float option given as text: decimal or scientific notation; a nonzero value that underflows to 0 is an
    error (``--ber 1e-400`` is not 0).

    >>> float_text("--ber", "1e-4"), float_text("--ber", None)
    (0.0001, None)
    """
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        fail(f"{name} must be a number, got {text!r}")
    if value == 0 and any(c in "123456789" for c in text.lower().split("e")[0]):
        fail(f"{name}={text} is too small for a double-precision number (it would be 0)")
    if not math.isfinite(value):
        fail(f"{name} must be a finite number, got {text}")
    return value


def rates_text(text: str | None) -> list[float] | None:
    """``--bers 1e-5,1e-4``: the rates as floats (at least one).

    >>> rates_text("1e-5, 1e-4")
    [1e-05, 0.0001]
    """
    if text is None:
        return None
    values = [float_text("--bers", part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        fail("--bers needs at least one rate, e.g. --bers 1e-5,1e-4,1e-3")
    return values


def table(title: str, rows: dict[str, Any]) -> None:
    """Print ``rows`` (label -> value) as a two-column table; floats with 4 decimals, None as "-"."""
    out = Table(title=title, show_header=False)
    for key, value in rows.items():
        out.add_row(key, f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value))
    console.print(out)


__all__ = ["Checkpoint", "Out", "Overrides", "TrustCode", "console", "default", "errors", "fail", "float_text",
           "opt", "quote", "rates_text", "table"]
