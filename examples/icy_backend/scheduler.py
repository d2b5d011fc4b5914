"""A minimal interval scheduler on the running event loop: the stand-in for APScheduler.

It keeps APScheduler's shape so that swapping it is a few lines in `app.py`: `add` is
``scheduler.add_job(func, "interval", seconds=..., next_run_time=now, max_instances=1,
id=name)``, `start` and `shutdown` are the scheduler's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["IntervalScheduler", "JobFunction"]

logger = logging.getLogger("icy_backend.scheduler")

#: A job: a coroutine function taking no arguments.
JobFunction = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class _Entry:
    name: str
    func: JobFunction
    interval_seconds: float


class IntervalScheduler:
    """Runs each added job at once on `start`, then every `interval_seconds` on a fixed grid.

    A tick that comes while the job's previous run is still going is skipped (APScheduler's
    ``max_instances=1``), so a hung run never piles up copies of itself. An exception from a
    run does not end the schedule; it is logged at DEBUG by type only, since the jobs are
    monitored and the monitor logs their failures with credentials redacted.

    Not thread-safe: use it from the event loop's thread only.
    """

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, func: JobFunction, interval_seconds: float) -> None:
        """Schedule `func` under `name`; takes effect at the next `start`."""
        if not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be positive, got {interval_seconds!r}")
        self._entries.append(_Entry(name, func, interval_seconds))

    def start(self) -> None:
        """Start every job's loop on the running event loop. Raises `RuntimeError` when
        called outside a running loop or twice without `shutdown`."""
        if self._tasks:
            raise RuntimeError("the scheduler is already running")
        self._tasks = [
            asyncio.create_task(self._loop(entry), name=f"job:{entry.name}")
            for entry in self._entries
        ]

    async def shutdown(self) -> None:
        """Cancel every job loop, and the runs in progress with them, and wait until they
        are done. Idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, entry: _Entry) -> None:
        loop = asyncio.get_running_loop()
        interval = entry.interval_seconds
        next_tick = loop.time()
        while True:
            try:
                await entry.func()
            except Exception as exc:  # noqa: BLE001 - a failed run must not end its schedule
                logger.debug("job %s raised %s", entry.name, type(exc).__name__)
            next_tick += interval
            now = loop.time()
            if now > next_tick:
                skipped = math.ceil((now - next_tick) / interval)
                next_tick += skipped * interval
                logger.info(
                    "job %s: skipped %d run%s while its previous run was still going",
                    entry.name,
                    skipped,
                    "" if skipped == 1 else "s",
                )
            await asyncio.sleep(next_tick - now)
