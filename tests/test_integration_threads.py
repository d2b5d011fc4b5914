"""Every thread jobpulse starts has an owner that stops it (STYLE.md 15): after the owner's
shutdown, or the host's own stop, no thread whose name starts with ``jobpulse`` is left that
was not running before the test. The owners: a monitor (its watchdog), the monitor of
`jobpulse.setup()`, a monitor an integration made itself (shut down by its uninstrument),
and Celery beat (tests/test_celery_threads.py)."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

import jobpulse
from jobpulse import JobMonitor, JobStatus
from jobpulse.integrations.apscheduler import APSchedulerInstrumentor
from tests.conftest import Otel


def jobpulse_threads() -> set[str]:
    """The names of the live threads that are jobpulse's."""
    return {
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith("jobpulse") and thread.is_alive()
    }


@pytest.fixture
def before() -> set[threading.Thread]:
    """The threads alive before the test (other tests' monitors may still be open)."""
    return set(threading.enumerate())


def status_of(monitor: JobMonitor, name: str) -> JobStatus:
    status = monitor.status(name)
    assert status is not None, f"{name!r} is not in the view"
    return status


def new_jobpulse_threads(before: set[threading.Thread]) -> list[str]:
    return sorted(
        thread.name
        for thread in threading.enumerate()
        if thread not in before and thread.name.startswith("jobpulse") and thread.is_alive()
    )


def arm_watchdog(monitor: JobMonitor) -> None:
    """A run arms a stall deadline on the monitor's watchdog thread."""
    with monitor.run("arming"):
        pass
    assert "jobpulse-watchdog" in jobpulse_threads()


def test_a_monitors_threads_start_with_it_not_in_its_first_run(
    otel: Otel, before: set[threading.Thread]
) -> None:
    # A host that checks which threads a test leaves behind (Celery's own suite compares
    # each test's with the first's) must not see one appear in the first run of a job.
    built = JobMonitor(otel.tracer_provider, otel.meter_provider)
    try:
        started = set(threading.enumerate())
        assert new_jobpulse_threads(before) == ["jobpulse-watchdog"]
        arm_watchdog(built)
        assert set(threading.enumerate()) == started
    finally:
        built.shutdown()
    assert new_jobpulse_threads(before) == []


def test_monitor_shutdown_stops_its_watchdog(otel: Otel, before: set[threading.Thread]) -> None:
    built = JobMonitor(otel.tracer_provider, otel.meter_provider)
    arm_watchdog(built)
    built.shutdown()
    assert new_jobpulse_threads(before) == []


@pytest.mark.usefixtures("otel_globals")
def test_the_monitor_of_setup_stops_its_threads(before: set[threading.Thread]) -> None:
    built = jobpulse.setup("threads-test", prometheus=False)
    arm_watchdog(built)
    built.shutdown()
    assert new_jobpulse_threads(before) == []


def test_apscheduler_uninstrument_shuts_down_the_monitor_it_made(
    otel: Otel, before: set[threading.Thread]
) -> None:
    instrumentor = APSchedulerInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    ran = threading.Event()
    scheduler = BackgroundScheduler(timezone="UTC")
    try:
        scheduler.add_job(
            ran.set, "interval", hours=1, id="hourly", next_run_time=datetime.now(timezone.utc)
        )
        scheduler.start()
        assert ran.wait(30)
        made = instrumentor.monitor
        assert "jobpulse-watchdog" in jobpulse_threads()
        scheduler.shutdown()
        # The scheduler stopped: its jobs expect nothing; the monitor is the instrumentor's.
        assert status_of(made, "hourly").next_run_time is None
    finally:
        instrumentor.uninstrument()
    assert made.closed
    assert new_jobpulse_threads(before) == []
