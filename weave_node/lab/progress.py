"""Step lines with timings (and a spinner on a terminal) for long-running lab commands."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console


class Step:
    def __init__(self, progress: Progress, text: str) -> None:
        self._progress = progress
        self.text = text
        self.detail = ""
        self.started = time.monotonic()

    def update(self, detail: str) -> None:
        self.detail = detail
        self._progress.refresh(self)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Progress:
    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet
        self._status: object | None = None
        self.timings: dict[str, float] = {}

    def refresh(self, step: Step) -> None:
        status = self._status
        if status is not None:
            detail = f" [dim]{step.detail[:100]}[/dim]" if step.detail else ""
            status.update(f"{step.text}{detail}")  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[Step]:
        step = Step(self, text)
        if self.quiet:
            yield step
            self.timings[text] = step.elapsed
            return
        with self.console.status(text) as status:
            self._status = status
            try:
                yield step
            except BaseException:
                self._status = None
                self.console.print(f"[red]✗[/red] {text} ({step.elapsed:.2f} s)")
                raise
            self._status = None
        self.timings[text] = step.elapsed
        done = f" — {step.detail}" if step.detail else ""
        self.console.print(f"[green]✓[/green] {text}{done} [dim]({step.elapsed:.2f} s)[/dim]")

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"  {text}")
