"""Retention: idle unscheduled jobs leave the view after `retention`; running ones never do."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from jobpulse import JobMonitor, JobState
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory


def test_idle_jobs_are_dropped_after_retention(
    monitor: JobMonitor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobpulse")
    monitor.register("idle")
    with monitor.run("ran"):
        pass
    clock.advance(timedelta(hours=23, minutes=59))
    assert set(monitor.statuses()) == {"idle", "ran"}
    clock.advance(timedelta(minutes=2))
    assert monitor.statuses() == {}
    assert "dropped 2 jobs idle for more than 86400s: idle, ran" in caplog.text


def test_running_jobs_are_never_dropped(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("marathon", stall_after=timedelta(days=30))
    with monitor.run("marathon"):
        clock.advance(timedelta(days=3))
        assert monitor.status("marathon") is not None
        assert set(monitor.statuses()) == {"marathon"}
    clock.advance(timedelta(hours=23))
    assert set(monitor.statuses()) == {"marathon"}  # it just finished: updated


def test_activity_keeps_a_job(monitor: JobMonitor, clock: FakeClock) -> None:
    for _ in range(5):
        with monitor.run("daily"):
            pass
        clock.advance(timedelta(hours=20))
        assert "daily" in monitor.statuses()


def test_custom_retention_and_pruning_at_most_once_a_minute(
    make_monitor: MonitorFactory, clock: FakeClock
) -> None:
    monitor = make_monitor(retention=600)
    monitor.register("a")
    clock.advance(590)
    monitor.register("b")
    assert set(monitor.statuses()) == {"a", "b"}  # pruned now: nothing is stale yet
    clock.advance(20)
    assert set(monitor.statuses()) == {"a", "b"}  # "a" is stale, but the last prune was 20s ago
    clock.advance(40)
    assert set(monitor.statuses()) == {"b"}


def test_decorated_job_comes_back_with_its_settings(monitor: JobMonitor, clock: FakeClock) -> None:
    @monitor.job("weekly", critical=True, timeout=3600)
    def weekly() -> str:
        return "done"

    clock.advance(timedelta(days=2))
    assert monitor.statuses() == {}
    assert weekly() == "done"
    status = monitor.status("weekly")
    assert status is not None
    assert status.critical
    assert status.timeout_seconds == 3600
    assert status.state is JobState.SUCCESS


def test_full_view_prunes_before_refusing(make_monitor: MonitorFactory, clock: FakeClock) -> None:
    monitor = make_monitor(max_jobs=2, retention=60)
    monitor.register("old1")
    monitor.register("old2")
    clock.advance(61)
    monitor.register("new")  # the stale jobs make room
    assert set(monitor.statuses()) == {"new"}


def test_run_of_a_dropped_job_registers_it_again(monitor: JobMonitor, clock: FakeClock) -> None:
    with monitor.run("adhoc"):
        pass
    clock.advance(timedelta(days=2))
    assert monitor.statuses() == {}
    with monitor.run("adhoc"):
        pass
    assert monitor.status("adhoc").success_count == 1  # type: ignore[union-attr]
