"""After fork, the child has a working monitor of its own (Celery prefork, gunicorn)."""

from __future__ import annotations

import json
import os
import threading

import pytest

from jobpulse import JobMonitor, JobSkippedError, JobState, JobTimeoutError
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory, in_child

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


def test_child_after_fork_tracks_its_own_runs(make_monitor: MonitorFactory) -> None:
    monitor = make_monitor(clock=None, stall_after=3600)

    def child() -> dict[str, object]:  # pragma: no cover - runs in the child
        parent_run = monitor.status("parent_job")
        document = json.loads(monitor.health_json()[1])
        with monitor.run("child_job"):
            pass
        child = monitor.status("child_job")
        return {
            "parent_active_in_child": parent_run.active_runs if parent_run else None,
            "endpoint_active_in_child": document["jobs"]["parent_job"]["active_runs"],
            "child_state": child.state.value if child else None,
            "child_successes": child.success_count if child else None,
        }

    with monitor.run("parent_job"):  # a run in progress in the parent, with a watchdog thread
        monitor.health_json()  # the endpoint's serialized members are cached before the fork
        report = in_child(child)
        assert monitor.status("parent_job").active_runs == 1  # type: ignore[union-attr]
    assert report == {
        "parent_active_in_child": 0,  # the parent's run is not the child's
        "endpoint_active_in_child": 0,
        "child_state": "success",
        "child_successes": 1,
    }
    assert monitor.status("parent_job").state is JobState.SUCCESS  # type: ignore[union-attr]
    assert monitor.status("child_job") is None  # the child's runs stay in the child


def test_child_watches_a_schedule_once_it_runs_the_job(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    """A prefork worker that never runs a job must not report it missed; once it runs it, the
    child keeps the schedule's deadlines itself."""
    monitor.register("nightly", schedule="@every 1m")

    def child() -> dict[str, object]:  # pragma: no cover - runs in the child
        clock.advance(70)  # the parent's deadline for the 1 min slot is not the child's
        before = monitor.status("nightly")
        with monitor.run("nightly"):
            pass
        clock.advance(70)  # the slot after the child's run passes unrun
        after = monitor.status("nightly")
        return {
            "before": before.state.value if before else None,
            "after": after.state.value if after else None,
            "missed": after.missed_count if after else None,
        }

    assert in_child(child) == {"before": "pending", "after": "missed", "missed": 1}
    clock.advance(70)  # the parent kept its own deadline
    assert monitor.status("nightly").state is JobState.MISSED  # type: ignore[union-attr]


def test_a_child_forked_while_a_jobs_thread_hangs_runs_the_job(
    make_monitor: MonitorFactory,
) -> None:
    """The parent's abandoned thread does not exist in the child: the child may run the job."""
    monitor = make_monitor(clock=None)
    release = threading.Event()

    @monitor.job("hangs", timeout=0.02)
    def hangs() -> str:
        release.wait(30)
        return "done"

    with pytest.raises(JobTimeoutError):
        hangs()
    assert monitor.abandoned_threads("hangs") == 1

    def child() -> dict[str, object]:  # pragma: no cover - runs in the child
        abandoned = monitor.abandoned_threads("hangs")
        release.set()  # the child's own copy of the event: its run returns at once
        try:
            outcome = hangs()
        except JobSkippedError as exc:
            outcome = exc.reason
        return {"abandoned": abandoned, "outcome": outcome}

    try:
        assert in_child(child) == {"abandoned": 0, "outcome": "done"}
    finally:
        release.set()
