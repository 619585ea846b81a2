"""Progress bars, all with Rich: a stage's training bar (a Lightning callback) and the bars of the commands
that loop over images or files (evaluation, export, ranking, prediction, label conversion). Bars go to
standard error, so standard output keeps only what a command reports."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pytorch_lightning.callbacks import RichProgressBar
from rich.console import Console
from rich.progress import Progress, track

T = TypeVar("T")
_CONSOLE = Console(stderr=True)


class StageProgressBar(RichProgressBar):
    """``teach (toy) steps ━━━━ 120/200`` instead of Lightning's ``Epoch 0/-2`` (stages are step-based)."""

    def __init__(self, stage: str, dataset: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = f"{stage} ({dataset})" if dataset else stage

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's text
        return f"{self.label} steps"

    @property
    def validation_description(self) -> str:
        return f"{self.label} target val"


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
