"""Sweep reports: read a sweep's ``results.json`` files and write what a study needs.

``aggregate(sweep_dir)`` is the one entry point (the Hydra callback at the end of a multirun and ``qfi report
DIR`` call it). It writes into the sweep directory:

- ``summary.csv``: one row per point and bit error rate, every status (``collect``'s rows);
- ``table.md`` / ``table.csv``: the study table in Stutz et al.'s layout, one row per configuration (factor values;
  the training seed is a replicate), clean error and RErr at each p as mean over seeds [95% CI], seeds, sharpness,
  and each recipe's paired RErr difference from ``normal``;
- ``paired.csv``: paired differences between configurations that differ in exactly one factor;
- ``ber_curve.png`` (accuracy) and ``rerr_curve.png`` (RErr) against p, one line per configuration with its band;
- for each report section (``report.sections``) with points in the sweep, its CSV and its study table columns:
  attack.json points (``command=attack``, ``report.attack``) give ``attacks.csv`` and flips-to-target columns; a
  sweep of attacks only writes no summary.csv and no BER curves;

and prints the study, the paired differences by factor, and the points that failed. Modules: ``collect`` (read and
check), ``study`` (aggregate over seeds, pair), ``tables`` (files), ``plots``, ``console``, ``sections`` (what
other commands add).

>>> import io, tempfile, pathlib
>>> from rich.console import Console
>>> from qfi_cli.io import write_json
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for rho, accs in ((0.0, [0.8, 0.7]), (0.05, [0.9, 0.8])):
...     _ = write_json(d / f"rho{rho}" / "results.json", {
...         "status": "ok", "ber": 0.01, "trials": 2, "seed": 0, "fault_seed": 0, "clean_accuracy": 0.95,
...         "accuracy_mean": sum(accs) / 2, "accuracies": accs, "rerrs": [1 - a for a in accs],
...         "rerr_mean": 1 - sum(accs) / 2, "point": {"sam.rho": rho, "fault.ber": 0.01}})
>>> _ = write_json(d / "bad" / "results.json", [1, 2])
>>> rows = aggregate(d, Console(file=io.StringIO()))
>>> [(r["dir"], r["status"]) for r in rows]
[('bad', 'unreadable'), ('rho0.0', 'ok'), ('rho0.05', 'ok')]
>>> sum(r["status"] != "ok" for r in rows)  # what a sweep's exit status needs
1
>>> sorted(p.name for p in d.iterdir() if p.is_file())
['ber_curve.png', 'paired.csv', 'rerr_curve.png', 'summary.csv', 'table.csv', 'table.md']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from qfi_cli.errors import QfiError
from qfi_cli.layout import BER_CURVE, RERR_CURVE
from qfi_cli.progress import wide_console
from qfi_cli.report import attack
from qfi_cli.report.attack import collect_attacks
from qfi_cli.report.collect import (COLUMNS, RESULTS, collect, config_label, factors, pending_points,
                                    swept_keys)
from qfi_cli.report.console import render_failures, render_paired, render_table
from qfi_cli.report.plots import (FigureOptions, ber_figure, curve_figure, plot_ber_curve, plot_curves,
                                  plot_rerr_curve, rerr_figure)
from qfi_cli.report.sections import SECTIONS, Section, register_section, result_names
from qfi_cli.report.study import Estimate, Pair, Study, build_study
from qfi_cli.report.format import Column
from qfi_cli.report.tables import (PAIRED, PAIRED_COLUMNS, SUMMARY, TABLE_CSV, TABLE_GROUPS, TABLE_MD,
                                   study_columns, write_paired, write_study_table, write_summary)

SECTION_MODULES = (attack,)  # the report sections (report.sections), each registered by its module on import


def aggregate(sweep_dir: str | Path, console: Console | None = None,
              figures: FigureOptions | None = None) -> list[dict[str, Any]]:
    """Report a sweep: write summary.csv, table.md, table.csv, paired.csv, ber_curve.png and rerr_curve.png
    into ``sweep_dir`` (and each report section's CSV, attacks.csv) and print the study, each section, the paired
    differences and the failures. ``figures``: how the curves are drawn and which are written (``FigureOptions``;
    default: both curves as PNG).

    Returns ``collect``'s rows, one per results.json, then each section's rows (``collect_attacks``: one per
    attack.json): those whose ``status`` is not "ok" (failed, invalid, unreadable) are the points that did not give
    a result, so ``sum(r["status"] != "ok" for r in rows)`` is the count a sweep's exit status needs; points
    without any results.json or section file (not run, interrupted) are ``pending_points(sweep_dir)``. Raises
    QfiError (one line) when ``sweep_dir`` is missing or holds none of them.
    """
    console = console or wide_console()
    root = Path(sweep_dir)
    sections = SECTIONS.values()
    found = {s.name: s.collect(root) for s in sections}
    try:
        rows = collect(root)
    except QfiError:
        if not any(found.values()):
            raise
        rows = []  # a sweep of a section's points only (attacks)
    study = build_study(rows, [r for s in sections if s.study for r in found[s.name]])
    written = [write_summary(root, rows)] if rows else []
    written += [*write_study_table(root, study, rows), write_paired(root, study.pairs)]
    if rows:
        written += plot_curves(rows, root, study, figures)  # ber_curve.png, rerr_curve.png by default
        render_table(rows, console, study)
    for s in sections:
        if found[s.name]:
            written.append(s.write(root, found[s.name]))
            s.render(study, console)
            render_failures(found[s.name], console)
    if study.pairs:
        render_paired(study.pairs, console)
    for note in study.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    rows = rows + [r for s in sections for r in found[s.name]]
    _summarize(root, rows, written, console)
    return rows


def _summarize(root: Path, rows: list[dict[str, Any]], written: list[Path], console: Console) -> None:
    """The closing lines: how many points, failed, pending; which files were written."""
    failed = sum(r.get("status") != "ok" for r in rows)
    pending = pending_points(root)
    notes = [f"{len(rows)} point(s)"]
    if failed:
        notes.append(f"{failed} failed or unreadable")
    if pending:
        notes.append(f"{len(pending)} without {' or '.join([RESULTS, *result_names()])} (not run or interrupted)")
    console.print(", ".join(notes), highlight=False)
    console.print(f"wrote {', '.join(p.name for p in written)} in {root}", soft_wrap=True, highlight=False)


__all__ = [
    "BER_CURVE", "COLUMNS", "Column", "Estimate", "PAIRED", "PAIRED_COLUMNS", "Pair", "RERR_CURVE", "RESULTS",
    "SECTIONS", "SECTION_MODULES", "SUMMARY", "Section", "Study", "TABLE_CSV", "TABLE_GROUPS", "TABLE_MD",
    "FigureOptions", "aggregate", "ber_figure", "build_study", "collect", "collect_attacks", "config_label",
    "curve_figure", "factors", "pending_points", "plot_ber_curve", "plot_curves", "plot_rerr_curve",
    "register_section", "render_failures", "render_paired",
    "render_table", "rerr_figure", "study_columns", "swept_keys", "write_paired", "write_study_table", "write_summary",
]
