"""The demo's scheduler: APScheduler's ``AsyncIOScheduler`` on the app's event loop, with
every job monitored by jobpulse's APScheduler integration (no decorator on the jobs).

Each job runs at once when the scheduler starts, then every interval on a fixed grid, as the
spec's cron line runs them. A tick that comes while the job's previous run still goes is
skipped (``max_instances=1``), so a hung run never piles up copies of itself; jobpulse counts
it as a skipped run. A late tick still runs (``misfire_grace_time=None``, coalesced into one),
as with robfig/cron.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone

from apscheduler.schedulers.asyncio import AsyncIOScheduler

import jobpulse
from jobpulse.integrations.apscheduler import instrument_scheduler

__all__ = ["JobFunction", "start_scheduler", "stop_scheduler"]

#: A job: a coroutine function taking no arguments.
JobFunction = Callable[[], Awaitable[object]]


def start_scheduler(
    monitor: jobpulse.JobMonitor, jobs: Mapping[str, JobFunction], interval_seconds: float
) -> AsyncIOScheduler:
    """Start an instrumented scheduler running each of `jobs` (job id: its name) at once and
    then every `interval_seconds`. Call it on the running event loop, which runs the jobs."""
    scheduler = AsyncIOScheduler(timezone=timezone.utc)
    instrument_scheduler(scheduler, monitor)
    now = datetime.now(timezone.utc)
    for name, func in jobs.items():
        scheduler.add_job(
            func,
            "interval",
            seconds=interval_seconds,
            id=name,
            next_run_time=now,
            max_instances=1,
            misfire_grace_time=None,
        )
    scheduler.start()
    return scheduler


async def stop_scheduler(
    scheduler: AsyncIOScheduler, monitor: jobpulse.JobMonitor, timeout_seconds: float = 2.0
) -> None:
    """Shut the scheduler down, cancelling the runs in progress, and wait (at most
    `timeout_seconds`) until they have ended, so that their end is recorded."""
    scheduler.shutdown()  # done on the loop at its next turn; cancels the running jobs
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds

    async def runs_in_progress() -> bool:
        # With a store the view is the store's: write this process's runs to it first (off
        # the loop), else a run that just ended shows until the next write.
        await asyncio.to_thread(monitor.flush, max(deadline - loop.time(), 0.0))
        return any(status.active_runs for status in monitor.statuses().values())

    while loop.time() < deadline and (scheduler.running or await runs_in_progress()):
        await asyncio.sleep(0.01)
