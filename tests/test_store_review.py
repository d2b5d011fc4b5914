"""An adversarial review of the store: each test shows a defect that was found (and fixed)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobpulse import InvalidJobError, JobMonitor, JobState
from jobpulse.store import SQLiteStore
from jobpulse.store._base import Instance, JobChange
from jobpulse.testing import FakeClock
from tests.conftest import MakeMonitor, pass_time, sqlite_only, succeed


def stored_counts(store_path: Path, name: str) -> tuple[int, int]:
    store = SQLiteStore(store_path)
    try:
        rows = {row.name: row for row in store.read(None, now_ns=0, instance_ttl_ns=1).rows}
    finally:
        store.close()
    row = rows[name]
    return row.success_count, row.failure_count


@sqlite_only
def test_a_job_registered_again_after_unregister_does_not_take_counts_back(
    fleet: MakeMonitor, store_path: Path
) -> None:
    monitor = fleet()
    succeed(monitor, "report", 3)
    assert monitor.flush()
    assert monitor.unregister("report")
    succeed(monitor, "report")  # registered again, its counts start from zero
    assert monitor.flush()
    assert stored_counts(store_path, "report") == (4, 0)


@sqlite_only
def test_runs_of_a_job_unregistered_before_the_flush_are_still_written(
    fleet: MakeMonitor, store_path: Path
) -> None:
    monitor = fleet()
    succeed(monitor, "report")
    assert monitor.flush()
    succeed(monitor, "report", 2)
    assert monitor.unregister("report")
    assert monitor.flush()
    assert stored_counts(store_path, "report") == (3, 0)


@sqlite_only
def test_a_job_pruned_from_the_view_and_run_again_does_not_take_counts_back(
    fleet: MakeMonitor, store_path: Path, clock: FakeClock
) -> None:
    monitor = fleet(retention=3600)
    succeed(monitor, "adhoc", 2)
    assert monitor.flush()
    clock.advance(2 * 3600)
    monitor._registry.snapshots()  # the view drops the idle job
    assert "adhoc" not in monitor._registry
    succeed(monitor, "adhoc")
    assert monitor.flush()
    assert stored_counts(store_path, "adhoc") == (3, 0)


def test_an_unregistered_job_is_not_left_running_or_missed_in_the_fleet(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    monitor = fleet()
    monitor.register("hourly", schedule="@every 1h")
    succeed(monitor, "hourly")
    run = monitor.run("hourly")
    run.__enter__()
    assert monitor.flush()
    status = monitor.status("hourly")
    assert status is not None
    assert status.active_runs == 1
    assert monitor.unregister("hourly")  # the scheduler removed the job
    assert monitor.flush()
    clock.advance(3 * 3600)
    assert monitor.flush()
    status = monitor.status("hourly")
    assert status is not None
    assert status.active_runs == 0
    assert status.state is not JobState.MISSED
    assert status.missed_count == 0
    run.__exit__(None, None, None)


def test_an_instance_taken_for_dead_that_writes_again_has_each_run_lost_once(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    worker, reader = fleet(), fleet()
    assert reader.flush()
    first = worker.run("import")
    first.__enter__()
    assert worker.flush()
    # The worker could not write for longer than instance_ttl; the reader, writing all
    # along, takes it for dead: its run is lost.
    pass_time(clock, 11, reader)
    assert counts(reader, "import") == (0, 1, 0)
    assert worker.flush()  # it was alive after all: told so, it writes its runs again
    assert worker.flush()
    assert reader.flush()
    assert counts(reader, "import") == (0, 1, 1)
    first.__exit__(None, None, None)
    assert worker.flush()  # the run it ended was lost already
    assert reader.flush()
    assert counts(reader, "import") == (0, 1, 0)
    run = worker.run("import")
    run.__enter__()
    assert worker.flush()
    pass_time(clock, 11, reader)  # now it is gone for good, with a run open
    assert counts(reader, "import") == (0, 2, 0)
    assert [r.error_category for r in reader.history("import")] == ["lost", "lost"]
    run.__exit__(None, None, None)


def counts(monitor: JobMonitor, name: str) -> tuple[int, int, int]:
    """The job's (successes, failures, runs in progress) as `monitor` sees them."""
    status = monitor.status(name)
    assert status is not None
    return status.success_count, status.failure_count, status.active_runs


@sqlite_only
def test_shutdown_keeps_its_deadline_when_the_store_is_locked(
    fleet: MakeMonitor, store_path: Path
) -> None:
    monitor = fleet()
    succeed(monitor, "last")
    assert monitor.flush()
    succeed(monitor, "last")
    monitor._shutdown_timeout = 0.1
    publisher = monitor._store.publisher  # type: ignore[union-attr]
    holder = sqlite3.connect(store_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process writing, for long
        started = time.monotonic()
        monitor.shutdown()
        elapsed = time.monotonic() - started
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    publisher._thread.join(5)
    assert not publisher._thread.is_alive()
    assert elapsed < 0.6


def test_a_bad_store_buffer_attaches_nothing_and_leaves_no_thread(store_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    before = list(provider._active_span_processor._span_processors)
    threads = set(threading.enumerate())
    with pytest.raises(InvalidJobError, match="store_buffer_runs"):
        JobMonitor(provider, store=f"sqlite:///{store_path}", store_buffer_runs=0)
    assert list(provider._active_span_processor._span_processors) == before
    assert set(threading.enumerate()) <= threads


def test_one_store_object_shared_by_two_monitors_takes_their_writes_one_at_a_time(
    store_path: Path,
) -> None:
    store = SQLiteStore(store_path)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        who = Instance(f"i{index}", "svc", "host", index, "", 0, 0)
        start.wait()
        try:
            for _ in range(100):
                store.write(
                    who,
                    [JobChange("shared", 0, 0, success=1)],
                    now_ns=1,
                    instance_ttl_ns=10**12,
                    margin_ns=0,
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert errors == []
    assert stored_counts(store_path, "shared") == (400, 0)


_HOLD = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@sqlite_only
def test_a_child_forked_while_the_store_is_locked_publishes_once_it_is_free(
    fleet: MakeMonitor, store_path: Path
) -> None:
    parent = fleet()
    succeed(parent, "shared")
    assert parent.flush()
    # Another process is writing as the child is forked.
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(store_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdin is not None
    forked_r, forked_w = os.pipe()
    try:
        assert holder.stdout.readline() == "locked\n"
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.write(forked_w, b"x")
                succeed(parent, "shared", 2)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if parent.flush(timeout=2):
                        code = 0
                        break
            finally:
                os._exit(code)
        assert os.read(forked_r, 1) == b"x"
    finally:
        holder.communicate("\n", timeout=10)
        os.close(forked_r)
        os.close(forked_w)
    _, status_code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status_code) == 0
    assert parent.flush()
    status = parent.status("shared")
    assert status is not None
    assert status.success_count == 3


@sqlite_only
def test_a_child_forked_while_its_parent_writes_is_not_locked_out(
    fleet: MakeMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = fleet()
    link = parent._store
    assert link is not None
    store = link.store
    assert isinstance(store, SQLiteStore)
    writing, finish = threading.Event(), threading.Event()
    original = store._write_locked

    def slow_write(*args: object, **kwargs: object) -> object:
        writing.set()  # inside BEGIN IMMEDIATE
        finish.wait(10)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_write_locked", slow_write)
    succeed(parent, "shared")
    flusher = threading.Thread(target=parent.flush, args=(10,))
    flusher.start()
    assert writing.wait(10)
    threading.Timer(0.2, finish.set).start()  # the fork below waits for the write to end
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            monkeypatch.undo()
            succeed(parent, "shared", 2)
            code = 0 if parent.flush(timeout=5) else 2
        finally:
            os._exit(code)
    flusher.join(10)
    _, status_code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status_code) == 0
    monkeypatch.undo()
    assert parent.flush()
    status = parent.status("shared")
    assert status is not None
    assert status.success_count == 3


def test_a_step_of_the_wall_clock_takes_no_instance_for_dead(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    worker, reader = fleet(), fleet()
    assert reader.flush()
    run = worker.run("import")
    run.__enter__()
    assert worker.flush()
    clock.step_wall(3600)  # NTP, or an operator, sets the clock an hour forward
    assert reader.flush()  # every heartbeat before it is now an hour old
    assert worker.flush()
    assert reader.flush()
    assert counts(reader, "import") == (0, 0, 1)
    run.__exit__(None, None, None)
    assert worker.flush()
    assert reader.flush()
    assert counts(reader, "import") == (1, 0, 0)
