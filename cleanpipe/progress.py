"""Progress for long work: rich bars for folds, epochs and batches, or nothing."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class NullProgress:
    """Reports nothing (library use, tests)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def start(self, label: str, total: int, level: int = 0) -> None:
        pass

    def advance(self, level: int, completed: int | None = None, note: str = "") -> None:
        pass

    def log(self, text: str) -> None:
        pass

    def finish(self) -> None:
        """A piece of work is done: drop its bars."""


class RichProgress(NullProgress):
    """Nested bars: level 0 (e.g. folds), 1 (epochs), 2 (batches)."""

    def __init__(self, console: Console | None = None) -> None:
        self.bars = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("[dim]{task.fields[note]}"),
            console=console,
            transient=True,  # the stage prints its own summary afterwards
        )
        self.tasks: dict[int, int] = {}

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def start(self, label: str, total: int, level: int = 0) -> None:
        if level in self.tasks:
            self.bars.reset(self.tasks[level], total=total, description=label, note="")
        else:
            self.tasks[level] = self.bars.add_task(label, total=total, note="")

    def advance(self, level: int, completed: int | None = None, note: str = "") -> None:
        task = self.tasks.get(level)
        if task is None:
            return
        if completed is None:
            self.bars.advance(task)
        else:
            self.bars.update(task, completed=completed)
        if note:
            self.bars.update(task, note=note)

    def log(self, text: str) -> None:
        self.bars.console.print(text)

    def finish(self) -> None:
        for task in self.tasks.values():
            self.bars.remove_task(task)
        self.tasks.clear()
