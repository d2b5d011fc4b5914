"""Where jobpulse reads the time, so that tests can replace it."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

# Elapsed time that includes a suspended host (Linux's CLOCK_BOOTTIME), so that the runs a
# schedule expected while the machine slept are counted; time.monotonic elsewhere.
_MONOTONIC: Callable[[], float] = (
    functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
    if hasattr(time, "CLOCK_BOOTTIME")
    else time.monotonic
)


class Clock:
    """The system clock: wall time for timestamps shown to people, monotonic time for
    durations and deadlines.

    The monotonic clock never goes back and is never set: a step of the wall clock (NTP, an
    operator) changes no duration and moves no deadline. On Linux it also counts the time a
    suspended host slept (``CLOCK_BOOTTIME``).

    Subclasses (see `jobpulse.testing.FakeClock`) may move time by hand. Thread-safe.
    """

    def time_ns(self) -> int:
        """Wall-clock time in nanoseconds since the epoch (what span timestamps use)."""
        return time.time_ns()

    def __init__(self) -> None:
        # Read on every run: the system's functions themselves, not a method around each.
        if type(self).monotonic is Clock.monotonic:  # not a subclass's own
            self.monotonic = _MONOTONIC  # type: ignore[method-assign]
        if type(self).time_ns is Clock.time_ns:
            self.time_ns = time.time_ns  # type: ignore[method-assign]

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences are meaningful."""
        return _MONOTONIC()

    def on_advance(self, callback: Callable[[], None]) -> bool:
        """Ask to have `callback` called each time this clock is moved forward by hand.

        Returns False when the clock moves by itself (the system clock): the caller must then
        wait in real time, which is what the watchdog's thread does.
        """
        return False


SYSTEM_CLOCK = Clock()
