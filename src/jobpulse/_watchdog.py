"""One thread, a heap of deadlines, asleep until the earliest one comes due.

The watchdog knows nothing of jobs: it holds at most one live deadline per key and calls
``on_due(key, now)`` when that deadline passes; the callback returns the key's next deadline
(or None). Nothing is polled: with no deadline pending the thread waits on its condition
forever, and a new earlier deadline wakes it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Hashable

from jobpulse._clock import Clock
from jobpulse._fork import after_fork_in_child
from jobpulse._guard import Guard

__all__ = ["Watchdog"]

_DUE_GUARD = Guard("watchdog deadline")
# The thread's waits run on CLOCK_MONOTONIC, which stops while a host is suspended, and the
# deadlines on the clock's monotonic time, which does not (CLOCK_BOOTTIME): after a resume
# the thread looks again within this long.
_MAX_WAIT_SECONDS = 60.0

DueCallback = Callable[[Hashable, float], "float | None"]


class Watchdog:
    """Calls `on_due` for each key whose deadline (on `clock.monotonic()`) has passed.

    Thread-safe. `on_due` runs on the watchdog thread (or inside `FakeClock.advance`) with no
    lock held, under the guard. The thread is a daemon, started with the watchdog (and in a
    forked child, at the fork), not at its first deadline: a host that checks which threads
    its work leaves behind (Celery's own test suite does) sees it from the start.
    """

    def __init__(
        self, clock: Clock, on_due: DueCallback, *, name: str = "jobpulse-watchdog"
    ) -> None:
        self._clock = clock
        self._on_due = on_due
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Hashable]] = []
        self._deadlines: dict[Hashable, float] = {}
        self._sequence = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._manual = clock.on_advance(self._wake_manual)
        self._start()
        after_fork_in_child(self._reset_after_fork)

    def _start(self) -> None:
        if not self._manual:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def schedule(self, key: Hashable, deadline: float) -> None:
        """Make sure `on_due(key, ...)` runs at `deadline` or earlier. A later deadline for a
        key that already has an earlier one is ignored."""
        with self._cond:
            if self._stopped:
                return
            current = self._deadlines.get(key)
            if current is not None and current <= deadline:
                return
            self._deadlines[key] = deadline
            heapq.heappush(self._heap, (deadline, next(self._sequence), key))
            if not self._manual and self._heap[0][2] == key:
                self._cond.notify()

    def pending(self) -> int:
        """How many keys have a deadline waiting."""
        with self._cond:
            return len(self._deadlines)

    def tick(self) -> None:
        """Run every callback whose deadline has passed, now, on this thread."""
        now = self._clock.monotonic()
        due: list[Hashable] = []
        with self._cond:
            while self._heap and self._heap[0][0] <= now:
                deadline, _, key = heapq.heappop(self._heap)
                if self._deadlines.get(key) == deadline:
                    del self._deadlines[key]
                    due.append(key)
        for key in due:
            next_deadline = None
            with _DUE_GUARD:
                next_deadline = self._on_due(key, now)
            if next_deadline is not None:
                self.schedule(key, next_deadline)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread (waiting at most `timeout` seconds) and forget every deadline."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._deadlines.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _wake_manual(self) -> None:
        self.tick()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - self._clock.monotonic()
                    if delay <= 0:
                        break
                    self._cond.wait(min(delay, _MAX_WAIT_SECONDS))
                if self._stopped:
                    return
            self.tick()

    def _reset_after_fork(self) -> None:
        # The parent's thread does not exist in the child, and its deadlines belong to runs of
        # the parent's threads: start empty.
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._deadlines = {}
        self._thread = None
        if not self._stopped:
            self._start()
