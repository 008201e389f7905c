"""How the report writes numbers and files: bit error rates and fractions as percentages, estimates with their
intervals, a study-table ``Column``, and CSV files (every report module formats with these)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qfi_cli.io import atomic_write
from qfi_cli.report.study import Config, Estimate

MARK = "*"


def fmt_p(ber: float) -> str:
    """A bit error rate as a percentage, as Stutz et al. print it.

    >>> fmt_p(1e-4), fmt_p(0.025), fmt_p(1e-5)
    ('0.01%', '2.5%', '0.001%')
    """
    return f"{100 * ber:.6g}%"


def csv_p(ber: float) -> str:
    """A bit error rate in a column name: ``rerr_pct@0.0001``."""
    return f"{ber:g}"


def pct(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """A fraction in percent (percentage points when ``signed``); "-" when missing.

    >>> pct(0.0482), pct(-0.0123, signed=True), pct(None)
    ('4.82', '-1.23', '-')
    """
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:{'+' if signed else ''}.{digits}f}"


def interval(est: Estimate | None, signed: bool = False, mark: bool = False) -> str:
    """``mean [low, high]`` in percent; ``MARK`` appended when ``mark`` and the interval excludes 0.

    >>> interval(Estimate(0.0505, 0.048, 0.0531))
    '5.05 [4.80, 5.31]'
    >>> interval(Estimate(-0.02, -0.03, -0.01), signed=True, mark=True)
    '-2.00 [-3.00, -1.00]*'
    """
    if est is None or est.mean is None:
        return "-"
    text = pct(est.mean, signed=signed)
    if est.low is not None and est.high is not None:
        text += f" [{pct(est.low, signed=signed)}, {pct(est.high, signed=signed)}]"
    return text + (MARK if mark and est.excludes_zero else "")


@dataclass
class Column:
    """One column of the study table: its header (markdown and console), its table.csv names, and its cell
    for a configuration: (text, csv values, one per csv name)."""

    header: str
    csv: tuple[str, ...]
    cell: Callable[[Config], tuple[str, tuple]]
    left: bool = False


def write_csv(path: Path, header: list[str], body: list[list[Any]]) -> Path:
    """Write a CSV file atomically: ``header``, then one line per entry of ``body`` (None as "")."""

    def write(f: Any) -> None:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows([["" if v is None else v for v in line] for line in body])

    return atomic_write(path, write, mode="w")
