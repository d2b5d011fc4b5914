"""A Celery program run by tests/test_opentelemetry_instrument.py under
``opentelemetry-instrument``: `jobpulse.setup()` and the integration instrumented with its
monitor as docs/celery.md says (after ``opentelemetry-instrument`` instrumented it without
one), then a real solo worker on ``JOBPULSE_TEST_BROKER`` runs a task, and two tasks are
skipped (one revoked, one expired) before they start."""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import signals

import jobpulse
from jobpulse.integrations.celery import CeleryJobInstrumentor
from tests import celery_app
from tests.celery_support import running_worker

REVOKED_ID = "jobpulse-otel-revoked"


def main() -> None:
    celery_app.app.conf.broker_url = os.environ["JOBPULSE_TEST_BROKER"]
    monitor = jobpulse.setup(service_name="celery-otel-test", prometheus=False)
    CeleryJobInstrumentor().instrument(monitor=monitor)
    ran = threading.Event()

    def on_postrun(**kwargs: Any) -> None:
        ran.set()

    signals.task_postrun.connect(on_postrun, weak=False)
    with running_worker("solo", queue="otel-instrumented"):
        with celery_app.app.connection_for_write() as connection:
            celery_app.app.control.revoke(
                REVOKED_ID, reply=True, timeout=10, limit=1, connection=connection
            )
        options: dict[str, Any] = {"queue": "otel-instrumented"}
        celery_app.add.apply_async((1, 1), task_id=REVOKED_ID, **options)
        celery_app.add.apply_async((1, 2), expires=-1, **options)
        celery_app.add.apply_async((1, 3), **options)  # taken last: tasks come in order
        if not ran.wait(60):
            raise SystemExit("the worker ran nothing")
    monitor.shutdown()


if __name__ == "__main__":
    main()
