"""After fork, the child has a working monitor of its own (Celery prefork, gunicorn)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from jobpulse import JobMonitor, JobState
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


def _in_child(work: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run `work` in a forked child and return the report it made there."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)  # type: ignore[no-any-return]


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
        report = _in_child(child)
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

    assert _in_child(child) == {"before": "pending", "after": "missed", "missed": 1}
    clock.advance(70)  # the parent kept its own deadline
    assert monitor.status("nightly").state is JobState.MISSED  # type: ignore[union-attr]
