"""Rate limiting of repeated log messages, so that a flood (refused connections, failed handshakes, garbage from
the underlay) cannot push everything else out of the journal.

`LogLimiter` is the pure core: per message *key* (a fixed kind of message, such as "mesh.refused"), the first
`burst` messages of each `interval` pass; the others are counted, and when the interval is over the count is
handed back once, with the last suppressed message, to be logged as a summary line:

    <the last suppressed message> (suppressed 4211 similar messages in the last 60 s)

Time is an argument (`now`), so tests drive it with a fake clock. `RateLimitedLog` is the thin adapter the shells
use: a `logging.Logger`, a limiter and a clock function. One instance per thread (it holds no lock).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OVERFLOW = ""
"""The key under which messages of new keys are counted once `max_keys` keys are being tracked."""


@dataclass(frozen=True)
class Sample:
    """A message as the caller would log it (formatted only when it is written)."""

    level: int
    msg: str
    args: tuple[Any, ...] = ()

    def text(self) -> str:
        return self.msg % self.args if self.args else self.msg


@dataclass(frozen=True)
class Summary:
    key: str
    suppressed: int
    seconds: float  # the interval the count covers
    last: Sample  # the last message suppressed

    def text(self) -> str:
        what = "similar" if self.key != OVERFLOW else "other"
        return f"{self.last.text()} (suppressed {self.suppressed} {what} messages in the last {self.seconds:.0f} s)"


@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0
    last: Sample | None = field(default=None)


class LogLimiter:
    """Per key: `burst` messages per `interval` pass, the rest are counted and summarised (pure, `now`-driven)."""

    def __init__(self, *, burst: int = 5, interval: float = 60.0, max_keys: int = 256) -> None:
        if burst < 1 or interval <= 0 or max_keys < 1:
            raise ValueError("burst and max_keys must be at least 1 and interval positive")
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._windows: dict[str, _Window] = {}
        self._ready: list[Summary] = []

    def admit(self, key: str, sample: Sample, now: float) -> bool:
        """True when this message is to be logged now; False when it is counted instead. A window that was over
        before this message leaves its summary for `ready()`."""
        w = self._windows.get(key)
        if w is not None and now >= w.start + self.interval:
            self._end(key, w)
            w = None
        if w is None:
            if len(self._windows) >= self.max_keys and key != OVERFLOW:
                self._expire(now)
                if len(self._windows) >= self.max_keys:
                    return self.admit(OVERFLOW, sample, now)
            w = self._windows[key] = _Window(start=now)
        if w.passed < self.burst:
            w.passed += 1
            return True
        w.suppressed += 1
        w.last = sample
        return False

    def ready(self) -> list[Summary]:
        """Summaries left by `admit` (windows found over when a new message came); each is returned once."""
        out, self._ready = self._ready, []
        return out

    def due(self, now: float) -> list[Summary]:
        """End every window that is over; the summaries of those that suppressed something (and `ready()`'s)."""
        self._expire(now)
        return self.ready()

    def next_deadline(self) -> float | None:
        """When the next window with a count to report ends (None: nothing to report)."""
        ends = [w.start + self.interval for w in self._windows.values() if w.suppressed]
        return min(ends) if ends else None

    @property
    def suppressed(self) -> int:
        """Messages counted and not yet reported."""
        return sum(w.suppressed for w in self._windows.values())

    def _expire(self, now: float) -> None:
        for key, w in list(self._windows.items()):
            if now >= w.start + self.interval:
                self._end(key, w)

    def _end(self, key: str, w: _Window) -> None:
        del self._windows[key]
        if w.suppressed and w.last is not None:
            self._ready.append(Summary(key, w.suppressed, self.interval, w.last))


class RateLimitedLog:
    """A logger whose messages pass through a LogLimiter; `flush()` (called periodically) writes the summaries."""

    def __init__(self, logger: logging.Logger, limiter: LogLimiter, clock: Callable[[], float]) -> None:
        self.logger = logger
        self.limiter = limiter
        self.clock = clock

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        if not self.logger.isEnabledFor(level):
            return
        admitted = self.limiter.admit(key, Sample(level, msg, args), self.clock())
        self._write(self.limiter.ready())
        if admitted:
            self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=2)  # (the caller's line in the record)

    def flush(self) -> None:
        self._write(self.limiter.due(self.clock()))

    def next_deadline(self) -> float | None:
        return self.limiter.next_deadline()

    def _write(self, summaries: list[Summary]) -> None:
        for s in summaries:
            self.logger.log(s.last.level, "%s", s.text())
