"""The report's sections: what a command whose points feed a sweep's report adds to it, registered once by name.

A section names the result file its points write (``attack.json``), its collector (the sweep directory's rows of
that file, one per point, each with ``status``, ``error`` and ``dir`` as ``collect`` gives them), its CSV writer
(``attacks.csv``), its console renderer and, optionally, its column group of the study table (a ``TABLE_GROUPS``
member, see ``report.tables``). ``report.aggregate`` and the study table iterate ``SECTIONS``; the section's own
module registers it (``report/attack.py``), and ``report/__init__.py`` imports that module (``SECTION_MODULES``).
With ``study=True`` the section's ok rows join the study's configurations (``build_study``'s ``attacks``, kept in
``Study.attacks``).

This module is a leaf: it imports no report module, so any of them may import it.

>>> demo = Section("demo", "demo.json", "demos.csv", collect=lambda root: [], write=lambda root, rows: root,
...                render=lambda study, console: None)
>>> demo.name, demo.result, demo.columns is None, demo.study
('demo', 'demo.json', True, False)
>>> SECTIONS.names(), result_names(), SECTIONS.get("attack").csv  # what the package registers
(['attack'], ['attack.json'], 'attacks.csv')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from qfi_cli.registry import Registry


@dataclass(frozen=True)
class Section:
    """One command's part of a sweep report.

    ``collect(sweep_dir)`` returns the rows of every ``result`` file under the sweep directory (none when there are
    none); ``write(sweep_dir, rows)`` writes ``csv`` and returns its path; ``render(study, console)`` prints the
    section; ``columns(study)`` returns the study table's columns and legend lines (none when the study holds no
    rows of the section).
    """

    name: str
    result: str
    csv: str
    collect: Callable[[Path], list[dict[str, Any]]]
    write: Callable[[Path, list[dict[str, Any]]], Path]
    render: Callable[[Any, Any], None]
    columns: Optional[Callable[[Any], "tuple[list, list[str]]"]] = None
    study: bool = False


SECTIONS: Registry[Section] = Registry("report section")


def register_section(section: Section) -> Section:
    """Register ``section`` under its name (once: a second registration of a name is a ValueError)."""
    return SECTIONS.register(section.name)(section)


def result_names() -> list[str]:
    """The result file names the registered sections read, in registration order."""
    return [s.result for s in SECTIONS.values()]


def section_columns(study: Any) -> tuple[list, list[str]]:
    """The registered sections' study table columns and legend lines, section by section (a ``TABLE_GROUPS``
    member, read when the table is made, so a section registered after ``report.tables`` is imported counts)."""
    columns: list = []
    legend: list[str] = []
    for section in SECTIONS.values():
        if section.columns is not None:
            c, lines = section.columns(study)
            columns += c
            legend += lines
    return columns, legend


__all__ = ["SECTIONS", "Section", "register_section", "result_names", "section_columns"]
