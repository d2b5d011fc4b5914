"""What docs/store.md promises of the store's history and of a store that lost its data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from jobpulse import JobMonitor, JobState


def fail(monitor: JobMonitor, name: str) -> None:
    with pytest.raises(RuntimeError), monitor.run(name):
        raise RuntimeError(f"{name} failed")


def test_runs_left_out_of_the_stores_history_show_in_history_dropped(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    monitor = JobMonitor(store=f"sqlite:///{path}", store_buffer_runs=10)
    try:
        assert monitor.flush()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        for _ in range(3):
            for _ in range(10):
                with monitor.run("busy"):
                    pass
            assert monitor.flush(timeout=3) is False
        holder.execute("ROLLBACK")
        holder.close()
        assert monitor.flush()
        status = monitor.status("busy")
        assert status is not None
        assert status.success_count == 30
        assert status.history_runs == 10
        assert status.history_dropped == 20
    finally:
        monitor.shutdown()


def test_a_store_deleted_under_the_process_gets_the_last_run_fields_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    monitor = JobMonitor(store=f"sqlite:///{path}")
    try:
        monitor.register("billing", critical=True, failure_threshold=2)
        fail(monitor, "billing")
        fail(monitor, "billing")
        assert monitor.flush()
        for file in tmp_path.glob("jobs.db*"):
            file.unlink()
        assert monitor.flush()
        status = monitor.status("billing")
        assert status is not None
        assert status.failure_count == 2  # the counts are written again
        assert status.state is JobState.FAILED
        assert status.consecutive_failures == 2
        assert status.last_error == "RuntimeError: billing failed"
    finally:
        monitor.shutdown()
