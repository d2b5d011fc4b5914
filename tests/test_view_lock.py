"""The status view's lock, shared by combining (`jobpulse._registry._ViewLock`): a run's
start or end that finds the lock taken is left to its holder instead of waiting, and is
in the view before anyone reads it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from starlette.applications import Starlette

from jobpulse import JobMonitor, JobState, _registry
from jobpulse._health import HealthSnapshot
from jobpulse._registry import _APPLY, StatusRegistry
from jobpulse.starlette import HEALTH_PATH, routes
from jobpulse.testing import FakeClock
from tests.conftest import InternalErrors, MakeMonitor, Otel
from tests.test_starlette import client_for

DEADLINE = 30.0


def holding_the_lock(registry: StatusRegistry, work: Callable[[], None]) -> None:
    """`work()` on a thread of its own that holds the view's lock meanwhile: anything in it
    that waited for the lock would wait for ever (the lock is not reentrant), which fails
    the test at the deadline instead of hanging it."""
    failure: list[BaseException] = []

    def hold() -> None:
        try:
            with registry._lock:
                work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failure.append(exc)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), "a run's start or end waited for the view's lock"
    if failure:
        raise failure[0]


def test_a_run_that_finds_the_lock_taken_is_applied_by_its_holder(
    monitor: JobMonitor, otel: Otel
) -> None:
    monitor.register("nightly")
    registry = monitor._registry
    waiting: list[int] = []

    def run() -> None:
        with monitor.run("nightly"):
            pass
        waiting.append(len(registry._lock.events))
        # Nothing of the run is in the view yet: both its start and its end wait.
        job = registry._jobs["nightly"]
        waiting.append(job.success_count + len(job.runs))

    holding_the_lock(registry, run)
    assert waiting == [2, 0]
    assert not registry._lock.events
    status = monitor.status("nightly")
    assert status is not None
    assert (status.state, status.success_count, status.active_runs) == (JobState.SUCCESS, 1, 0)
    (point,) = otel.metrics()["background_job.duration"].values()
    assert isinstance(point, HistogramDataPoint)
    assert point.count == 1


def test_a_failed_run_waits_for_the_lock_and_finds_its_start_applied(
    monitor: JobMonitor,
) -> None:
    """A failure is applied by its own thread (its warning names the failures in a row):
    it waits for the lock, whose holder applies the run's start first."""
    monitor.register("flaky")
    registry = monitor._registry
    started = threading.Event()
    release = threading.Event()
    ended: list[bool] = []

    def hold() -> None:
        with registry._lock:
            started.set()
            release.wait(DEADLINE)

    def fail() -> None:
        started.wait(DEADLINE)
        try:
            with monitor.run("flaky"):
                raise ValueError("boom")
        except ValueError:
            ended.append(True)

    holder = threading.Thread(target=hold, daemon=True)
    runner = threading.Thread(target=fail, daemon=True)
    holder.start()
    runner.start()
    started.wait(DEADLINE)
    # The start waits in the lock's events; the failure waits for the lock itself.
    job = registry._jobs["flaky"]
    while runner.is_alive() and not registry._lock.events:
        runner.join(0.01)
    assert not job.runs
    release.set()
    holder.join(DEADLINE)
    runner.join(DEADLINE)
    assert ended == [True]
    status = monitor.status("flaky")
    assert status is not None
    assert (status.state, status.failure_count, status.active_runs) == (JobState.FAILED, 1, 0)
    assert status.consecutive_failures == 1


def test_what_a_waiting_start_leaves_to_do_is_done(monitor: JobMonitor, clock: FakeClock) -> None:
    """Its stall deadline is armed and its schedule moves on, by the thread that applied it."""
    monitor.register("hourly", schedule="@every 1h", stall_after=60)
    registry = monitor._registry
    runs = []

    def start() -> None:
        run = monitor.run("hourly")
        run.__enter__()
        runs.append(run)

    holding_the_lock(registry, start)
    status = monitor.status("hourly")
    assert status is not None
    assert status.active_runs == 1
    assert status.next_run_time == clock.now() + timedelta(hours=1)
    clock.advance(61)
    status = monitor.status("hourly")
    assert status is not None
    assert status.state is JobState.STALLED
    runs[0].__exit__(None, None, None)


def test_a_waiting_start_is_open_to_a_run_inside_it(monitor: JobMonitor) -> None:
    """`is_open` applies the events left for the lock first: a run inside a run of the same
    job, on the same thread, is part of it even when the outer start waited."""
    monitor.register("outer")
    registry = monitor._registry
    span_ids: list[int] = []

    def nested() -> None:
        with monitor.run("outer") as outer:
            span_ids.append(outer.span.get_span_context().span_id)

    holding_the_lock(registry, nested)
    run_id = span_ids[0]
    registry._lock.events.append((registry._start_locked, ("outer", run_id, None, 1, 0.0)))
    assert registry.is_open("outer", run_id)
    assert not registry._lock.events
    registry.end_run("outer", run_id, 1, 2)
    status = monitor.status("outer")
    assert status is not None
    assert status.success_count == 2


def test_a_waiting_event_that_raises_is_reported_and_costs_the_others_nothing(
    monitor: JobMonitor, internal_errors: InternalErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor.register("good")
    monitor.register("bad")
    registry = monitor._registry
    real = registry._start_locked

    def start_locked(name: str, *args: object) -> object:
        if name == "bad":
            raise RuntimeError("a bug applying a start")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "_start_locked", start_locked)

    def runs() -> None:
        for name in ("bad", "good"):
            with monitor.run(name):
                pass

    holding_the_lock(registry, runs)
    ((where, error),) = internal_errors.take()
    assert where == _APPLY
    assert str(error) == "a bug applying a start"
    good = monitor.status("good")
    assert good is not None
    assert (good.success_count, good.active_runs) == (1, 0)


def test_a_follow_up_that_raises_is_reported_and_costs_the_others_nothing(
    monitor: JobMonitor, internal_errors: InternalErrors, clock: FakeClock
) -> None:
    monitor.register("first", stall_after=60)
    monitor.register("second", stall_after=60)
    registry = monitor._registry
    real = registry._lock._follow_up
    done: list[str] = []

    def follow_up(after: tuple[object, ...]) -> None:
        if after[0] == "first":
            raise RuntimeError("a bug in a follow-up")
        done.append(str(after[0]))
        real(after)  # type: ignore[arg-type]

    registry._lock._follow_up = follow_up
    runs = []

    def start() -> None:
        for name in ("first", "second"):
            run = monitor.run(name)
            run.__enter__()
            runs.append(run)

    holding_the_lock(registry, start)
    registry._lock._follow_up = real
    ((where, error),) = internal_errors.take()
    assert (where, str(error)) == (_APPLY, "a bug in a follow-up")
    assert done == ["second"]
    clock.advance(61)
    second = monitor.status("second")
    assert second is not None
    assert second.state is JobState.STALLED
    for run in runs:
        run.__exit__(None, None, None)


def test_events_waiting_at_a_fork_are_applied_once_in_the_child(monitor: JobMonitor) -> None:
    """The child's view counts a run that ended before the fork, and the lock the parent's
    thread let go of afterwards applies nothing twice."""
    monitor.register("forked")
    registry = monitor._registry

    def run_then_fork() -> None:
        with monitor.run("forked"):
            pass
        registry._reset_after_fork()  # what the child does after os.fork()

    holding_the_lock(registry, run_then_fork)
    status = monitor.status("forked")
    assert status is not None
    assert (status.success_count, status.active_runs) == (1, 0)


def test_threads_and_a_reader_count_exactly(monitor: JobMonitor) -> None:
    """8 threads run 4 jobs 2,000 times each while a reader polls the view: every run is
    counted once and none is left open; what a reader saw of a job never goes back."""
    threads, runs, names = 8, 2000, ("a", "b", "c", "d")
    for name in names:
        monitor.register(name)
    registry = monitor._registry
    gate = threading.Barrier(threads + 1)
    done = threading.Event()
    went_back: list[str] = []

    def work(index: int) -> None:
        gate.wait()
        for run in range(runs):
            with monitor.run(names[(index + run) % len(names)]):
                pass

    def read() -> None:
        gate.wait()
        seen = dict.fromkeys(names, 0)
        while not done.is_set():
            for name, status in monitor.statuses().items():
                if status.success_count < seen[name]:
                    went_back.append(name)
                seen[name] = status.success_count
            registry.health_rows()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    reader = threading.Thread(target=read)
    for thread in [*workers, reader]:
        thread.start()
    for thread in workers:
        thread.join()
    done.set()
    reader.join()
    assert not went_back
    assert not registry._lock.events
    statuses = monitor.statuses()
    assert sum(s.success_count for s in statuses.values()) == threads * runs
    assert all(s.active_runs == 0 for s in statuses.values())


def test_a_run_waits_for_a_reader_on_another_thread(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a thread reads the view with priority, a run on another thread waits at its
    start for the reader to be done, and then goes on."""
    monkeypatch.setattr(_registry, "_MAX_READER_WAIT", DEADLINE)
    monitor.register("waits")
    registry = monitor._registry
    reading, leave, done = threading.Event(), threading.Event(), threading.Event()

    def reader() -> None:
        with registry.reading():
            reading.set()
            leave.wait(DEADLINE)

    def run() -> None:
        with monitor.run("waits"):
            pass
        done.set()

    reader_thread = threading.Thread(target=reader, daemon=True)
    reader_thread.start()
    assert reading.wait(DEADLINE)
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    assert not done.wait(0.2)  # it cannot be done before the reader leaves
    status = monitor.status("waits")  # a reader of its own (a `with` block): not held up
    assert status is not None
    assert (status.active_runs, status.success_count) == (0, 0)
    leave.set()
    assert done.wait(DEADLINE)
    reader_thread.join(DEADLINE)
    runner.join(DEADLINE)
    status = monitor.status("waits")
    assert status is not None
    assert status.success_count == 1


def test_a_reader_holds_runs_up_for_a_bounded_time(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_registry, "_MAX_READER_WAIT", 0.01)
    monitor.register("bounded")
    registry = monitor._registry
    reading, leave = threading.Event(), threading.Event()

    def reader() -> None:
        with registry.reading():
            reading.set()
            leave.wait(DEADLINE)

    reader_thread = threading.Thread(target=reader, daemon=True)
    reader_thread.start()
    try:
        assert reading.wait(DEADLINE)
        for _ in range(3):  # each start and end waits 0.01 s, then goes on
            with monitor.run("bounded"):
                pass
        status = monitor.status("bounded")
        assert status is not None
        assert status.success_count == 3
    finally:
        leave.set()
        reader_thread.join(DEADLINE)


def test_a_reader_s_own_runs_do_not_wait_for_it(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_registry, "_MAX_READER_WAIT", 3600.0)
    monitor.register("own")
    registry = monitor._registry

    def read_and_run() -> None:
        with registry.reading():
            with monitor.run("own"):
                pass
            with registry._lock:  # a `with` block in a scope: counted twice, left twice
                pass
            assert registry._lock.readers == [threading.get_ident()]
        assert not registry._lock.readers

    thread = threading.Thread(target=read_and_run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), "a reader's run waited for the reader"
    status = monitor.status("own")
    assert status is not None
    assert status.success_count == 1
    assert registry._lock.quiet.is_set()


def test_the_health_endpoint_builds_its_answer_with_priority(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From this process's view, the health document is built in a reading scope; with a
    store (the fleet's view, which may wait for the store), without one."""
    monitor.register("probed")
    registry = monitor._registry
    seen: list[bool] = []
    real = monitor._health_snapshot

    def snapshot() -> HealthSnapshot:
        seen.append(threading.get_ident() in registry._lock.readers)
        return real()

    monkeypatch.setattr(monitor, "_health_snapshot", snapshot)
    with client_for(Starlette(routes=routes(monitor, metrics=False))) as client:
        assert client.get(HEALTH_PATH).status_code == 200
    assert seen == [True]
    assert not registry._lock.readers


def test_with_a_store_the_health_endpoint_reads_without_priority(
    fleet: MakeMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = fleet()
    monitor.register("probed")
    seen: list[bool] = []
    real = monitor._health_snapshot

    def snapshot() -> HealthSnapshot:
        seen.append(bool(monitor._registry._lock.readers))
        return real()

    monkeypatch.setattr(monitor, "_health_snapshot", snapshot)
    with client_for(Starlette(routes=routes(monitor, metrics=False))) as client:
        assert client.get(HEALTH_PATH).status_code == 200
    assert seen == [False]


def test_waiting_events_of_a_job_gone_meanwhile_are_dropped(monitor: JobMonitor) -> None:
    monitor.register("gone")
    registry = monitor._registry
    results: list[object] = []

    def work() -> None:
        registry.start_run("gone", 7, None, 1)  # waits for the lock's holder: this thread
        results.append(registry.end_run("unknown", 8, 1, 2, batch=0.0))  # not in the view
        del registry._jobs["gone"]  # as `unregister` does, before the start is applied

    holding_the_lock(registry, work)
    assert results == [None]
    assert monitor.status("gone") is None
    assert not registry._lock.events


def test_a_with_block_interrupted_while_it_waits_counts_no_reader(monitor: JobMonitor) -> None:
    lock = monitor._registry._lock
    real = lock.mutex

    class Interrupted:
        def acquire(self) -> bool:
            raise KeyboardInterrupt

    lock.mutex = Interrupted()  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt), lock:
            pass
    finally:
        lock.mutex = real
    assert not lock.readers
    assert lock.quiet.is_set()


def test_a_run_inside_a_with_block_never_waits_for_the_lock(monitor: JobMonitor) -> None:
    """Even past `_MAX_EVENTS` waiting, a run started and ended by the thread that holds
    the lock is left to it (waiting for the lock would wait for ever)."""
    monitor.register("inside")
    registry = monitor._registry

    def many() -> None:
        for _ in range(_registry._MAX_EVENTS):
            with monitor.run("inside"):
                pass

    holding_the_lock(registry, many)
    status = monitor.status("inside")
    assert status is not None
    assert status.success_count == _registry._MAX_EVENTS


def test_a_fork_leaves_no_deadline_of_the_parent_to_arm(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    """A run started before the fork and applied in the child leaves its follow-up (its
    stall deadline) to the parent: the child arms none."""
    monitor.register("parent_only", stall_after=30)
    registry = monitor._registry

    def start_then_fork() -> None:
        monitor.run("parent_only").__enter__()
        registry._reset_after_fork()

    holding_the_lock(registry, start_then_fork)
    assert not registry._lock.after
    clock.advance(300)
    status = monitor.status("parent_only")
    assert status is not None
    assert (status.active_runs, status.stalled_runs) == (0, 0)
