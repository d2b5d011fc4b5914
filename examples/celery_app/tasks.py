"""The example's Celery app: two tasks and a beat schedule with one entry.

Nothing here knows about jobpulse: the integration (set up in `monitoring`) sees every task
run through Celery's signals.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

import jobpulse

__all__ = ["BEAT_ENTRY", "BEAT_SECONDS", "BROKER_URL", "app", "export_report", "refresh_prices"]

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
#: Seconds between two runs of `refresh_prices` sent by beat.
BEAT_SECONDS = float(os.environ.get("EXAMPLE_BEAT_SECONDS", "5"))
#: The beat schedule entry; beat's view shows it as the job ``beat:refresh-prices``.
BEAT_ENTRY = "refresh-prices"

app = Celery("celery_example", broker=BROKER_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,  # no result backend: the outcome of each run is in jobpulse
    # Beat keeps its schedule in memory (no ``celerybeat-schedule`` file is written): every
    # start waits one full interval before the first run.
    beat_scheduler="celery.beat:Scheduler",
    beat_schedule={BEAT_ENTRY: {"task": "refresh_prices", "schedule": BEAT_SECONDS}},
)


def _task(name: str) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` with an explicit name (the job's name in the view); Celery is untyped."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(name=name)
    return decorator


@_task("refresh_prices")
def refresh_prices() -> int:
    """Fetch the latest prices (simulated); beat sends it every `BEAT_SECONDS`."""
    time.sleep(random.uniform(0.05, 0.2))
    pairs = 12
    jobpulse.set_metadata(pairs=pairs)  # shown with the job in the process's view
    return pairs


@_task("export_report")
def export_report(failure_rate: float = 0.3) -> int:
    """Upload a report (simulated); fails with `ConnectionError` in `failure_rate` of its runs
    (0 never, 1 always). Sent on demand, e.g. with ``celery call`` (see the package docs)."""
    time.sleep(random.uniform(0.05, 0.2))
    if random.random() < failure_rate:
        raise ConnectionError("the report store did not answer")
    return 250
