"""After fork, the child has a working monitor of its own (Celery prefork, gunicorn)."""

from __future__ import annotations

import json
import os

import pytest

from jobpulse import JobMonitor, JobState
from tests.conftest import MonitorFactory

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


def _in_child(monitor: JobMonitor) -> dict[str, object]:
    """Run jobs in a forked child and return what its view says."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        try:
            os.close(read_end)
            parent_run = monitor.status("parent_job")
            with monitor.run("child_job"):
                pass
            child = monitor.status("child_job")
            report = {
                "parent_active_in_child": parent_run.active_runs if parent_run else None,
                "child_state": child.state.value if child else None,
                "child_successes": child.success_count if child else None,
            }
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)  # type: ignore[no-any-return]


def test_child_after_fork_tracks_its_own_runs(make_monitor: MonitorFactory) -> None:
    monitor = make_monitor(clock=None, stall_after=3600)
    with monitor.run("parent_job"):  # a run in progress in the parent, with a watchdog thread
        report = _in_child(monitor)
        assert monitor.status("parent_job").active_runs == 1  # type: ignore[union-attr]
    assert report == {
        "parent_active_in_child": 0,  # the parent's run is not the child's
        "child_state": "success",
        "child_successes": 1,
    }
    assert monitor.status("parent_job").state is JobState.SUCCESS  # type: ignore[union-attr]
    assert monitor.status("child_job") is None  # the child's runs stay in the child
