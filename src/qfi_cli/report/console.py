"""The report on the terminal (Rich): the study per configuration and p, the paired differences grouped by
factor, and the points that failed or could not be read."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from qfi_cli.report.study import Estimate, Pair, Study, build_study
from qfi_cli.report.format import MARK, interval
from qfi_cli.report.tables import PAIRED
from qfi_cli.progress import wide_console
from qfi_cli.stats import describe_ci



def _ber(value: Any) -> str:
    return "-" if value is None else "0" if value == 0 else f"{value:.1e}"


def _table(title: str, caption: str | None = None) -> Table:
    return Table(title=title, caption=caption, title_style="bold", caption_justify="left", header_style="bold",
                 box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)


def render_table(rows: list[dict[str, Any]], console: Console | None = None, study: Study | None = None) -> Table:
    """Print the study as a Rich table, one line per configuration and p (training seeds aggregated): seeds,
    clean accuracy, accuracy and RErr in % with their 95% CI; then the points that are not ok, with their error.
    """
    console = console or wide_console()
    study = build_study(rows) if study is None else study
    trials = sorted({t for cell in study.cells.values() for t in cell.trials})
    title = "Accuracy and RErr under bit errors, mean over training seeds"
    title += f", {trials[0]} trials per point" if len(trials) == 1 else ""
    table = _table(title, describe_ci(study.seed_counts() or [1], sequential=study.sequential))
    keys = study.factors or ["config"]
    for k in keys:
        table.add_column(k, no_wrap=True, min_width=min(len(k), 24), max_width=40)
    table.add_column("BER", justify="right", no_wrap=True)
    table.add_column("seeds", justify="right", no_wrap=True)
    if len(trials) > 1:
        table.add_column("trials", justify="right", no_wrap=True)
    for name in ("clean %", "accuracy % [95% CI]", "RErr % [95% CI]"):
        table.add_column(name, justify="right", no_wrap=True)
    for config in study.configs:
        for ber in study.bers:
            cell = study.cell(config, ber)
            if cell is None:
                continue
            values = [("" if config.values.get(k) is None else str(config.values[k])) for k in study.factors] \
                if study.factors else [config.label]
            n = [";".join(map(str, cell.trials))] if len(trials) > 1 else []
            clean = 1.0 - study.clean_error[config.key].mean
            table.add_row(*values, _ber(ber), str(len(cell.rows)), *n, f"{100 * clean:.2f}",
                          interval(cell.accuracy), interval(cell.rerr))
    console.print(table)
    render_failures(rows, console)
    return table


def render_failures(rows: list[dict[str, Any]], console: Console) -> None:
    """One line per point that is not ok: its status, directory, BER and error."""
    for row in rows:
        if row.get("status") != "ok":
            console.print(f"[red]{row.get('status')}[/red] {row.get('dir')} (BER {_ber(row.get('ber'))}): "
                          f"{row.get('error') or '?'}", highlight=False, soft_wrap=True)


def _styled(est: Estimate, better: int) -> str:
    """The difference with its CI and mark; green when the CI lies on the better side (sign ``better``)."""
    text = interval(est, signed=True, mark=True)
    if est.excludes_zero:
        color = "green" if (est.mean or 0) * better > 0 else "red"
        return f"[{color}]{text}[/{color}]"
    return text


def render_paired(pairs: list[Pair], console: Console | None = None, everything: bool = False) -> list[Table]:
    """Print the paired differences, one table per factor: value - baseline, in percentage points, for accuracy
    and RErr, each with its CI (``*`` where it excludes 0; green where it favours ``value``).

    Unless ``everything``, only the differences from each factor's first level are printed (for ``recipe``:
    from ``normal``); paired.csv holds them all.
    """
    console = console or wide_console()
    tables, left = [], 0
    by_factor: dict[str, list[Pair]] = {}
    for p in pairs:
        by_factor.setdefault(p.factor, []).append(p)
    for factor, group in by_factor.items():
        first = group[0].baseline
        shown = group if everything else [p for p in group if p.baseline == first]
        left += len(group) - len(shown)
        seeds = sorted({p.seeds for p in shown})
        adaptive = any(p.sequential for p in shown)
        table = _table(f"{factor}: paired differences value - baseline (same training seed, same faults), "
                       "percentage points", f"{describe_ci(seeds, sequential=adaptive)}; {MARK}: the CI excludes 0")
        for name, justify in (("baseline", "left"), ("value", "left"), ("at", "left"), ("BER", "right"),
                              ("seeds", "right"), ("accuracy", "right"), ("RErr", "right")):
            table.add_column(name, justify=justify, no_wrap=name not in ("at",))
        for p in shown:
            at = " ".join(f"{k}={v}" for k, v in p.at.items())
            table.add_row(str(p.baseline), str(p.value), at, _ber(p.ber), str(p.seeds), _styled(p.accuracy, 1),
                          _styled(p.rerr, -1))
        console.print(table)
        tables.append(table)
    if left:
        console.print(f"{left} more paired difference(s) between other levels in {PAIRED}", highlight=False)
    return tables
