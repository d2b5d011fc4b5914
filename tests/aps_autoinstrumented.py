"""An APScheduler application with no jobpulse code in its jobs or scheduler setup, run by
tests/test_apscheduler.py under ``opentelemetry-instrument``: the ``jobpulse_apscheduler``
entry point instruments its scheduler. Prints what the monitor saw as one JSON document
(``{"instrumented": false}`` when run without ``opentelemetry-instrument``)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler

ran = threading.Event()


def nightly_report() -> None:
    ran.set()


def main() -> None:
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        nightly_report, "interval", hours=1, next_run_time=datetime.now(timezone.utc), id="report"
    )
    scheduler.start()
    ran.wait(30)
    # Read only now: the application serves the instrumentor's monitor (e.g. its routes).
    from jobpulse.integrations.apscheduler import APSchedulerInstrumentor

    instrumentor = APSchedulerInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        scheduler.shutdown()
        print(json.dumps({"instrumented": False}))
        return
    monitor = instrumentor.monitor
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = monitor.status("report")
        if status is not None and status.success_count >= 1:
            break
        time.sleep(0.02)
    scheduler.shutdown()
    status = monitor.status("report")
    print(json.dumps({"instrumented": True, "job": None if status is None else status.to_dict()}))


if __name__ == "__main__":
    main()
