"""An unchanged view serves its last health document with no pass over its jobs, and a
changed one never serves it: each kind of change, those driven by time alone too, reaches
the very next poll.

Each case primes the cache (two polls, the second served from the first's rows), makes one
change, and polls first, before any other reader can see the change: the document must be
what ``health()`` (built from the jobs' snapshots, another path) says."""

from __future__ import annotations

import contextvars
import json
import random
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import pytest

from jobpulse import JobMonitor, JobRun
from jobpulse import _registry as registry_module
from jobpulse._job import Job, PendingRows, collect_rows
from jobpulse.testing import FakeClock
from tests.conftest import MakeMonitor, MonitorFactory, sqlite_only


def _document(monitor: JobMonitor) -> dict[str, Any]:
    status, body = monitor.health_json()
    document: dict[str, Any] = json.loads(body)
    assert document["status"] == status.value
    return document


def _assert_fresh(monitor: JobMonitor, document: dict[str, Any]) -> None:
    expected = monitor.health().to_dict()
    for key in ("status", "jobs", "summary", "timestamp"):
        assert document[key] == expected[key], key


def _prime(monitor: JobMonitor) -> dict[str, Any]:
    """Poll until the registry hands out its last rows again; the document."""
    document = _document(monitor)
    rows = monitor._registry.health_rows()
    assert monitor._registry.health_rows() is rows  # nothing changed: served from the cache
    return document


class Scene:
    """A monitor, its clock, and the runs a case leaves open (each entered in a context of
    its own, as on another thread; closed by the test)."""

    def __init__(self, monitor: JobMonitor, clock: FakeClock) -> None:
        self.monitor = monitor
        self.clock = clock
        self._open: list[tuple[contextvars.Context, JobRun]] = []

    def open(self, name: str) -> None:
        run, context = self.monitor.run(name), contextvars.Context()
        context.run(run.__enter__)
        self._open.append((context, run))

    def close(self) -> None:
        while self._open:
            context, run = self._open.pop()
            context.run(run.__exit__, None, None, None)

    def succeed(self, name: str = "a") -> None:
        with self.monitor.run(name):
            self.clock.advance(1)

    def fail(self, name: str = "a") -> None:
        with pytest.raises(ConnectionError), self.monitor.run(name):
            raise ConnectionError("https://user:pw@example.com down")


Step = Callable[[Scene], object]


def _on_a_thread(scene: Scene) -> None:
    def work() -> None:
        with scene.monitor.run("b") as run:
            run.set_metadata(rows=7)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


def _stall_setup(scene: Scene) -> None:
    scene.monitor.register("slow", stall_after=30)
    scene.open("slow")


def _scheduled(scene: Scene) -> None:
    scene.monitor.register("minutely", schedule="@every 1m")
    scene.succeed("minutely")


def _evicted(scene: Scene) -> None:
    for _ in range(3):  # max_history=2: the first run is evicted, counted in history_dropped
        scene.succeed()


#: (setup, change, whether the document's jobs differ after the change)
CASES: dict[str, tuple[Step, Step, bool]] = {
    "a run": (Scene.succeed, Scene.succeed, True),
    "a failure": (Scene.succeed, Scene.fail, True),
    "a run on another thread, with metadata": (Scene.succeed, _on_a_thread, True),
    "a run starting": (Scene.succeed, lambda s: s.open("a"), True),
    "a run ending": (lambda s: s.open("a"), Scene.close, True),
    "register": (Scene.succeed, lambda s: s.monitor.register("new"), True),
    "unregister": (Scene.succeed, lambda s: s.monitor.unregister("a"), True),
    "a settings change": (Scene.succeed, lambda s: s.monitor.register("a", critical=True), True),
    "a schedule": (Scene.succeed, lambda s: s.monitor.register("a", schedule="@every 1h"), True),
    "stalled by time": (_stall_setup, lambda s: s.clock.advance(31), True),
    "missed by time": (_scheduled, lambda s: s.clock.advance(2 * 60), True),
    "a missed run reported": (
        _scheduled,
        lambda s: s.monitor.record_missed("minutely", scheduled_at=s.clock.now(), reason="x"),
        True,
    ),
    "a skipped run": (Scene.succeed, lambda s: s.monitor.record_skipped("a", reason="x"), True),
    "an expected run set": (
        Scene.succeed,
        lambda s: s.monitor.set_next_run("a", s.clock.now() + timedelta(hours=1)),
        True,
    ),
    "a run leaving the 24 h window": (
        Scene.succeed,
        lambda s: s.clock.advance(timedelta(hours=24, seconds=1)),
        True,
    ),
    # The evicted run ended at t0+1 s, the two held at t0+2 s and t0+3 s: at t0+24 h+0.5 s
    # the eviction's hour has left the window, and both runs are still in it.
    "an eviction's hour leaving the window": (
        _evicted,
        lambda s: s.clock.advance(timedelta(hours=24, seconds=-2.5)),
        True,
    ),
    # A job without a history: nothing in its row waits on a time of its own.
    "retention": (
        lambda s: s.monitor.register("idle"),
        lambda s: s.clock.advance(timedelta(days=31)),
        True,
    ),
    "pending work (not in the document)": (
        Scene.succeed,
        lambda s: s.monitor.set_pending("queue", 5),
        False,
    ),
    "an hour passing with nothing to change": (
        Scene.succeed,
        lambda s: s.clock.advance(timedelta(hours=1)),
        False,
    ),
    "the wall clock set back": (Scene.succeed, lambda s: s.clock.step_wall(-3600), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_next_poll_after_a_change_shows_it(
    make_monitor: MonitorFactory, clock: FakeClock, case: str
) -> None:
    setup, change, changes_jobs = CASES[case]
    scene = Scene(make_monitor(retention=timedelta(days=30), max_history=2), clock)
    try:
        setup(scene)
        before = _prime(scene.monitor)
        _assert_fresh(scene.monitor, before)
        change(scene)
        after = _document(scene.monitor)  # the first reader to see the change
        _assert_fresh(scene.monitor, after)
        assert (after["jobs"] != before["jobs"]) is changes_jobs
        _assert_fresh(scene.monitor, _prime(scene.monitor))
    finally:
        scene.close()


@pytest.mark.parametrize("reader", ["status", "statuses", "history"])
def test_history_pruned_by_another_reader_reaches_the_next_poll(
    make_monitor: MonitorFactory, clock: FakeClock, reader: str
) -> None:
    # Another reader prunes the history first; with the wall clock set back after it, the
    # poll's own time says no run can have left the window yet.
    monitor = make_monitor(retention=timedelta(days=30))
    Scene(monitor, clock).succeed()
    _prime(monitor)
    clock.advance(timedelta(hours=25))
    readers: dict[str, Callable[[], object]] = {
        "status": lambda: monitor.status("a"),
        "statuses": monitor.statuses,
        "history": lambda: monitor.history("a"),
    }
    readers[reader]()
    clock.step_wall(-2 * 3600)
    document = _document(monitor)
    assert document["jobs"]["a"]["history_runs"] == 0
    _assert_fresh(monitor, document)


def test_an_unchanged_poll_makes_no_pass_over_the_jobs(
    monitor: JobMonitor, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[int] = []

    def counted(jobs: Iterable[Job], now_ns: int) -> PendingRows:
        passes.append(now_ns)
        return collect_rows(jobs, now_ns)

    monkeypatch.setattr(registry_module, "collect_rows", counted)
    scene = Scene(monitor, clock)
    for index in range(50):
        monitor.register(f"job_{index}", schedule="@every 1h" if index % 2 else None)
        scene.succeed(f"job_{index}")
    _, first = monitor._health_parts()
    assert len(passes) == 1
    for _ in range(5):
        clock.advance(1)
        _, parts = monitor._health_parts()
        assert parts[1] is first[1]
        assert parts[0] != first[0]  # the timestamp is the poll's own
    retention_pass = monitor._registry._last_prune_ns
    clock.advance(61)  # a retention pass is due, but no job can be idle for long enough
    monitor._health_parts()
    assert monitor._registry._last_prune_ns == retention_pass
    assert len(passes) == 1
    scene.succeed("job_7")
    monitor._health_parts()
    assert len(passes) == 2


def test_the_last_rows_are_never_served_after_a_change_under_threads(
    make_monitor: MonitorFactory, clock: FakeClock
) -> None:
    # Job threads change the view while another polls it: whatever the interleaving, once
    # the threads are done, the next poll is the view as it is.
    monitor = make_monitor(retention=timedelta(days=30))
    names = [f"job_{index}" for index in range(20)]
    for name in names:
        monitor.register(name)
    stop = threading.Event()
    started = threading.Barrier(5)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        started.wait()
        for _ in range(300):
            try:
                with monitor.run(rng.choice(names)):
                    if rng.random() < 0.2:
                        raise ValueError("boom")
            except ValueError:
                pass
        stop.set()

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    while not stop.is_set():
        _document(monitor)
    for thread in threads:
        thread.join()
    document = _document(monitor)
    _assert_fresh(monitor, document)
    runs = sum(job["success_count"] + job["failure_count"] for job in document["jobs"].values())
    assert runs == 4 * 300


# -- the fleet's view, read from a store --------------------------------------------------


def _fleet_prime(web: JobMonitor) -> dict[str, Any]:
    document = _document(web)
    link = web._store
    assert link is not None
    rows = link.fleet.health_rows()
    assert link.fleet.health_rows() is rows  # nothing changed: served from the cache
    assert _document(web)["jobs"] == document["jobs"]
    return document


def _fleet_run(worker: JobMonitor, web: JobMonitor, clock: FakeClock) -> None:
    with worker.run("job"):
        clock.advance(1)
    assert worker.flush()
    web.flush()  # the web process reads the store at its next poll


def _fleet_stall(worker: JobMonitor, web: JobMonitor, clock: FakeClock) -> None:
    clock.advance(31)  # the open run passes its stall_after: a timer of the reader's


def _fleet_missed(worker: JobMonitor, web: JobMonitor, clock: FakeClock) -> None:
    clock.advance(2 * 60)  # the expected run passes its grace: a timer of the reader's


def _fleet_window(worker: JobMonitor, web: JobMonitor, clock: FakeClock) -> None:
    clock.advance(timedelta(hours=24, seconds=1))


def _fleet_history_first(worker: JobMonitor, web: JobMonitor, clock: FakeClock) -> None:
    clock.advance(timedelta(hours=24, seconds=1))
    assert web.history("job") == []  # pruned by this reader first
    clock.step_wall(-3600)  # the poll's own time says no run can have left the window


FleetStep = Callable[[JobMonitor, JobMonitor, FakeClock], None]
FLEET_CASES: dict[str, FleetStep] = {
    "a run of another instance": _fleet_run,
    "stalled by time": _fleet_stall,
    "missed by time": _fleet_missed,
    "a run leaving the 24 h window": _fleet_window,
    "history pruned by another reader": _fleet_history_first,
}


@sqlite_only
@pytest.mark.parametrize("case", list(FLEET_CASES))
def test_the_fleets_next_poll_after_a_change_shows_it(
    fleet: MakeMonitor, clock: FakeClock, case: str
) -> None:
    worker, web = fleet(), fleet()
    # A schedule only where it is the case: its missed slots would show any passing of time.
    schedule = "@every 1m" if case == "missed by time" else None
    worker.register("job", schedule=schedule, stall_after=30)
    _fleet_run(worker, web, clock)
    if case == "stalled by time":
        run, context = worker.run("job"), contextvars.Context()
        context.run(run.__enter__)
        assert worker.flush()
        web.flush()
    try:
        before = _fleet_prime(web)
        assert before["scope"] == "fleet"
        _assert_fresh(web, before)
        FLEET_CASES[case](worker, web, clock)
        after = _document(web)  # the first reader to see the change
        assert after["jobs"] != before["jobs"]
        _assert_fresh(web, after)
    finally:
        if case == "stalled by time":
            context.run(run.__exit__, None, None, None)


def test_every_variant_and_selection_follows_a_change(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    # The filtered, indented and open texts are kept per state of the view: while nothing
    # changes each keeps its tag, and after a change each names and shows the view as it is.
    from jobpulse._health import FULL, Selection, Variant

    scene = Scene(monitor, clock)
    for name in ("a", "b"):
        scene.succeed(name)
    failed = Selection(states=frozenset({"failed"}))
    only_b = Selection(names=frozenset({"b"}))
    queries = [
        (variant, selection)
        for variant in (FULL, Variant(open=True), Variant(pretty=True), Variant(True, True))
        for selection in (None, failed, only_b)
    ]

    def tags() -> list[str]:
        snapshot = monitor._health_snapshot()
        return [snapshot.etag(repr(query)) for query in queries]

    def jobs(variant: Variant, selection: Selection | None) -> dict[str, Any]:
        parts = monitor._health_snapshot().parts(variant, selection)
        shown: dict[str, Any] = json.loads(b"".join(parts))["jobs"]
        return shown

    before = tags()
    assert jobs(FULL, failed) == {}
    clock.advance(1)
    assert tags() == before
    scene.fail("b")
    after = tags()
    assert all(new != old for new, old in zip(after, before, strict=True))
    assert list(jobs(FULL, failed)) == ["b"]
    assert list(jobs(Variant(pretty=True), failed)) == ["b"]
    shown = jobs(Variant(open=True, pretty=True), only_b)["b"]
    assert (shown["consecutive_failures"], shown["last_error"]) == (1, None)  # open: no text
    assert (
        jobs(FULL, only_b)["b"]["last_error"]
        == "ConnectionError: https://user:***@example.com down"
    )
    _assert_fresh(monitor, _document(monitor))
