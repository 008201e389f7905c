"""``qfi report DIR``: render a sweep directory's summary, study table, paired differences and plots again, the
curves drawn as asked (lines, panels, subset, log y, formats, size)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qfi_cli.commands.base import Command
from qfi_cli.commands.options import fail
from qfi_cli.errors import QfiError


def _list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _size(text: str | None) -> tuple[float, float] | None:
    """``7x4.5`` -> (7.0, 4.5) inches."""
    if text is None:
        return None
    try:
        width, height = (float(v) for v in text.lower().split("x"))
    except ValueError:
        raise QfiError(f"--size takes WIDTHxHEIGHT in inches (e.g. 7x4.5), got {text!r}") from None
    return width, height


def _select(items: list[str]) -> dict[str, tuple[str, ...]]:
    """``["quant.wbits=4,8", "recipe=sam"]`` -> {"quant.wbits": ("4", "8"), "recipe": ("sam",)}."""
    out = {}
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or not key.strip() or not _list(values):
            raise QfiError(f"--select takes KEY=V1,V2 (e.g. quant.wbits=4,8), got {item!r}")
        out[key.strip()] = _list(values)
    return out


def options(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory (qfi sweep --out).")],
    lines: Annotated[Optional[str], typer.Option(help="Factor with one line per value (default: recipe, else "
                                                      "sam.rho, else the first that varies).")] = None,
    panels: Annotated[Optional[str], typer.Option(help="Factor with one panel per value (default: the others).")]
    = None,
    y: Annotated[str, typer.Option(help="Curves to draw: accuracy (ber_curve), rerr (rerr_curve), or both.")]
    = "accuracy,rerr",
    select: Annotated[Optional[list[str]], typer.Option(help="Draw only these values: KEY=V1,V2 (repeatable).")]
    = None,
    logy: Annotated[bool, typer.Option("--logy", help="Log-scale y axis (RErr spans decades).")] = False,
    fmt: Annotated[str, typer.Option("--format", help="Figure formats: png, pdf, svg (comma-separated; PDF and "
                                                      "SVG keep real text).")] = "png",
    dpi: Annotated[int, typer.Option(help="Resolution of PNG figures.")] = 150,
    size: Annotated[Optional[str], typer.Option(help="Figure size WIDTHxHEIGHT in inches (default: by the "
                                                     "panels).")] = None,
    no_title: Annotated[bool, typer.Option("--no-title", help="Leave the figure title out (a paper's caption "
                                                              "says it).")] = False,
) -> None:
    """Render summary.csv, the study table, paired differences and the plots again from a sweep directory."""
    from qfi_cli.report import FigureOptions, aggregate

    try:
        figures = FigureOptions(lines=lines, panels=panels, metrics=_list(y), select=_select(select or []),
                                logy=logy, formats=_list(fmt), dpi=dpi, size=_size(size), title=not no_title)
        aggregate(sweep_dir, figures=figures.validated())
    except QfiError as e:
        fail(str(e))


COMMAND = Command(None, "report", options, panel="Results", extra_args=False)
