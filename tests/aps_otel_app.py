"""An APScheduler program run by tests/test_opentelemetry_instrument.py under
``opentelemetry-instrument``: `jobpulse.setup()` called by the application after the
instrumentors were turned on, then a scheduler with no jobpulse code at all whose jobs run,
misfire (missed) and are refused by ``max_instances`` (skipped)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler

import jobpulse


def main() -> None:
    monitor = jobpulse.setup(service_name="aps-otel-test", prometheus=False)
    missed, refused, release, running = (threading.Event() for _ in range(4))
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_listener(lambda event: missed.set(), EVENT_JOB_MISSED)
    scheduler.add_listener(lambda event: refused.set(), EVENT_JOB_MAX_INSTANCES)

    def busy() -> None:
        running.set()
        release.wait(30)

    now = datetime.now(timezone.utc)
    scheduler.add_job(
        print, "date", run_date=now - timedelta(minutes=5), misfire_grace_time=1, id="late"
    )
    scheduler.add_job(busy, "interval", hours=1, next_run_time=now, id="busy", max_instances=1)
    scheduler.start()
    if not (running.wait(30) and missed.wait(30)):
        raise SystemExit("the jobs did not run or misfire")
    scheduler.modify_job("busy", next_run_time=datetime.now(timezone.utc))  # refused
    if not refused.wait(30):
        raise SystemExit("max_instances refused nothing")
    release.set()
    scheduler.shutdown()
    monitor.shutdown()


if __name__ == "__main__":
    main()
