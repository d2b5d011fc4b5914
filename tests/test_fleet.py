"""Monitors sharing a store: one view across processes and restarts (with a fake clock;
tests/test_store_processes.py does it with real processes)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import jobpulse
from jobpulse import InvalidJobError, JobMonitor, JobState, StoreError
from jobpulse._shared import JOB_RAN_IN_PID
from jobpulse.store import SQLiteStore
from jobpulse.store._base import Instance, JobChange, UnsureWrite, WriteResult
from jobpulse.testing import FakeClock
from tests.conftest import MakeMonitor, pass_time, sqlite_only, succeed


def fail(monitor: JobMonitor, name: str, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(RuntimeError), monitor.run(name):
            raise RuntimeError(f"{name} failed")


def test_without_a_store_nothing_is_written_and_the_view_is_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    monkeypatch.chdir(tmp_path)
    monitor = JobMonitor(clock=clock)
    try:
        succeed(monitor, "alone")
        assert monitor.flush() is True
        document = json.loads(monitor.health_json()[1])
        assert document["scope"] == "process"
        assert "instances" not in document
        assert monitor.health().to_dict()["scope"] == "process"
        assert [i.pid for i in monitor.instances()] == [os.getpid()]
        assert not [t for t in threading.enumerate() if t.name == "jobpulse-store"]
    finally:
        monitor.shutdown()
    assert list(tmp_path.iterdir()) == []


def test_two_processes_answer_with_the_fleets_sums(fleet: MakeMonitor) -> None:
    a, b = fleet(), fleet()
    succeed(a, "sync", 3)
    fail(b, "sync", 2)
    succeed(b, "only-b")
    assert a.flush()
    assert b.flush()
    for monitor in (a, b):
        status = monitor.status("sync")
        assert status is not None
        assert (status.success_count, status.failure_count) == (3, 2)
        assert status.consecutive_failures == 2
        assert status.state is JobState.FAILED
        assert sorted(monitor.statuses()) == ["only-b", "sync"]
        assert len(monitor.history("sync")) == 5
    code_a, body_a = a.health_json()
    code_b, body_b = b.health_json()
    doc_a, doc_b = json.loads(body_a), json.loads(body_b)
    assert code_a == code_b
    assert doc_a["jobs"] == doc_b["jobs"]
    assert doc_a["scope"] == "fleet"
    assert doc_a["store"] == "ok"
    assert sorted(i["id"] for i in doc_a["instances"]) == sorted(i.id for i in a.instances())
    assert len(doc_a["instances"]) == 2
    assert all(i["alive"] for i in doc_a["instances"])
    assert a.health().to_dict()["jobs"] == doc_a["jobs"]


def test_a_restart_keeps_consecutive_failures_so_the_next_failure_is_unhealthy(
    fleet: MakeMonitor,
) -> None:
    before = fleet()
    before.register("billing", critical=True, failure_threshold=3)
    fail(before, "billing", 2)
    before.shutdown()  # a deploy
    after = fleet()
    status = after.status("billing")
    assert status is not None
    assert status.consecutive_failures == 2
    assert status.last_error == "RuntimeError: billing failed"
    assert after.health().status is jobpulse.HealthStatus.DEGRADED
    after.register("billing", critical=True, failure_threshold=3)
    fail(after, "billing")
    assert after.flush()
    assert after.health().status is jobpulse.HealthStatus.UNHEALTHY
    assert after.health_json()[0] is jobpulse.HealthStatus.UNHEALTHY


def test_a_slot_that_passed_while_the_service_was_down_is_missed_at_once(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    before = fleet()
    before.register("hourly", schedule="@every 1h")
    succeed(before, "hourly")
    before.shutdown()
    clock.advance(3.5 * 3600)  # down for three and a half hours: three slots passed
    after = fleet()
    status = after.status("hourly")
    assert status is not None
    assert status.state is JobState.MISSED
    assert after.health().status is jobpulse.HealthStatus.DEGRADED
    after.register("hourly", schedule="@every 1h")
    assert after.flush()
    status = after.status("hourly")
    assert status is not None
    assert status.state is JobState.MISSED
    assert status.missed_count == 3
    succeed(after, "hourly")
    assert after.flush()
    status = after.status("hourly")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.missed_count == 3


def test_a_run_in_progress_at_shutdown_is_lost_once(fleet: MakeMonitor) -> None:
    dying, reader_1, reader_2 = fleet(), fleet(), fleet()
    with dying.run("import"):
        assert dying.flush()
        status = reader_1.status("import")
        assert status is not None
        assert status.state is JobState.RUNNING
        dying.shutdown()  # the process goes away with the run open
        assert reader_1.flush()
        assert reader_2.flush()
    for reader in (reader_1, reader_2):
        status = reader.status("import")
        assert status is not None
        assert status.failure_count == 1
        assert status.last_error_category == "lost"
        assert [r.error_category for r in reader.history("import")] == ["lost"]
    alive = {i.id: i.alive for i in reader_1.instances()}
    assert alive[dying._store.publisher.instance.id] is False  # type: ignore[union-attr]


def test_a_fleet_run_past_its_stall_after_is_stalled(fleet: MakeMonitor, clock: FakeClock) -> None:
    worker, web = fleet(), fleet()
    worker.register("slow", stall_after=30)
    with worker.run("slow"):
        assert worker.flush()
        status = web.status("slow")
        assert status is not None
        assert status.state is JobState.RUNNING
        clock.advance(31)
        assert worker.flush()
        status = web.status("slow")
        assert status is not None
        assert status.state is JobState.STALLED
        assert web.health().status is jobpulse.HealthStatus.UNHEALTHY


@sqlite_only
def test_runs_leaving_the_window_reach_the_fleets_document_after_a_history_read(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    worker, web = fleet(), fleet()
    with worker.run("job"):
        clock.advance(1)
    assert worker.flush()
    web.flush()
    assert json.loads(web.health_json()[1])["jobs"]["job"]["history_runs"] == 1
    clock.advance(timedelta(hours=24, seconds=1))
    assert web.history("job") == []  # this read drops the run first
    assert json.loads(web.health_json()[1])["jobs"]["job"]["history_runs"] == 0
    assert web.health().to_dict()["jobs"]["job"]["history_runs"] == 0


def test_a_reader_keeps_one_timer_per_job_however_often_its_slot_moves(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    worker, web = fleet(), fleet()
    worker.register("busy", schedule="@every 1h")
    for _ in range(300):  # each run moves the expected run, and each read sees it move
        succeed(worker, "busy")
        clock.advance(1)
        assert worker.flush()
        status = web.status("busy")
        assert status is not None
    link = web._store
    assert link is not None
    assert len(link.fleet._timers) <= 2 * len(link.fleet._due) + 64


def test_an_expected_run_centuries_away_is_no_expected_run_in_the_store(
    fleet: MakeMonitor,
) -> None:
    monitor = fleet()
    monitor.set_next_run("far", datetime(9999, 1, 1, tzinfo=timezone.utc))
    succeed(monitor, "near")
    assert monitor.flush()  # past 64-bit nanoseconds: it would refuse every write
    far, near = monitor.status("far"), monitor.status("near")
    assert far is not None
    assert near is not None
    assert far.next_run_time is None
    assert near.success_count == 1


def test_a_run_recorded_for_a_process_killed_with_it_open_counts_once(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    # A prefork parent records the run of a child killed by a hard time limit, naming the
    # child's pid (here this process's: the child is a monitor of its own in it).
    child, parent = fleet(), fleet()
    assert parent.flush()
    run = child.run("charge_cards")
    run.__enter__()
    assert child.flush()
    started = clock.now()
    clock.advance(5)
    parent.record_run(
        "charge_cards",
        start=started,
        end=clock.now(),
        error=TimeoutError("hard time limit (5 s) exceeded"),
        category="time_limit",
        attributes={JOB_RAN_IN_PID: os.getpid()},
    )
    assert parent.flush()
    pass_time(clock, 12, parent)  # the child never writes again: it is found dead
    status = parent.status("charge_cards")
    assert status is not None
    assert (status.failure_count, status.active_runs) == (1, 0)
    assert [r.error_category for r in parent.history("charge_cards")] == ["time_limit"]
    run.__exit__(None, None, None)


def hold_write_lock(store_url: str) -> sqlite3.Connection:
    path = store_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


@sqlite_only
def test_runs_during_a_store_outage_are_written_when_it_returns(
    fleet: MakeMonitor, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer, reader = fleet(), fleet()
    holder = hold_write_lock(store_url)
    succeed(writer, "during", 100)  # jobs run as usual: nothing waits for the store
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        assert writer.flush(timeout=3) is False
    assert any("is unavailable" in record.getMessage() for record in caplog.records)
    holder.execute("ROLLBACK")
    holder.close()
    assert writer.flush()
    status = reader.status("during")
    assert status is not None
    assert status.success_count == 100
    assert len(reader.history("during")) == 100


@sqlite_only
def test_flush_tries_again_while_the_store_is_locked_within_its_timeout(
    fleet: MakeMonitor, store_url: str
) -> None:
    writer = fleet()
    link = writer._store
    assert link is not None
    holder = sqlite3.connect(
        store_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN EXCLUSIVE")
    succeed(writer, "late")

    def release_once_refused() -> None:
        deadline = time.monotonic() + 30
        while link.publisher.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        holder.execute("ROLLBACK")
        holder.close()

    releaser = threading.Thread(target=release_once_refused)
    releaser.start()
    try:
        assert writer.flush(timeout=30) is True  # refused at first, then taken
    finally:
        releaser.join()
    assert link.publisher.error is None
    status = writer.status("late")
    assert status is not None
    assert status.success_count == 1


class FailingStore(SQLiteStore):
    """A SQLite store whose writes fail while `failing` is set; it notes when each write
    was tried, and sets `tried` once `enough` were."""

    def __init__(self, path: Path, enough: int) -> None:
        super().__init__(path)
        self.failing = True
        self.tries: list[float] = []
        self.tried = threading.Event()
        self.written = threading.Event()
        self._enough = enough

    def write(self, *args: Any, **kwargs: Any) -> WriteResult:
        self.tries.append(time.monotonic())
        if len(self.tries) >= self._enough:
            self.tried.set()
        if self.failing:
            raise sqlite3.OperationalError("disk I/O error")
        result = super().write(*args, **kwargs)
        self.written.set()
        return result


def test_a_failing_store_is_tried_again_with_a_backoff_up_to_a_quarter_of_the_ttl(
    store_path: Path,
) -> None:
    store = FailingStore(store_path, enough=6)
    monitor = JobMonitor(store=store, flush_interval=0.05, instance_ttl=1.0)
    try:
        succeed(monitor, "job")
        assert store.tried.wait(30)
        # Doubling from the interval, at most a quarter of the ttl, each within 10% (a try
        # may only come later than that on a busy machine, never sooner).
        gaps = [after - before for before, after in itertools.pairwise(store.tries[:6])]
        for index, gap in enumerate(gaps):
            assert gap >= 0.9 * min(0.05 * 2**index, 0.25), (index, gaps)
        store.failing = False  # back: what waited is written at the next try
        assert store.written.wait(30)
        status = monitor.status("job")
        assert status is not None
        assert status.success_count == 1
    finally:
        monitor.shutdown()


def test_the_publisher_keeps_trying_after_more_than_a_thousand_failures_in_a_row(
    store_path: Path,
) -> None:
    # 1,025 failures in a row are about 43 minutes of an outage at the default settings: the
    # backoff's doubling must not overflow (a float times 2**1024 raises OverflowError, which
    # ended the publisher's thread, and no write was ever made again).
    store = FailingStore(store_path, enough=1100)
    monitor = JobMonitor(store=store, flush_interval=0.001, instance_ttl=0.002)
    try:
        succeed(monitor, "job")
        assert store.tried.wait(30), len(store.tries)
        store.failing = False
        assert store.written.wait(10)
        status = monitor.status("job")
        assert status is not None
        assert status.success_count == 1
    finally:
        monitor.shutdown()


class CountingStore(SQLiteStore):
    """A SQLite store that counts its writes and heartbeats alone, and sets `beaten` at the
    fifth heartbeat alone and `written` at each write after the first."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes = self.beats = 0
        self.beaten = threading.Event()
        self.written = threading.Event()

    def write(self, *args: Any, **kwargs: Any) -> WriteResult:
        result = super().write(*args, **kwargs)
        self.writes += 1
        if self.writes > 1:
            self.written.set()
        return result

    def beat(self, *args: Any, **kwargs: Any) -> bool:
        beaten = super().beat(*args, **kwargs)
        if beaten:
            self.beats += 1
            if self.beats >= 5:
                self.beaten.set()
        return beaten


def test_a_process_with_nothing_to_write_sends_its_heartbeat_alone(store_path: Path) -> None:
    # A web process beside busy workers: a write reads every row changed since its last
    # one, each second; a heartbeat alone reads none.
    store = CountingStore(store_path)
    idle = JobMonitor(store=store, flush_interval=0.02, instance_ttl=10)
    busy = JobMonitor(store=SQLiteStore(store_path), flush_interval=60, instance_ttl=600)
    try:
        succeed(busy, "job", 3)
        assert busy.flush()
        assert store.beaten.wait(30)
        assert store.writes == 1  # its first: its whole view
        assert [found.alive for found in busy.instances()] == [True, True]
        # An instance stopped with a run in progress: a write has more to do (close it,
        # its run lost), and the idle process makes it.
        now = time.time_ns()
        gone, who = SQLiteStore(store_path), Instance("gone", "svc", "host", 1, "1", now, now)
        try:
            opened = JobChange(name="job", created_ns=now, updated_ns=now, open_runs=((7, now),))
            for changes, stopping in (([opened], False), ([], True)):
                gone.write(
                    who, changes, now_ns=now, instance_ttl_ns=10**10, margin_ns=0, stopping=stopping
                )
        finally:
            gone.close()
        assert store.written.wait(30)
        assert idle.flush()  # and its view is read again
        status = idle.status("job")
        assert status is not None
        assert (status.failure_count, status.last_error_category) == (1, "lost")
    finally:
        busy.shutdown()
        idle.shutdown()


class LostReplyStore(SQLiteStore):
    """A SQLite store whose next write, once `lose` is set, raises `UnsureWrite` as a
    write whose reply was lost: taken first if `taken`, else not. Its `settle` raises the
    first time (the store cannot tell yet), then says which."""

    def __init__(self, path: Path, *, taken: bool) -> None:
        super().__init__(path)
        self.taken = taken
        self.lose = False
        self.settled: list[bool] = []
        self._told = False

    def write(self, *args: Any, **kwargs: Any) -> WriteResult:
        if not self.lose:
            return super().write(*args, **kwargs)
        self.lose = False
        if self.taken:
            super().write(*args, **kwargs)
        raise UnsureWrite("store: TimeoutError: the reply was lost", self._settle)

    def _settle(self) -> bool:
        if not self._told:
            self._told = True
            raise sqlite3.OperationalError("cannot tell yet")
        self.settled.append(self.taken)
        return self.taken


@pytest.mark.parametrize("taken", [True, False], ids=["taken", "not-taken"])
def test_a_write_whose_reply_was_lost_is_counted_once_whether_taken_or_not(
    store_path: Path, taken: bool
) -> None:
    store = LostReplyStore(store_path, taken=taken)
    monitor = JobMonitor(store=store, flush_interval=60, instance_ttl=600)
    reader = JobMonitor(store=SQLiteStore(store_path), flush_interval=60, instance_ttl=600)
    try:
        succeed(monitor, "job", 2)
        assert monitor.flush()
        store.lose = True
        succeed(monitor, "job", 3)
        fail(monitor, "job")
        assert monitor.flush(timeout=0.05) is False  # lost; settling it fails at first
        succeed(monitor, "job", 4)  # collected while that write is unsettled
        with pytest.raises(RuntimeError), monitor.run("other"):
            raise RuntimeError("boom")
        assert monitor.flush()
        assert store.settled == [taken]
        status = reader.status("job")
        assert status is not None
        assert (status.success_count, status.failure_count) == (9, 1)
        assert len(reader.history("job")) == 10
        assert reader.history("job", limit=3) == reader.history("job")[:3]
        assert status.consecutive_failures == 0
        other = reader.status("other")
        assert other is not None
        assert (other.failure_count, other.last_error) == (1, "RuntimeError: boom")
    finally:
        monitor.shutdown()
        reader.shutdown()


@sqlite_only
def test_a_store_that_can_be_read_but_not_written_is_degraded_in_the_document(
    fleet: MakeMonitor, store_url: str
) -> None:
    writer = fleet()
    succeed(writer, "before")
    assert writer.flush()
    holder = hold_write_lock(store_url)
    try:
        succeed(writer, "during")
        assert writer.flush(timeout=3) is False
        document = json.loads(writer.health_json()[1])
        # Still the fleet's view (WAL lets it be read), without this process's latest runs.
        assert (document["scope"], document["store"]) == ("fleet", "degraded")
        assert "locked" in document["store_error"]
        assert [entry["pid"] for entry in document["instances"]] == [os.getpid()]
        assert document["jobs"]["before"]["success_count"] == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert writer.flush()
    document = json.loads(writer.health_json()[1])
    assert document["store"] == "ok"
    assert "store_error" not in document
    assert document["jobs"]["during"]["success_count"] == 1


@sqlite_only
def test_runs_past_the_buffer_are_counted_and_logged_but_counts_stay_exact(
    fleet: MakeMonitor, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = fleet(store_buffer_runs=10)
    holder = hold_write_lock(store_url)
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        for _ in range(3):
            succeed(writer, "busy", 10)
            assert writer.flush(timeout=3) is False
    holder.execute("ROLLBACK")
    holder.close()
    assert writer.flush()
    status = writer.status("busy")
    assert status is not None
    assert status.success_count == 30
    assert len(writer.history("busy")) == 10
    assert any("left out of its history" in r.getMessage() for r in caplog.records)


def test_shutdown_writes_what_is_left(fleet: MakeMonitor) -> None:
    writer = fleet()
    succeed(writer, "last", 2)
    writer.shutdown()
    reader = fleet()
    status = reader.status("last")
    assert status is not None
    assert status.success_count == 2


def test_a_forked_child_is_an_instance_of_its_own(fleet: MakeMonitor) -> None:
    parent = fleet()
    succeed(parent, "shared", 2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            succeed(parent, "shared", 5)
            code = 0 if parent.flush() else 2
        finally:
            os._exit(code)
    _, status_code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status_code) == 0
    assert parent.flush()
    status = parent.status("shared")
    assert status is not None
    assert status.success_count == 7
    pids = sorted(i.pid for i in parent.instances())
    assert pids == sorted([os.getpid(), pid])


@sqlite_only
def test_a_store_that_breaks_under_the_process_costs_jobs_nothing(
    fleet: MakeMonitor, store_url: str
) -> None:
    monitor = fleet()
    succeed(monitor, "steady")
    assert monitor.flush()
    path = Path(store_url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as db:  # everything into the main file, which is then broken
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as file:  # corrupt it in place (the -shm file is mapped: spared)
        file.write(os.urandom(path.stat().st_size))
    monitor._store.fleet.invalidate()  # type: ignore[union-attr]
    succeed(monitor, "steady", 3)
    code, body = monitor.health_json()
    document = json.loads(body)
    assert document["scope"] == "process"
    assert document["store"] == "unavailable"
    assert document["store_error"]
    assert document["jobs"]["steady"]["success_count"] == 4  # the process's own view
    assert code is jobpulse.HealthStatus.HEALTHY


def test_different_settings_from_two_instances_are_logged(
    fleet: MakeMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = fleet(), fleet()
    a.register("report", critical=True)
    assert a.flush()
    b.register("report", critical=False)
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        assert b.flush()
    assert any("differ from another instance" in r.getMessage() for r in caplog.records)
    status = a.status("report")
    assert status is not None
    assert status.critical is False


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flush_interval": 0}, "flush_interval must be a positive"),
        ({"flush_interval": 6, "instance_ttl": 10}, "at least twice"),
    ],
)
def test_bad_store_timings_are_refused(
    store_url: str, options: dict[str, float], message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        JobMonitor(store=store_url, **options)  # type: ignore[arg-type]


def test_a_bad_store_url_attaches_nothing(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    before = list(provider._active_span_processor._span_processors)
    with pytest.raises(StoreError, match="unsupported URL scheme"):
        JobMonitor(provider, store="mysql://root:secret@db/jobs")
    assert list(provider._active_span_processor._span_processors) == before


def test_a_process_that_registers_a_schedule_it_never_runs_does_not_make_it_missed(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    scheduler, web = fleet(), fleet()
    for monitor in (scheduler, web):
        monitor.register("tick", schedule="@every 1m")
    for _ in range(5):
        clock.advance(60)
        succeed(scheduler, "tick")  # the scheduler's runs, a minute apart
        assert scheduler.flush()
        assert web.flush()
    status = web.status("tick")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.missed_count == 0


def test_after_a_deploy_the_restarted_schedulers_next_run_is_the_fleets(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    before = fleet()
    before.register("hourly", schedule="@every 1h")
    succeed(before, "hourly")
    clock.advance(1800)
    before.shutdown()  # a deploy half-way through the period
    after = fleet()
    after.register("hourly", schedule="@every 1h")
    # A scheduler started now (APScheduler's interval trigger) first runs it in an hour.
    after.set_next_run("hourly", clock.now() + timedelta(hours=1))
    assert after.flush()
    clock.advance(2400)  # past the old instance's slot and its grace, not past the new one
    assert after.flush()
    status = after.status("hourly")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.missed_count == 0
    assert status.next_run_time == clock.now() + timedelta(minutes=20)


def test_a_deploy_of_the_scheduler_beside_a_web_process_misses_nothing(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    web, scheduler = fleet(), fleet()
    web.register("tick", schedule="@every 1m")
    clock.advance(30)  # the two processes' own slots are half a period apart
    scheduler.register("tick", schedule="@every 1m")
    for _ in range(3):
        clock.advance(60)
        succeed(scheduler, "tick")
        assert scheduler.flush()
        assert web.flush()
    clock.advance(10)
    scheduler.shutdown()  # a deploy of the scheduler; the web process stays
    restarted = fleet()
    restarted.register("tick", schedule="@every 1m")  # its first run is a minute away
    for _ in range(12):
        clock.advance(5)
        assert web.flush()
        assert restarted.flush()
    succeed(restarted, "tick")
    assert restarted.flush()
    assert web.flush()
    status = web.status("tick")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.missed_count == 0


def test_a_restart_just_past_a_slots_grace_still_counts_it_missed(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    before = fleet()
    before.register("hourly", schedule="@every 1h")
    succeed(before, "hourly")
    before.shutdown()
    clock.advance(3600 + 300 + 1)  # the slot and its grace (5 min) passed a second ago
    after = fleet()
    after.register("hourly", schedule="@every 1h")  # expects its next run in an hour
    assert after.flush()
    status = after.status("hourly")
    assert status is not None
    assert status.state is JobState.MISSED
    clock.advance(5)  # more than two flush intervals: a slot taken late would be known
    assert after.flush()
    status = after.status("hourly")
    assert status is not None
    assert status.state is JobState.MISSED
    assert status.missed_count == 1


def test_a_schedule_that_never_fires_anywhere_is_missed(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    a, b = fleet(), fleet()
    for monitor in (a, b):
        monitor.register("stuck", schedule="@every 1m")
    clock.advance(3 * 60 + 30)
    assert a.flush()
    assert b.flush()
    status = b.status("stuck")
    assert status is not None
    assert status.state is JobState.MISSED
    assert status.missed_count == 3  # each slot once, though both processes saw it


@sqlite_only
def test_a_store_deleted_under_the_process_gets_its_whole_view_again(
    fleet: MakeMonitor, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = fleet()
    succeed(writer, "kept", 3)
    assert writer.flush()
    path = Path(store_url.removeprefix("sqlite:///"))
    for file in path.parent.glob("jobs.db*"):
        file.unlink()
    succeed(writer, "kept")
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        assert writer.flush()
    assert any("is new or was emptied" in r.getMessage() for r in caplog.records)
    reader = fleet()
    status = reader.status("kept")
    assert status is not None
    assert status.success_count == 4
    # The run that was waiting to be written when the new store was found is in its history
    # (those before went with the old file).
    assert len(reader.history("kept")) == 1


def test_flush_after_shutdown_and_from_the_publisher_itself_is_refused(
    fleet: MakeMonitor,
) -> None:
    monitor = fleet()
    link = monitor._store
    assert link is not None
    answers: list[bool] = []
    link.publisher._on_written = lambda: answers.append(monitor.flush(timeout=1))
    succeed(monitor, "job")
    assert monitor.flush()
    assert answers
    assert answers[0] is False
    monitor.shutdown()
    assert monitor.flush() is False
    assert link.stop(1) is False  # stopped once
