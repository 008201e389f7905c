"""Progress output: a live Rich bar on a terminal, plain log lines otherwise (files, CI, sweep workers)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def wide_console() -> Console:
    """A console for tables: the terminal's width, or 160 columns when the output is a file or a pipe (logs, CI),
    so that study tables are not squeezed into Rich's 80-column default."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


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
    def task(self, description: str, total: int, lines: int = 20) -> Iterator[Callable[[int, str], None]]:
        """Yield ``advance(steps, status)``. Plain mode prints at most about ``lines`` lines (a call with
        ``steps=0`` and a status, such as an epoch summary, always prints), each with the time left."""
        if not self.live:
            done, start, every = [0], time.perf_counter(), max(1, total // max(lines, 1))

            def advance(steps: int = 1, status: str = "") -> None:
                before = done[0]
                done[0] += steps
                crossed = done[0] // every > before // every or done[0] == total
                if status and (steps == 0 or crossed):
                    elapsed = time.perf_counter() - start
                    left = elapsed / done[0] * (total - done[0]) if done[0] else 0.0
                    print(f"{description} {done[0]}/{total} {status} ({_clock(elapsed)} elapsed, "
                          f"{_clock(left)} left)", file=sys.stderr, flush=True)

            yield advance
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
        with Progress(*columns, console=self.console, transient=False) as progress:
            tid = progress.add_task(description, total=total, status="")

            def advance(steps: int = 1, status: str = "") -> None:
                progress.update(tid, advance=steps, **({"status": status} if status else {}))

            yield advance


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss``) for a duration.

    >>> _clock(75.4), _clock(3725)
    ('1:15', '1:02:05')
    """
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
