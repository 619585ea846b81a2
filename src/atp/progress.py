"""Progress bars of the commands that loop over images or files (evaluation, export, ranking, prediction,
label conversion), with Rich, the library of the stages' training bar (atp.callbacks.progress_bar). Bars go
to standard error, so standard output keeps only what a command reports."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import Progress, track

T = TypeVar("T")
_CONSOLE = Console(stderr=True)


def tracked(items: Iterable[T], description: str, total: int | None = None, transient: bool = False,
            disable: bool = False) -> Iterable[T]:
    """``items`` with a bar that advances once per item (``transient``: the bar disappears when done)."""
    return track(items, description=description, total=total, transient=transient, disable=disable,
                 console=_CONSOLE)


@contextmanager
def progress_bar(description: str, total: int | None, transient: bool = False,
                 disable: bool = False) -> Iterator[Callable[[int], None]]:
    """A bar advanced by hand: yields ``advance(n=1)``."""
    if disable:
        yield lambda n=1: None
        return
    with live_progress(transient) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def live_progress(transient: bool = False) -> Progress:
    """A Rich ``Progress`` on standard error for bars with several tasks (use it as a context manager)."""
    return Progress(*Progress.get_default_columns(), console=_CONSOLE, transient=transient)


def note(message: str) -> None:
    """A line on standard error that stays above any running bar."""
    _CONSOLE.print(message, highlight=False, markup=False, soft_wrap=True)
