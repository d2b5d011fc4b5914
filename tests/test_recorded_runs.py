"""Runs and outcomes that integrations report instead of timing a live run: `record_run` (a
run that executed in another process), `record_skipped` and `record_missed`."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
from opentelemetry.trace import StatusCode

from jobpulse import InvalidJobError, JobMonitor, JobState, JobStatus
from jobpulse._monitor import record_failure
from jobpulse.testing import FakeClock
from tests.conftest import Otel

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SKIPPED_METRIC = "background_job.skipped_runs"
MISSED_METRIC = "background_job.missed_runs"


def status_of(monitor: JobMonitor, name: str) -> JobStatus:
    status = monitor.status(name)
    assert status is not None
    return status


class WorkerLost(Exception):
    pass


def test_record_run_is_a_span_with_the_given_times(
    monitor: JobMonitor, otel: Otel, clock: FakeClock
) -> None:
    clock.advance(60)
    start = T0 + timedelta(seconds=10)
    monitor.record_run(
        "report",
        start=start,
        end=start + timedelta(seconds=2.5),
        attributes={"celery.task_id": "abc", "job.name": "not this"},
    )
    (span,) = otel.spans()
    assert span.name == "report"
    assert span.attributes is not None
    assert span.attributes["job.name"] == "report"
    assert span.attributes["celery.task_id"] == "abc"
    assert span.start_time == int(start.timestamp() * 1e9)
    assert span.end_time == span.start_time + 2_500_000_000
    status = status_of(monitor, "report")
    assert status.state is JobState.SUCCESS
    assert status.last_duration_seconds == pytest.approx(2.5)
    assert status.last_run_time == start
    history = monitor.history("report")
    assert [(run.outcome, run.duration_seconds) for run in history] == [("success", 2.5)]


def test_record_run_with_an_error_and_a_category(monitor: JobMonitor, otel: Otel) -> None:
    error = WorkerLost("child exited with signal 9 (postgres://app:hunter2@db/jobs)")
    end = T0 + timedelta(seconds=1)
    monitor.record_run("index", start=T0, end=end, error=error, category="worker_lost")
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["job.error.category"] == "worker_lost"
    assert str(span.attributes["error.type"]).endswith("WorkerLost")
    status = status_of(monitor, "index")
    assert status.state is JobState.FAILED
    assert status.last_error_category == "worker_lost"
    assert status.last_error is not None
    assert "hunter2" not in status.last_error
    assert status.consecutive_failures == 1
    # Without a category, the error is classified as usual.
    monitor.record_run("index", start=T0, end=T0, error=TimeoutError("slow"))
    assert status_of(monitor, "index").last_error_category == "timeout"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": T0, "end": T0 - timedelta(seconds=1)}, "before start"),
        ({"start": datetime(2026, 1, 1), "end": T0}, "start must be a timezone-aware"),
        ({"start": T0, "end": "later"}, "end must be a timezone-aware"),
        ({"start": T0, "end": T0, "category": "Worker Lost"}, "category must be a snake_case"),
        # Nanoseconds since 1970 in 64 bits (spans, stores): 1970 to April 2262.
        ({"start": datetime(1969, 12, 31, tzinfo=timezone.utc), "end": T0}, "start must be"),
        ({"start": T0, "end": datetime(2262, 4, 12, tzinfo=timezone.utc)}, "end must be"),
    ],
)
def test_record_run_refuses_bad_input_and_records_nothing(
    monitor: JobMonitor, otel: Otel, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        monitor.record_run("index", **kwargs)  # type: ignore[arg-type]
    assert otel.spans() == ()
    assert monitor.status("index") is None


def test_record_failure_takes_a_category(monitor: JobMonitor, otel: Otel) -> None:
    with monitor.run("sync") as run:
        record_failure(run.span, RuntimeError("try again"), category="retry")
    (span,) = otel.spans()
    assert span.attributes is not None
    assert span.attributes["job.error.category"] == "retry"
    status = status_of(monitor, "sync")
    assert status.state is JobState.FAILED
    assert status.last_error_category == "retry"


def test_skipped_runs_are_counted_by_reason_without_changing_state(
    monitor: JobMonitor, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    with monitor.run("sync"):
        pass
    caplog.set_level(logging.WARNING, logger="jobpulse")
    for _ in range(3):
        monitor.record_skipped("sync", reason="max_instances", scheduled_at=T0)
    monitor.record_skipped("sync", reason="revoked")
    status = status_of(monitor, "sync")
    assert status.state is JobState.SUCCESS
    assert status.skipped_count == 4
    assert status.last_skip_reason == "revoked"
    document = status.to_dict()
    assert (document["skipped_count"], document["last_skip_reason"]) == (4, "revoked")
    points = otel.metrics()[SKIPPED_METRIC]
    assert points == {
        (("job.name", "sync"), ("reason", "max_instances")): 3,
        (("job.name", "sync"), ("reason", "revoked")): 1,
    }
    # Logged at the 1st, 2nd and 4th skip, not at each.
    logged = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(logged) == 3
    assert "max_instances" in logged[0]


def test_record_skipped_registers_a_new_job_and_checks_the_reason(monitor: JobMonitor) -> None:
    monitor.record_skipped("new", reason="expired")
    assert status_of(monitor, "new").state is JobState.PENDING
    with pytest.raises(InvalidJobError, match="reason"):
        monitor.record_skipped("new", reason="")
    with pytest.raises(InvalidJobError, match="scheduled_at"):
        monitor.record_skipped("new", reason="expired", scheduled_at=datetime(2026, 1, 1))
    assert status_of(monitor, "new").skipped_count == 1


def test_reported_missed_run_counts_once_per_slot(
    monitor: JobMonitor, otel: Otel, clock: FakeClock
) -> None:
    slot = T0 + timedelta(minutes=1)
    monitor.set_next_run("aps", slot)
    clock.advance(61.5)  # within the default grace: the watchdog has not counted it
    monitor.record_missed("aps", scheduled_at=slot, reason="misfire")
    status = status_of(monitor, "aps")
    assert status.state is JobState.MISSED
    assert (status.missed_count, status.last_missed_run_time) == (1, slot)
    assert status.next_run_time is None  # the reported slot is no longer expected
    clock.advance(600)  # so its deadline adds nothing
    monitor.record_missed("aps", scheduled_at=slot, reason="misfire")  # reported twice
    assert status_of(monitor, "aps").missed_count == 1
    assert otel.metrics()[MISSED_METRIC] == {(("job.name", "aps"),): 1}
    with monitor.run("aps"):
        pass
    assert status_of(monitor, "aps").state is JobState.SUCCESS


def test_reported_missed_run_after_the_watchdog_counted_it(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    slot = T0 + timedelta(minutes=1)
    monitor.set_next_run("aps", slot)
    clock.advance(3600)
    assert status_of(monitor, "aps").missed_count == 1  # the watchdog's
    monitor.record_missed("aps", scheduled_at=slot, reason="misfire")
    assert status_of(monitor, "aps").missed_count == 1
    later = slot + timedelta(minutes=30)
    monitor.record_missed("aps", scheduled_at=later, reason="misfire")
    status = status_of(monitor, "aps")
    assert (status.missed_count, status.last_missed_run_time) == (2, later)


def test_reported_missed_run_keeps_a_later_slot_and_a_running_job(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    slot = T0 + timedelta(minutes=1)
    monitor.set_next_run("aps", slot + timedelta(minutes=1))  # the scheduler moved on
    with monitor.run("aps"):
        monitor.record_missed("aps", scheduled_at=slot, reason="misfire")
        status = status_of(monitor, "aps")
        assert status.state is JobState.RUNNING
        assert status.missed_count == 1
    assert status_of(monitor, "aps").next_run_time == slot + timedelta(minutes=1)
    with pytest.raises(InvalidJobError, match="scheduled_at"):
        monitor.record_missed("aps", scheduled_at=None, reason="misfire")  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="reason"):
        monitor.record_missed("aps", scheduled_at=slot, reason="Mis fire")


def test_reports_for_jobs_that_left_the_view_are_ignored(monitor: JobMonitor) -> None:
    registry = monitor._registry
    registry.record_missed("gone", 0, "misfire")
    registry.record_skipped("gone", "revoked")
    assert monitor.status("gone") is None
