"""One rich progress bar per named phase: the ``progress(what, done, total)`` callback every stage accepts."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class PhaseProgress:
    """``with PhaseProgress() as progress: stage(..., progress=progress)``; a total of 0 means unknown.

    Args:
        width: characters reserved for the phase names.
    """

    def __init__(self, width: int = 24) -> None:
        columns = (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.bar = Progress(*columns)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> PhaseProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.bar.__exit__(kind, error, trace)

    def __call__(self, what: str, done: int, total: int) -> None:
        if what not in self.tasks:
            self.tasks[what] = self.bar.add_task(what, total=total or None)
        self.bar.update(self.tasks[what], completed=done, total=total or None)

    @property
    def started(self) -> bool:
        """Whether any phase reported (a stage that found its work done reports none)."""
        return bool(self.tasks)
