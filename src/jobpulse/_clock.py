"""Where jobpulse reads the time, so that tests can replace it."""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    """The system clock: wall time for timestamps, monotonic time for deadlines.

    Subclasses (see `jobpulse.testing.FakeClock`) may move time by hand. Thread-safe.
    """

    def time_ns(self) -> int:
        """Wall-clock time in nanoseconds since the epoch (what span timestamps use)."""
        return time.time_ns()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences are meaningful."""
        return time.monotonic()

    def on_advance(self, callback: Callable[[], None]) -> bool:
        """Ask to have `callback` called each time this clock is moved forward by hand.

        Returns False when the clock moves by itself (the system clock): the caller must then
        wait in real time, which is what the watchdog's thread does.
        """
        return False


SYSTEM_CLOCK = Clock()
