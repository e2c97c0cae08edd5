"""Rich progress bars for long work, fed by the ``progress(...)`` callbacks tasks accept."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def step_progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A callback ``(step, done, total)`` that draws one bar per step description."""
    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:

        def update(step: str, done: int, total: int) -> None:
            if step not in bars:
                bars[step] = progress.add_task(step, total=total)
            progress.update(bars[step], completed=done, total=total)

        yield update


@contextlib.contextmanager
def count_progress(console: Console, description: str) -> Iterator[Callable[[int, int], None]]:
    """A callback ``(done, total)`` for a single bar."""
    with step_progress(console) as update:
        yield lambda done, total: update(description, done, total)
