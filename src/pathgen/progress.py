"""Rich progress bars for long jobs: tiles done, tiles/s, ETA. Silent when quiet."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

QUIET = False  # set by the CLI's --quiet


class _Null:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **kw) -> None:
        pass


class _Bar:
    def __init__(self, progress: Progress, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._t, n)

    def update(self, **kw) -> None:
        self._p.update(self._t, **kw)


class _Rate(TextColumn):
    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task):  # tiles/s
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(total: int | None, description: str, unit: str = "tiles", quiet: bool | None = None) -> Iterator:
    """Context manager yielding an object with ``advance(n)``; prints nothing when quiet."""
    if QUIET if quiet is None else quiet:
        yield _Null()
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            _Rate(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*cols, transient=False) as p:
        yield _Bar(p, p.add_task(description, total=total))
