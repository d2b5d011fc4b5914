"""APScheduler jobs monitored by jobpulse, their health served by a Starlette app.

An ``AsyncIOScheduler`` runs two jobs, neither of them decorated: ``refresh_prices`` (a
coroutine, run on the event loop, critical) and ``expire_sessions`` (a plain function, run
in the loop's thread pool). One call, ``instrument_scheduler``, monitors both and every job
added later. Run it from the repository root::

    python examples/apscheduler_starlette.py

then open http://127.0.0.1:8000/api/v1/health/jobs (one job:
``/api/v1/health/jobs/refresh_prices``; Prometheus metrics: ``/metrics``). Ctrl-C stops it.

Environment: ``PORT`` (default 8000) and ``JOB_INTERVAL``, the seconds between runs of
``refresh_prices`` (default 5; ``expire_sessions`` runs every two intervals).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from starlette.applications import Starlette

import jobpulse
from jobpulse.integrations.apscheduler import instrument_scheduler
from jobpulse.starlette import routes


async def refresh_prices() -> None:
    """Fetch the latest prices (simulated): a coroutine job, run on the event loop."""
    await asyncio.sleep(random.uniform(0.01, 0.05))
    jobpulse.set_metadata(pairs=12)


def expire_sessions() -> int:
    """Delete expired sessions (simulated): a plain function, run in a worker thread."""
    time.sleep(0.01)
    return 3


def build_app(monitor: jobpulse.JobMonitor, interval_seconds: float) -> Starlette:
    """The app: jobpulse's routes, with the scheduler running while the app is served."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    instrument_scheduler(scheduler, monitor)
    # Settings jobpulse cannot learn from APScheduler; the next run times it does learn.
    monitor.register("refresh_prices", critical=True, failure_threshold=3, stall_after=60)
    first_run = datetime.now(timezone.utc)
    scheduler.add_job(
        refresh_prices,
        "interval",
        seconds=interval_seconds,
        id="refresh_prices",
        next_run_time=first_run,
    )
    scheduler.add_job(
        expire_sessions,
        "interval",
        seconds=2 * interval_seconds,
        id="expire_sessions",
        next_run_time=first_run,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            # Let runs in progress finish (at most 10 s): shutting an AsyncIOScheduler down
            # cancels its running coroutine jobs, which APScheduler logs as errors.
            scheduler.pause()
            await asyncio.sleep(0)  # runs just submitted start
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                status.active_runs for status in monitor.statuses().values()
            ):
                await asyncio.sleep(0.05)
            scheduler.shutdown()
            await asyncio.sleep(0)  # an AsyncIOScheduler shuts down at the loop's next turn
            await asyncio.to_thread(monitor.shutdown)  # flushes exporters: not on the loop

    return Starlette(routes=routes(monitor), lifespan=lifespan)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    monitor = jobpulse.setup("apscheduler-example", namespace="example")
    app = build_app(monitor, float(os.environ.get("JOB_INTERVAL", "5")))
    port = int(os.environ.get("PORT", "8000"))
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", access_log=False)
    except KeyboardInterrupt:  # uvicorn raises Ctrl-C again once it has stopped
        pass
    finally:
        monitor.shutdown()


if __name__ == "__main__":
    main()
