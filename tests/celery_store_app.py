"""A Celery deployment on one Redis store, for tests/test_celery_store.py: the worker
(prefork), beat and a web app each set jobpulse up with ``jobpulse.setup(service_name=
"shop")``, and find the store in ``JOBPULSE_STORE``, as a deployment sets it once for all
of its processes.

- ``celery -A tests.celery_store_app worker -Q shop`` (with ``--beat`` for embedded beat)
  runs the tasks; ``celery -A tests.celery_store_app beat`` sends `BEAT_SCHEDULE`.
- ``python -m uvicorn tests.celery_store_app:web`` serves jobpulse's routes and no task.

The broker is ``$JOBPULSE_TEST_BROKER``; the store's timings come from
``$JOBPULSE_TEST_FLUSH`` and ``$JOBPULSE_TEST_TTL`` (seconds).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from starlette.applications import Starlette

import jobpulse
from jobpulse.integrations.celery import CeleryJobInstrumentor
from jobpulse.starlette import lifespan, routes

__all__ = ["BEAT_SCHEDULE", "HANG_STALL_AFTER", "app", "web"]

#: A task beat sends every 2 s, and one to a queue no worker reads (its slots are missed).
BEAT_SCHEDULE = {
    "tick": {"task": "shop.tick", "schedule": 2.0},
    "forgotten": {"task": "shop.tick", "schedule": 2.0, "options": {"queue": "nobody"}},
}
#: Seconds a run of ``shop.export`` may take before it is stalled.
HANG_STALL_AFTER = 2.0

app = Celery("shop", broker=os.environ["JOBPULSE_TEST_BROKER"])
app.conf.update(
    task_default_queue="shop",
    beat_schedule=BEAT_SCHEDULE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def _task(name: str) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` with a name (Celery has no type hints)."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(name=name)
    return decorator


@_task("shop.charge_cards")
def charge_cards() -> None:
    raise ConnectionError("the card processor refused the connection")


@_task("shop.tick")
def tick() -> str:
    return "ok"


@_task("shop.export")
def export(seconds: float) -> None:
    time.sleep(seconds)


def _monitor() -> jobpulse.JobMonitor:
    # The store: JOBPULSE_STORE, read by setup().
    monitor = jobpulse.setup(
        service_name="shop",
        prometheus=False,
        flush_interval=float(os.environ.get("JOBPULSE_TEST_FLUSH", "1")),
        instance_ttl=float(os.environ.get("JOBPULSE_TEST_TTL", "10")),
    )
    monitor.register("shop.export", stall_after=HANG_STALL_AFTER)
    return monitor


if os.environ.get("JOBPULSE_TEST_ROLE") == "web":
    monitor = _monitor()
    web = Starlette(routes=routes(monitor), lifespan=lifespan(monitor))
else:
    monitor = _monitor()
    CeleryJobInstrumentor().instrument(monitor=monitor, beat_grace=1.0)
