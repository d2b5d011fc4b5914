"""Helpers for testing code that uses jobpulse (and jobpulse itself)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from jobpulse._clock import Clock

__all__ = ["FakeClock"]

_DEFAULT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeClock(Clock):
    """A clock that moves only when told to.

    Pass it as ``JobMonitor(clock=...)``. The monitor then runs no watchdog thread:
    `advance` fires every deadline that has come due before it returns, so tests are exact
    and never sleep. `advance` moves the wall clock and the monotonic clock together (time
    passing, also a suspended host); `step_wall` moves only the wall clock, either way, as
    NTP or an operator setting the system clock does. Thread-safe.
    """

    def __init__(self, start: datetime = _DEFAULT_START) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock start must be timezone-aware")
        self._lock = threading.Lock()
        self._time_ns = int(start.timestamp()) * 1_000_000_000 + start.microsecond * 1_000
        self._monotonic = 1_000.0
        self._callbacks: list[Callable[[], None]] = []

    def time_ns(self) -> int:
        with self._lock:
            return self._time_ns

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def now(self) -> datetime:
        """The current fake time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time_ns() / 1e9, tz=timezone.utc)

    def on_advance(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            self._callbacks.append(callback)
        return True

    def advance(self, seconds: float | timedelta) -> None:
        """Move time forward, then run whatever came due (stall deadlines) before returning."""
        step = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if step < 0:
            raise ValueError("a clock cannot go back")
        with self._lock:
            self._time_ns += round(step * 1e9)
            self._monotonic += step
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def step_wall(self, seconds: float | timedelta) -> None:
        """Set the wall clock forward (or back, with a negative step) by `seconds`, leaving
        the monotonic clock where it is. Nothing comes due: deadlines are monotonic."""
        step = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        with self._lock:
            self._time_ns += round(step * 1e9)
