"""Progress output: a live Rich bar on a terminal, plain log lines otherwise (files, CI, sweep workers)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """Report long loops. ``live=None`` picks a live bar only when stderr is a terminal.

    >>> r = Reporter(live=False)
    >>> with r.task("epochs", total=2) as advance:
    ...     advance(1, "loss 0.5")
    """

    def __init__(self, live: bool | None = None, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live

    def log(self, message: str) -> None:
        if self.live:
            self.console.log(message)
        else:
            print(message, file=sys.stderr, flush=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int, str], None]]:
        """Yield ``advance(steps, status)``; plain mode prints one line per call that carries a status."""
        if not self.live:
            done = [0]

            def advance(steps: int = 1, status: str = "") -> None:
                done[0] += steps
                if status:
                    print(f"{description} {done[0]}/{total} {status}", file=sys.stderr, flush=True)

            yield advance
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[status]}"))
        with Progress(*columns, console=self.console, transient=False) as progress:
            tid = progress.add_task(description, total=total, status="")

            def advance(steps: int = 1, status: str = "") -> None:
                progress.update(tid, advance=steps, **({"status": status} if status else {}))

            yield advance
