"""The store conformance suite: what every backend must do, run against each of them."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from jobpulse import StoreError, StoreVersionError
from jobpulse.store import SCHEMA_VERSION, SQLiteStore, Store, open_store
from jobpulse.store._base import Cursor, FinishedRun, FleetRead, FleetRow, Instance, JobChange
from jobpulse.store.redis import RedisStore
from jobpulse.store.sqlite import _MIGRATIONS

S = 1_000_000_000
T0 = 1_780_000_000 * S  # a fixed wall time, 2026
TTL = 10 * S
MARGIN = 2 * S

StoreFactory = Callable[[], Store]


def sqlite_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    path = tmp_path / "fleet" / "jobs.db"
    return lambda: SQLiteStore(path)


def redis_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    url = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"  # a store of its own in the session's server
    return lambda: RedisStore(url, prefix=prefix)


BACKENDS = {"sqlite": sqlite_factory, "redis": redis_factory}


@pytest.fixture(params=sorted(BACKENDS))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores on one backend location; every store opened is closed afterwards."""
    opened: list[Store] = []
    factory = BACKENDS[request.param](request, tmp_path)

    def make() -> Store:
        store = factory()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def instance(name: str, started_ns: int = T0) -> Instance:
    return Instance(name, "svc", "host-1", 1000 + len(name), "1.0", started_ns, started_ns)


def change(name: str = "job", **fields: object) -> JobChange:
    return JobChange(name=name, created_ns=T0, updated_ns=T0, **fields)  # type: ignore[arg-type]


def run(start_ns: int, duration_ns: int, category: str | None = None) -> FinishedRun:
    error = None if category is None else f"{category} error at {start_ns}"
    return FinishedRun(start_ns, duration_ns, start_ns + duration_ns, category, error)


def write(store: Store, who: Instance, *changes: JobChange, now_ns: int = T0) -> None:
    result = store.write(who, list(changes), now_ns=now_ns, instance_ttl_ns=TTL, margin_ns=MARGIN)
    assert result.applied


def stored_runs(read: FleetRead) -> list[tuple[str, int, int, int, str | None]]:
    """A read's runs, one by one: (job, start_ns, duration_ns, end_ns, category)."""
    return [(name, *run) for name, runs in read.runs for run in runs]


def rows(store: Store, now_ns: int = T0) -> dict[str, FleetRow]:
    read = store.read(None, now_ns=now_ns, instance_ttl_ns=TTL)
    return {row.name: row for row in read.rows}


def test_round_trip_is_exact(make_store: StoreFactory) -> None:
    store = make_store()
    odd = 123_456_789_012_345_679  # more digits than a float holds
    runs = [run(T0 + 1, odd), run(T0 + 7, 1, "network")]
    write(
        store,
        instance("a"),
        change(
            success=3,
            failure=1,
            total_duration_ns=odd + 1,
            min_ns=1,
            max_ns=odd,
            runs=runs,
            last_start_ns=T0 + 7,
            last_success_ns=T0 + 1 + odd,
            metadata={"rows": 12, "ratio": 0.1, "nested": {"ok": True}},
            settings={"critical": True, "failure_threshold": 4, "timeout": 2.5},
            next_run=(T0 + 60 * S + 3, 6 * S + 1),
        ),
    )
    row = rows(make_store())["job"]  # a second store object: read back from the backend
    assert (row.success_count, row.failure_count) == (3, 1)
    assert row.total_duration_ns == odd + 1
    assert (row.min_ns, row.max_ns) == (1, odd)
    assert row.last_duration_ns == odd  # ended last
    assert row.last_end_ns == T0 + 1 + odd
    assert row.metadata == {"rows": 12, "ratio": 0.1, "nested": {"ok": True}}
    assert row.settings == {"critical": True, "failure_threshold": 4, "timeout": 2.5}
    assert (row.next_run_ns, row.grace_ns) == (T0 + 60 * S + 3, 6 * S + 1)
    read = make_store().read(None, now_ns=T0, instance_ttl_ns=TTL)
    assert stored_runs(read) == [
        ("job", T0 + 1, odd, T0 + 1 + odd, None),
        ("job", T0 + 7, 1, T0 + 8, "network"),
    ]


def test_counts_are_fleet_sums_and_last_fields_follow_the_run_that_ended_last(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    write(store, instance("a"), change(success=2, runs=[run(T0, 5), run(T0 + 10, 5)]))
    # A late batch from b: its runs ended before a's last one.
    write(store, instance("b"), change(failure=1, runs=[run(T0 + 2, 3, "database")]))
    row = rows(store)["job"]
    assert (row.success_count, row.failure_count) == (2, 1)
    assert row.consecutive_failures == 0
    assert row.last_error is None
    assert row.last_failed is False
    # Now failures on both instances, in end order: consecutive counts the fleet's.
    write(store, instance("b"), change(failure=1, runs=[run(T0 + 20, 1, "timeout")]))
    write(store, instance("a"), change(failure=1, runs=[run(T0 + 30, 1, "network")]))
    row = rows(store)["job"]
    assert row.consecutive_failures == 2
    assert row.last_error_category == "network"
    assert row.last_error == f"network error at {T0 + 30}"


def test_writers_of_their_own_fold_into_the_same_rows(make_store: StoreFactory) -> None:
    # Two processes: each writer sees what the other wrote since its own last write.
    a, b = make_store(), make_store()
    write(a, instance("a"), change(success=1, runs=[run(T0, 1)]), change("only-a", success=1))
    write(b, instance("b"), change(success=2, runs=[run(T0 + 10, 1)]))
    write(a, instance("a"), change(failure=1, runs=[run(T0 + 20, 1, "network")]))
    write(b, instance("b"), change(success=1, runs=[run(T0 + 30, 1)]))
    row = rows(make_store())["job"]
    assert (row.success_count, row.failure_count) == (4, 1)
    assert row.consecutive_failures == 0
    assert row.last_end_ns == T0 + 31
    assert rows(b)["only-a"].success_count == 1


def test_a_write_of_many_runs_keeps_them_all_in_order(make_store: StoreFactory) -> None:
    store = make_store()
    many = [
        run(T0 + index * S, index + 1, "timeout" if index % 7 else None) for index in range(450)
    ]
    write(store, instance("a"), change(success=65, failure=385, runs=many))
    write(store, instance("b"), change(success=1, runs=[run(T0 + 450 * S, 1)]))
    read = store.read(None, now_ns=T0 + 450 * S, instance_ttl_ns=TTL)
    assert stored_runs(read) == [
        *(("job", r.start_ns, r.duration_ns, r.end_ns, r.category) for r in many),
        ("job", T0 + 450 * S, 1, T0 + 450 * S + 1, None),
    ]


def test_a_batch_of_runs_folds_as_runs_one_by_one(make_store: StoreFactory) -> None:
    store = make_store()
    write(
        store,
        instance("a"),
        change(failure=2, runs=[run(T0, 1, "network"), run(T0 + 5, 1, "timeout")]),
    )
    assert rows(store)["job"].consecutive_failures == 2
    # Out of order: the success that ended first does not reset what ended after it.
    batch = [run(T0 + 40, 1, "database"), run(T0 + 10, 1), run(T0 + 30, 1, "timeout")]
    write(store, instance("a"), change(success=1, failure=2, runs=batch))
    row = rows(store)["job"]
    assert row.consecutive_failures == 2
    assert row.last_error_category == "database"
    # Failures only: added to those before.
    write(store, instance("a"), change(failure=1, runs=[run(T0 + 50, 1, "network")]))
    assert rows(store)["job"].consecutive_failures == 3
    # Runs that all ended before the last one change the counts, not the "last" fields.
    write(store, instance("b"), change(success=1, runs=[run(T0 + 1, 1)]))
    row = rows(store)["job"]
    assert (row.success_count, row.consecutive_failures) == (2, 3)
    assert row.last_end_ns == T0 + 51


def test_consecutive_failures_count_interleaved_writers_runs(make_store: StoreFactory) -> None:
    # Two prefork children fail the same task in turn: each writes its own runs, the second
    # ones that ended before the first's last one.
    store = make_store()
    a, b = instance("a"), instance("b")
    write(store, a, change(failure=3, runs=[run(T0 + k, 1, "network") for k in (1, 3, 5)]))
    write(store, b, change(failure=2, runs=[run(T0 + k, 1, "network") for k in (2, 4)]))
    row = rows(store)["job"]
    assert (row.failure_count, row.consecutive_failures) == (5, 5)
    assert row.last_end_ns == T0 + 6  # the last fields follow the run that ended last
    # A success written late, that ended between failures: only those after it count.
    write(store, b, change(success=1, runs=[run(T0 + 3, 1)], last_success_ns=T0 + 4))
    row = rows(store)["job"]
    assert (row.consecutive_failures, row.last_success_ns, row.last_failed) == (2, T0 + 4, True)
    # One that ended before the last success changes nothing but the counts.
    write(store, a, change(success=1, runs=[run(T0, 1)], last_success_ns=T0 + 1))
    row = rows(store)["job"]
    assert (row.success_count, row.consecutive_failures, row.last_success_ns) == (2, 2, T0 + 4)
    # A success that ends after every failure ends the streak, wherever it is written.
    write(store, a, change(success=1, runs=[run(T0 + 9, 1)], last_success_ns=T0 + 10))
    assert rows(store)["job"].consecutive_failures == 0


def test_a_long_streak_of_failures_keeps_its_count_past_the_ends_it_keeps(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    failures = [run(T0 + 10 * k, 1, "network") for k in range(1, 101)]
    write(store, instance("a"), change(failure=100, runs=failures))
    assert rows(store)["job"].consecutive_failures == 100
    # A late success older than every failure kept: the failures before it are unknown.
    write(store, instance("b"), change(success=1, runs=[run(T0 + 5, 1)]))
    assert rows(store)["job"].consecutive_failures == 100
    # One that ended among the kept ones: those after it, exactly.
    write(store, instance("b"), change(success=1, runs=[run(T0 + 995, 1)]))
    assert rows(store)["job"].consecutive_failures == 1


def test_an_incremental_read_gives_only_what_changed(make_store: StoreFactory) -> None:
    store = make_store()
    write(store, instance("a"), change("one", success=1, runs=[run(T0, 1)]), change("two"))
    first = store.read(None, now_ns=T0, instance_ttl_ns=TTL)
    assert sorted(row.name for row in first.rows) == ["one", "two"]
    cursor = Cursor(first.store_id, first.seq, first.generation, first.run_cursor)
    assert len(first.rows) == 2
    assert [row.name for row in first.rows[::-1]] == [first.rows[1].name, first.rows[0].name]
    unchanged = store.read(cursor, now_ns=T0, instance_ttl_ns=TTL)
    assert (unchanged.rows, unchanged.runs, unchanged.open_runs) == ((), (), None)
    write(store, instance("a"), change("two", failure=1, runs=[run(T0 + 5, 1, "unknown")]))
    moved = store.read(cursor, now_ns=T0, instance_ttl_ns=TTL)
    assert [row.name for row in moved.rows] == ["two"]
    assert [name for name, _ in moved.runs] == ["two"]
    assert not moved.reset


def test_a_reader_that_fell_behind_many_writes_reads_every_run(make_store: StoreFactory) -> None:
    # A store may keep the latest writes together for readers that keep up (Redis keeps
    # 256): one that read last long ago still gets every run, from each job's own.
    store = make_store()
    a = instance("a")
    write(store, a, change("busy", success=1, runs=[run(T0, 1)]), change("calm"))
    first = store.read(None, now_ns=T0, instance_ttl_ns=TTL)
    cursor = Cursor(first.store_id, first.seq, first.generation, first.run_cursor)
    for index in range(1, 301):
        starts = [T0 + index * S, T0 + index * S + 1]
        write(store, a, change("busy", success=2, runs=[run(start, 1) for start in starts]))
    write(store, a, change("calm", failure=1, runs=[run(T0 + 999 * S, 1, "network")]))
    later = store.read(cursor, now_ns=T0, instance_ttl_ns=TTL)
    runs = stored_runs(later)
    assert [run[1] for run in runs if run[0] == "busy"] == [
        T0 + index * S + offset for index in range(1, 301) for offset in (0, 1)
    ]
    assert [(run[0], run[4]) for run in runs if run[0] == "calm"] == [("calm", "network")]


def test_a_dead_instances_runs_are_closed_once_as_lost(make_store: StoreFactory) -> None:
    store = make_store()
    write(store, instance("dying"), change(open_runs=((7, T0 - 5 * S),), stall_after_ns=300 * S))
    read = store.read(None, now_ns=T0, instance_ttl_ns=TTL)
    assert [(r.instance, r.run_id) for r in read.open_runs or ()] == [("dying", 7)]
    # Not yet dead: nothing happens.
    write(store, instance("a"), now_ns=T0 + TTL - 1)
    write(store, instance("b"), now_ns=T0 + TTL - 1)
    assert rows(store)["job"].failure_count == 0
    # Two survivors notice it, one after the other: the run is closed once.
    later = T0 + TTL + 1
    write(make_store(), instance("a"), now_ns=later)
    write(make_store(), instance("b"), now_ns=later + S)
    row = rows(store, later)["job"]
    assert row.failure_count == 1
    assert row.last_error_category == "lost"
    assert "dying" in (row.last_error or "")
    read = store.read(None, now_ns=later, instance_ttl_ns=TTL)
    assert [(category, duration) for *_, duration, _, category in stored_runs(read)] == [
        ("lost", later - (T0 - 5 * S))
    ]
    assert not read.open_runs
    assert {i.id: i.alive for i in read.instances} == {"dying": False, "a": True, "b": True}


def test_a_run_lost_while_its_instance_seemed_dead_counts_once(make_store: StoreFactory) -> None:
    store = make_store()
    slow, judge = instance("slow"), instance("judge")
    started = T0 - 5 * S
    write(store, slow, change(open_runs=((7, started), (8, started + 1)), stall_after_ns=TTL))
    write(store, judge, now_ns=T0 + TTL - 1)
    write(store, judge, now_ns=T0 + TTL + 1)  # slow was not seen for longer than the ttl
    assert rows(store, T0 + TTL + 1)["job"].failure_count == 2
    # It was only slow (stopped by a debugger, say): it comes back, says one of the two runs
    # ended well and that another began, and still has the second one in progress.
    back = T0 + TTL + 2 * S
    result = store.write(
        slow,
        [
            change(
                success=2,
                total_duration_ns=(back - started) + 3,
                runs=[run(started, back - started), run(back - 3, 3)],
                open_runs=((8, started + 1),),
                last_start_ns=back - 3,
            )
        ],
        now_ns=back,
        instance_ttl_ns=TTL,
        margin_ns=MARGIN,
    )
    assert result.revived
    row = rows(store, back)["job"]
    # The run closed as lost stays lost; only the run that began since is added.
    assert (row.success_count, row.failure_count) == (1, 2)
    read = store.read(None, now_ns=back, instance_ttl_ns=TTL)
    assert [(start, category) for _, start, _, _, category in stored_runs(read)] == [
        (started, "lost"),
        (started + 1, "lost"),
        (back - 3, None),
    ]
    # Its second run shows as running again; if it dies now, that run is not lost twice.
    assert [(r.instance, r.run_id) for r in read.open_runs or ()] == [("slow", 8)]
    write(store, judge, now_ns=back + S)
    write(store, judge, now_ns=back + 2 * S)
    write(store, judge, now_ns=back + TTL + S)
    write(store, judge, now_ns=back + TTL + 2 * S)
    assert rows(store, back + TTL + 2 * S)["job"].failure_count == 2
    read = store.read(None, now_ns=back + TTL + 2 * S, instance_ttl_ns=TTL)
    assert not read.open_runs


def test_runs_of_one_job_that_started_at_the_same_time_are_each_lost_once(
    make_store: StoreFactory,
) -> None:
    # Two runs of a job begun in the same clock tick (a coarse clock, tasks started together):
    # each is a run of its own when its instance dies, and when it comes back.
    store = make_store()
    slow, judge = instance("slow"), instance("judge")
    started = T0 - 5 * S
    write(store, slow, change(open_runs=((7, started), (8, started)), stall_after_ns=TTL))
    write(store, judge, now_ns=T0 + TTL - 1)
    write(store, judge, now_ns=T0 + TTL + 1)
    assert rows(store, T0 + TTL + 1)["job"].failure_count == 2
    read = store.read(None, now_ns=T0 + TTL + 1, instance_ttl_ns=TTL)
    assert [(start, category) for _, start, _, _, category in stored_runs(read)] == [
        (started, "lost"),
        (started, "lost"),
    ]
    # It was only slow: one of the two ends, the other is still in progress, then ends too.
    back = T0 + TTL + 2 * S
    one = change(success=1, total_duration_ns=back - started, runs=[run(started, back - started)])
    one.open_runs = ((8, started),)
    assert store.write(slow, [one], now_ns=back, instance_ttl_ns=TTL, margin_ns=MARGIN).revived
    assert rows(store, back)["job"].failure_count == 2
    later = back + S
    other = change(
        success=1, total_duration_ns=later - started, runs=[run(started, later - started)]
    )
    other.open_runs = ()
    write(store, slow, other, now_ns=later)
    row = rows(store, later)["job"]
    assert (row.success_count, row.failure_count) == (0, 2)  # each counted once, as lost
    assert len(stored_runs(store.read(None, now_ns=later, instance_ttl_ns=TTL))) == 2


def test_the_real_end_of_a_lost_run_leaves_the_last_success_and_extremes_alone(
    make_store: StoreFactory,
) -> None:
    # docs/store.md: the real end of a run closed as lost is left out of the counts, the
    # history and the last-run fields; the instance's change still carried it in its own
    # last success and extremes.
    store = make_store()
    slow, judge = instance("slow"), instance("judge")
    started = T0 - 5 * S
    write(store, slow, change(open_runs=((7, started),), stall_after_ns=TTL))
    write(store, judge, now_ns=T0 + TTL - 1)
    closed = T0 + TTL + 1
    write(store, judge, now_ns=closed)
    back = T0 + 3600 * S  # it was stopped for an hour, its run went on meanwhile
    real = run(started, back - started)
    ended = change(
        success=1,
        total_duration_ns=real.duration_ns,
        runs=[real],
        min_ns=real.duration_ns,
        max_ns=real.duration_ns,
        last_success_ns=back,
    )
    ended.open_runs = ()
    assert store.write(slow, [ended], now_ns=back, instance_ttl_ns=TTL, margin_ns=MARGIN).revived
    row = rows(store, back)["job"]
    assert (row.success_count, row.failure_count) == (0, 1)
    assert row.last_success_ns is None  # no run of it succeeded, as far as the fleet counts
    assert row.min_ns == row.max_ns == closed - started  # the lost run's duration


def test_a_run_another_process_of_the_host_ended_for_a_dead_one_is_not_lost_too(
    make_store: StoreFactory,
) -> None:
    # A prefork child killed by a hard time limit: its parent records the run (ran_in names
    # the child's pid); the run the child left open is that run, not a second one, lost.
    store = make_store()
    child, parent = instance("child"), instance("parent")
    started = T0 - 5 * S
    write(store, child, change(open_runs=((9, started),), stall_after_ns=TTL), now_ns=T0)
    write(store, parent, now_ns=T0)
    killed = run(started, 5 * S + 1, "time_limit")
    write(store, parent, change(failure=1, runs=[killed], ran_in=(child.pid,)), now_ns=T0 + 1)
    read = store.read(None, now_ns=T0 + 1, instance_ttl_ns=TTL)
    assert not read.open_runs
    for second in range(1, TTL // S + 3):  # the child is found dead: nothing is left open
        write(store, parent, now_ns=T0 + second * S)
    row = rows(store, T0 + (TTL // S + 2) * S)["job"]
    assert (row.failure_count, row.last_error_category) == (1, "time_limit")
    read = store.read(None, now_ns=T0 + (TTL // S + 2) * S, instance_ttl_ns=TTL)
    assert [run[4] for run in stored_runs(read)] == ["time_limit"]


def test_an_instance_back_from_an_absence_judges_the_others_at_its_next_write(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    a, b = instance("a"), instance("b")
    write(store, b, change(open_runs=((1, T0),), stall_after_ns=TTL))
    write(store, a)
    # Nothing could write for a minute (the store was out, the host slept, the clock
    # stepped): b is not taken for dead by the first write after it.
    write(store, a, now_ns=T0 + 60 * S)
    assert rows(store, T0 + 60 * S)["job"].failure_count == 0
    # b writes again: it was alive.
    write(store, b, now_ns=T0 + 60 * S + 1)
    write(store, a, now_ns=T0 + 61 * S)
    assert rows(store, T0 + 61 * S)["job"].failure_count == 0
    # b is silent from here on: dead once a has seen a ttl go by without it. A new instance's
    # first write does not judge.
    write(store, instance("c"), now_ns=T0 + 75 * S)
    for second in range(62, 71):
        write(store, a, now_ns=T0 + second * S)
    assert rows(store, T0 + 70 * S)["job"].failure_count == 0
    write(store, a, now_ns=T0 + 71 * S)  # b was last seen more than a ttl ago
    assert rows(store, T0 + 71 * S)["job"].failure_count == 1


def test_a_stopped_instance_is_dead_at_once(make_store: StoreFactory) -> None:
    store = make_store()
    write(store, instance("a"), change(open_runs=((1, T0),)))
    store.write(instance("a"), [], now_ns=T0, instance_ttl_ns=TTL, margin_ns=MARGIN, stopping=True)
    write(store, instance("b"), now_ns=T0 + 1)
    assert rows(store)["job"].failure_count == 1


def beat(store: Store, who: Instance, now_ns: int, store_id: str | None = None) -> bool:
    if store_id is None:
        store_id = store.read(None, now_ns=now_ns, instance_ttl_ns=TTL).store_id
    return store.beat(
        who, now_ns=now_ns, instance_ttl_ns=TTL, margin_ns=MARGIN, expected_store_id=store_id
    )


def seen(store: Store, now_ns: int) -> dict[str, int]:
    read = store.read(None, now_ns=now_ns, instance_ttl_ns=TTL)
    return {found.id: found.last_seen_ns for found in read.instances}


def test_a_heartbeat_alone_reads_no_row_and_moves_no_seq(make_store: StoreFactory) -> None:
    idle, busy = make_store(), make_store()
    write(idle, instance("idle"))
    write(busy, instance("busy"), change(success=1, runs=[run(T0, 5)]))
    known = idle._known.seq  # type: ignore[attr-defined]
    assert beat(idle, instance("idle"), T0 + S)
    assert idle._known.seq == known  # type: ignore[attr-defined]  # busy's row not read
    assert seen(busy, T0 + S) == {"idle": T0 + S, "busy": T0}
    read = busy.read(None, now_ns=T0 + S, instance_ttl_ns=TTL)
    assert read.seq == 1  # busy's write alone: readers have nothing new to read
    # A heartbeat never moves the one stored back (a late one, after a later write).
    write(idle, instance("idle"), now_ns=T0 + 3 * S)
    assert beat(idle, instance("idle"), T0 + 2 * S)
    assert seen(busy, T0 + 3 * S)["idle"] == T0 + 3 * S
    # The next write reads what it missed.
    write(idle, instance("idle"), change(success=1, runs=[run(T0 + 4 * S, 5)]), now_ns=T0 + 4 * S)
    assert rows(busy, T0 + 4 * S)["job"].success_count == 2


def test_a_heartbeat_is_refused_where_a_write_would_close_an_instance(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    assert not beat(store, instance("a"), T0, store_id="")  # no store yet: no id to expect
    write(store, instance("dying"), change(open_runs=((7, T0),), stall_after_ns=300 * S))
    assert not beat(store, instance("a"), T0)  # never written: its first write is whole
    write(store, instance("a"))
    assert beat(store, instance("a"), T0 + TTL - S)  # "dying" is alive still
    assert seen(store, T0 + TTL - S)["a"] == T0 + TTL - S
    assert not beat(store, instance("a"), T0 + TTL + 1)  # dead: its run is to be closed
    assert rows(store, T0 + TTL + 1)["job"].failure_count == 0  # nothing was written
    assert seen(store, T0 + TTL + 1)["a"] == T0 + TTL - S
    write(store, instance("a"), now_ns=T0 + TTL + 1)
    assert rows(store, T0 + TTL + 1)["job"].failure_count == 1  # lost
    assert beat(store, instance("a"), T0 + TTL + 2)  # closed already: nothing to do
    write(store, instance("b"), now_ns=T0 + TTL + 2)
    store.write(
        instance("b"), [], now_ns=T0 + TTL + 3, instance_ttl_ns=TTL, margin_ns=MARGIN, stopping=True
    )
    assert not beat(store, instance("a"), T0 + TTL + 4)  # stopped: to be closed at once
    assert not beat(store, instance("b"), T0 + TTL + 4)  # stopped itself
    assert not beat(store, instance("a"), T0 + TTL + 4, store_id="another")


def test_a_heartbeat_is_refused_for_an_instance_taken_for_dead(make_store: StoreFactory) -> None:
    store = make_store()
    write(store, instance("slow"), change(open_runs=((1, T0),), stall_after_ns=300 * S))
    write(store, instance("judge"), now_ns=T0 + TTL)
    write(store, instance("judge"), now_ns=T0 + TTL + 1)  # closes "slow"
    assert not beat(store, instance("slow"), T0 + TTL + 2)
    result = store.write(
        instance("slow"), [], now_ns=T0 + TTL + 2, instance_ttl_ns=TTL, margin_ns=MARGIN
    )
    assert result.revived
    assert beat(store, instance("slow"), T0 + TTL + 3)


def test_a_heartbeat_is_refused_once_a_slot_is_past_its_grace_and_the_margin(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    slot = T0 + 60 * S
    hourly = {"schedule": "@every 1h"}
    write(store, instance("a"), change(settings=hourly, next_run=(slot, 5 * S)))
    due = slot + 5 * S + MARGIN  # what a write counts as overdue from
    assert beat(store, instance("a"), due - 1_000_001)
    assert not beat(store, instance("a"), due)
    assert rows(store, due)["job"].missed_count == 0  # the write counts it
    write(store, instance("a"), now_ns=due)
    row = rows(store, due)["job"]
    assert (row.missed_count, row.next_run_ns) == (1, slot + 3600 * S)
    assert beat(store, instance("a"), due + S)  # its next slot is an hour away
    write(store, instance("a"), change(next_run=(None, 0)), now_ns=due + 2 * S)  # unscheduled
    assert beat(store, instance("a"), due + 7200 * S)


def test_a_slot_missed_while_nothing_ran_is_counted_once(make_store: StoreFactory) -> None:
    store = make_store()
    hourly = {"schedule": "@hourly", "timezone": "UTC"}
    slot = T0 - T0 % (3600 * S) + 3600 * S
    write(
        store,
        instance("old"),
        change(settings=hourly, last_start_ns=slot - 3600 * S, next_run=(slot, 60 * S)),
    )
    # Three hours and a half later two new instances write: slot, slot+1h, slot+2h, slot+3h.
    now = slot + 3 * 3600 * S + 1800 * S
    write(make_store(), instance("a"), now_ns=now)
    write(make_store(), instance("b"), now_ns=now + S)
    row = rows(store, now)["job"]
    assert row.missed_count == 4
    assert row.last_missed_ns == slot + 3 * 3600 * S
    assert row.next_run_ns == slot + 4 * 3600 * S
    # An instance reporting one of those slots itself does not count it again.
    write(store, instance("a"), change(missed=1, last_missed_ns=slot + 3 * 3600 * S), now_ns=now)
    assert rows(store, now)["job"].missed_count == 4


def test_interval_slots_reported_by_two_instances_count_once(make_store: StoreFactory) -> None:
    store = make_store()
    every = {"schedule": "@every 1m"}
    write(store, instance("a"), change(settings=every, missed=1, last_missed_ns=T0 + 300_000))
    write(store, instance("b"), change(settings=every, missed=1, last_missed_ns=T0 + 900_000))
    assert rows(store)["job"].missed_count == 1
    write(store, instance("b"), change(missed=1, last_missed_ns=T0 + 60 * S))
    assert rows(store)["job"].missed_count == 2


def test_a_run_in_progress_anywhere_keeps_slots_from_counting(make_store: StoreFactory) -> None:
    store = make_store()
    write(
        store,
        instance("a"),
        change(settings={"schedule": "@every 1m"}, next_run=(T0 + 60 * S, 6 * S)),
    )
    write(store, instance("a"), change(open_runs=((1, T0 - S),)))
    write(store, instance("a"), now_ns=T0 + 120 * S)
    row = rows(store, T0 + 120 * S)["job"]
    assert row.missed_count == 0
    assert row.next_run_ns is not None
    assert row.next_run_ns > T0 + 60 * S


def test_a_different_registration_from_another_instance_is_a_conflict(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    ok = store.write(
        instance("a"),
        [change(settings={"critical": True})],
        now_ns=T0,
        instance_ttl_ns=TTL,
        margin_ns=MARGIN,
    )
    same = store.write(
        instance("b"),
        [change(settings={"critical": True})],
        now_ns=T0,
        instance_ttl_ns=TTL,
        margin_ns=MARGIN,
    )
    other = store.write(
        instance("c"),
        [change(settings={"critical": False})],
        now_ns=T0,
        instance_ttl_ns=TTL,
        margin_ns=MARGIN,
    )
    assert (ok.conflicts, same.conflicts, other.conflicts) == ((), (), ("job",))
    assert rows(store)["job"].settings == {"critical": False}


def test_prune_drops_old_history_dead_instances_and_idle_jobs(make_store: StoreFactory) -> None:
    store = make_store()
    day = 24 * 3600 * S
    write(store, instance("gone"), change("idle", success=1, runs=[run(T0, S)]))
    store.write(
        instance("gone"), [], now_ns=T0, instance_ttl_ns=TTL, margin_ns=MARGIN, stopping=True
    )
    write(
        store,
        instance("a"),
        change("daily", settings={"schedule": "@daily", "timezone": "UTC"}, runs=[run(T0, S)]),
        now_ns=T0,
    )
    before = store.read(None, now_ns=T0, instance_ttl_ns=TTL)
    store.prune(now_ns=T0 + 2 * day, history_ns=day, retention_ns=day)
    after = store.read(None, now_ns=T0 + 2 * day, instance_ttl_ns=TTL)
    assert after.generation == before.generation + 1
    assert [row.name for row in after.rows] == ["daily"]  # a scheduled job stays
    assert after.runs == []
    assert [i.id for i in after.instances] == ["a"]


def test_prune_drops_instances_that_stopped_cleanly_after_an_hour(
    make_store: StoreFactory,
) -> None:
    """A crontab line checking in every minute is an instance a minute: once stopped and
    closed by another writer, each is listed for an hour, not for the retention. One taken
    for dead (closed, never stopped) stays for the retention."""
    store = make_store()
    day, hour = 24 * 3600 * S, 3600 * S
    for who in ("stopped", "crashed"):
        write(store, instance(who), change(success=1), now_ns=T0)
    store.write(
        instance("stopped"), [], now_ns=T0, instance_ttl_ns=TTL, margin_ns=MARGIN, stopping=True
    )
    # A later writer closes the stopped instance and the one silent past the ttl.
    write(store, instance("next"), change(success=1), now_ns=T0 + TTL + S)
    listed = {i.id for i in store.read(None, now_ns=T0 + TTL + S, instance_ttl_ns=TTL).instances}
    assert listed == {"stopped", "crashed", "next"}
    write(store, instance("next"), change(success=1), now_ns=T0 + hour + 2 * S)
    # Stopped after that write: not closed yet (its runs may still be to close), so kept.
    store.write(
        instance("late"), [], now_ns=T0, instance_ttl_ns=TTL, margin_ns=MARGIN, stopping=True
    )
    store.prune(now_ns=T0 + hour + 2 * S, history_ns=day, retention_ns=day)
    after = store.read(None, now_ns=T0 + hour + 2 * S, instance_ttl_ns=TTL)
    assert {i.id for i in after.instances} == {"crashed", "late", "next"}


def test_runs_said_to_end_in_the_future_leave_with_their_write(make_store: StoreFactory) -> None:
    store = make_store()
    day = 24 * 3600 * S
    ahead = run(T0 + 30 * day, S)  # a clock far ahead, or a run recorded with a bad end
    write(store, instance("a"), change("job", success=2, runs=[run(T0, S), ahead]), now_ns=T0)
    store.prune(now_ns=T0 + 2 * day, history_ns=day, retention_ns=30 * day)
    assert store.read(None, now_ns=T0 + 2 * day, instance_ttl_ns=TTL).runs == []


def test_a_job_pruned_and_written_again_starts_anew(make_store: StoreFactory) -> None:
    store = make_store()
    day = 24 * 3600 * S
    write(store, instance("a"), change("idle", success=3))
    store.prune(now_ns=T0 + 2 * day, history_ns=day, retention_ns=day)
    write(store, instance("a"), change("idle", success=1), now_ns=T0 + 2 * day)
    assert rows(store, T0 + 2 * day)["idle"].success_count == 1


def test_a_write_that_fails_midway_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path)
    try:
        write(store, instance("a"), change(success=1, runs=[run(T0, 1)]))
        with sqlite3.connect(path) as other:
            other.execute(
                "CREATE TRIGGER full BEFORE INSERT ON run_writes"
                " BEGIN SELECT RAISE(ABORT, 'full'); END"
            )
        # The job's row is updated before the runs are inserted: the failure rolls back both.
        failing = change(failure=1, runs=[run(T0 + 10, 1, "network")])
        with pytest.raises(sqlite3.IntegrityError, match="full"):
            write(store, instance("a"), failing)
        with sqlite3.connect(path) as other:
            other.execute("DROP TRIGGER full")
        write(store, instance("a"), failing)  # the publisher writes the same change again
        row = rows(store)["job"]
        assert (row.success_count, row.failure_count) == (1, 1)
        assert row.consecutive_failures == 1
        # The failed write's new category was given back with it, and given again.
        read = SQLiteStore(path).read(None, now_ns=T0, instance_ttl_ns=TTL)
        assert [category for *_, category in stored_runs(read)] == [None, "network"]
    finally:
        store.close()


def test_open_creates_the_folder_and_a_wal_database(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "jobs.db"
    store = open_store(f"sqlite:///{path}")  # absolute: four slashes
    try:
        assert path.exists()
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        store.close()


def test_a_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///state/jobs.db")
    store.close()
    assert (tmp_path / "state" / "jobs.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://user:hunter2@db/jobs", "unsupported URL scheme 'postgres'"),
        ("sqlite://host/jobs.db", "has no host"),
        ("sqlite:///", "expected a file path"),
        ("sqlite:/u:pw@h", "expected sqlite:///relative.db"),
        ("sqlite:///jobs.db?mode=ro", "expected a file path"),
        ("jobs.db", r"unsupported URL scheme '\(none\)'"),
    ],
)
def test_a_bad_url_is_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)


def test_a_store_that_is_not_a_url_or_a_store_is_refused() -> None:
    with pytest.raises(StoreError, match="not int"):
        open_store(42)  # type: ignore[arg-type]


def test_an_unwritable_path_is_refused_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create the folder") as caught:
        open_store(f"sqlite:///{blocker}/jobs.db")
    assert str(blocker) in str(caught.value)


def test_a_corrupted_file_is_refused_naming_its_path(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError) as caught:
        open_store(f"sqlite:///{path}")
    assert str(path) in str(caught.value)


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    sqlite3.connect(path).execute("CREATE TABLE users (id INTEGER)").connection.commit()
    with pytest.raises(StoreError, match="another application's tables"):
        open_store(f"sqlite:///{path}")


def test_a_store_written_by_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(StoreVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
        open_store(f"sqlite:///{path}")


def test_migrations_run_forward_from_the_first_schema(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:
        first = _MIGRATIONS[0]
        assert isinstance(first, str)
        db.executescript(first)
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", "1"), ("store_id", "old"), ("seq", "0"), ("generation", "0")],
        )
    store = SQLiteStore(path)
    store.close()
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        store_id = db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert {"run_writes_end", "jobs_next_run", "lost_runs"} <= indexes
    assert "run_batches" not in indexes
    assert store_id == ("old",)  # the same store, migrated


def as_schema(path: Path, version: int) -> None:
    """Make the store at `path` look as schema `version` left it (its runs tables empty)."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE run_writes")
        db.execute("DROP TABLE lost_runs")
        db.execute("DROP TABLE categories")
        db.execute("ALTER TABLE jobs DROP COLUMN failure_ends")
        db.execute("DELETE FROM meta WHERE key = 'last_job'")
        if version == 3:
            db.execute(
                "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, job INTEGER NOT NULL,"
                " start_ns INTEGER NOT NULL, duration_ns INTEGER NOT NULL,"
                " end_ns INTEGER NOT NULL, category TEXT)"
            )
        else:
            db.execute(
                "CREATE TABLE run_batches (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " job INTEGER NOT NULL, end_ns INTEGER NOT NULL, runs TEXT NOT NULL)"
            )
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))


def test_runs_of_schema_3_are_kept_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path)
    write(store, instance("a"), change("one"), change("two"))
    store.close()
    hour = 3600 * S
    odd = 123_456_789_012_345_679
    old_runs = [  # (job, start, duration, end, category) as schema 3 held them, by id
        (1, T0, odd, T0 + odd, None),
        (2, T0 + 1, 5, T0 + 6, "network"),
        (1, T0 + hour, 7, T0 + hour + 7, "timeout"),
        (1, T0 + hour + 9, 1, T0 + hour + 10, None),
    ]
    as_schema(path, 3)
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO runs (job, start_ns, duration_ns, end_ns, category)"
            " VALUES (?, ?, ?, ?, ?)",
            old_runs,
        )
    store = SQLiteStore(path)
    try:
        read = store.read(None, now_ns=T0, instance_ttl_ns=TTL)
    finally:
        store.close()
    names = {1: "one", 2: "two"}
    assert sorted(stored_runs(read)) == sorted((names[job], *fields) for job, *fields in old_runs)
    # In order within each job, one batch per job and hour.
    assert [run[1] for run in stored_runs(read) if run[0] == "one"] == [
        T0,
        T0 + hour,
        T0 + hour + 9,
    ]
    assert len(read.runs) == 3
    with sqlite3.connect(path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert not {"runs", "run_batches"} & tables


def test_batches_of_schema_4_are_kept_and_job_ids_not_given_again(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path)
    write(store, instance("a"), change("one"), change("two"), change("three"))
    store.close()
    odd = 123_456_789_012_345_679
    batches = [  # (job, end, runs) as schema 4 held them, by id
        (1, T0 + odd, [[T0, odd, T0 + odd, None]]),
        (3, T0 + 6, [[T0 + 1, 5, T0 + 6, "network"], [T0 + 2, 4, T0 + 6, None]]),
        (1, T0 + odd + 9, [[T0 + odd, 9, T0 + odd + 9, "timeout"]]),
    ]
    as_schema(path, 4)
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO run_batches (job, end_ns, runs) VALUES (?, ?, json(?))",
            [(job, end, json.dumps(runs)) for job, end, runs in batches],
        )
        db.execute("DELETE FROM jobs WHERE name = 'three'")  # the last id given
    store = SQLiteStore(path)
    try:
        read = store.read(None, now_ns=T0, instance_ttl_ns=TTL)
        # The runs of a job pruned since are not read; those of the others are, in order.
        assert stored_runs(read) == [
            ("one", T0, odd, T0 + odd, None),
            ("one", T0 + odd, 9, T0 + odd + 9, "timeout"),
        ]
        write(store, instance("a"), change("four", success=1, runs=[run(T0 + 7, 1)]))
        read = store.read(None, now_ns=T0, instance_ttl_ns=TTL)
        # A new job's id is not the pruned one's: none of its runs is taken for the new job's.
        assert [run for run in stored_runs(read) if run[0] == "four"] == [
            ("four", T0 + 7, 1, T0 + 8, None)
        ]
    finally:
        store.close()


def test_a_deleted_file_becomes_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path)
    try:
        first = store.write(
            instance("a"), [change(success=1)], now_ns=T0, instance_ttl_ns=TTL, margin_ns=MARGIN
        )
        for leftover in tmp_path.glob("jobs.db*"):
            leftover.unlink()
        refused = store.write(
            instance("a"),
            [change(success=1)],
            now_ns=T0,
            instance_ttl_ns=TTL,
            margin_ns=MARGIN,
            expected_store_id=first.store_id,
        )
        assert not refused.applied
        assert refused.store_id != first.store_id
        assert path.exists()
        assert list(store.read(None, now_ns=T0, instance_ttl_ns=TTL).rows) == []
    finally:
        store.close()


def test_opening_waits_for_another_process_making_the_new_files_tables(tmp_path: Path) -> None:
    # Two workers starting on a new file: the second waited 1 s at most, then its monitor
    # raised "database is locked" at construction.
    path = tmp_path / "jobs.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # as the first process, making the tables
    opened: list[SQLiteStore] = []
    failed: list[BaseException] = []

    def open_it() -> None:
        try:
            opened.append(SQLiteStore(path))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    opening = threading.Thread(target=open_it)
    opening.start()
    try:
        opening.join(timeout=1.5)  # past the 1 s a write waits for the lock
        assert opening.is_alive(), failed
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    opening.join(timeout=30)
    assert not failed
    (store,) = opened
    try:
        write(store, instance("a"), change(success=1))
        assert rows(store)["job"].success_count == 1
    finally:
        store.close()


def test_a_file_restored_from_an_older_copy_is_read_again_whole(tmp_path: Path) -> None:
    # Same store id, a lower seq: a reader that read the later writes must not keep them.
    path, copy = tmp_path / "jobs.db", tmp_path / "copy.db"
    writer, reader = SQLiteStore(path), SQLiteStore(path)
    try:
        write(writer, instance("a"), change("kept", success=1))
        backup = sqlite3.connect(copy)
        with closing(sqlite3.connect(path)) as source:
            source.backup(backup)
        backup.close()
        write(writer, instance("a"), change("gone", success=1))
        first = reader.read(None, now_ns=T0, instance_ttl_ns=TTL)
        assert {row.name for row in first.rows} == {"kept", "gone"}
        writer.close()
        for leftover in tmp_path.glob("jobs.db*"):
            leftover.unlink()
        copy.rename(path)
        cursor = Cursor(first.store_id, first.seq, first.generation, first.run_cursor)
        again = reader.read(cursor, now_ns=T0, instance_ttl_ns=TTL)
        assert again.reset
        assert {row.name for row in again.rows} == {"kept"}
    finally:
        writer.close()
        reader.close()


def test_a_writer_forgets_the_ids_of_jobs_pruned_since(tmp_path: Path) -> None:
    # A service whose job names come and go (one per customer, say) prunes each idle one
    # after `retention`: the writer's map of job ids to names must not keep them all.
    store = SQLiteStore(tmp_path / "jobs.db")
    day = 24 * 3600 * S
    try:
        for index in range(50):
            now_ns = T0 + index * 2 * day
            write(store, instance("a"), change(f"job-{index}", success=1), now_ns=now_ns)
            store.prune(now_ns=now_ns + 2 * day, history_ns=day, retention_ns=day)
        write(store, instance("a"), change("last"), now_ns=T0 + 101 * day)
        assert sorted(store._known.names.values()) == ["last"]
    finally:
        store.close()


def test_a_store_that_has_given_every_category_code_still_takes_runs_of_a_new_one(
    tmp_path: Path,
) -> None:
    # A run's category is kept as a 16-bit code, and codes are never given back: past the
    # last code, a run of a new category made every write of its instance fail for good.
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path)
    try:
        with sqlite3.connect(path) as db:
            db.executemany(
                "INSERT INTO categories (name) VALUES (?)",
                [("unknown",), *((f"category_{index}",) for index in range(0xFFFE))],
            )
        write(store, instance("a"), change(failure=1, runs=[run(T0, S, "brand_new")]))
        write(store, instance("a"), change(failure=1, runs=[run(T0 + S, S, "category_7")]))
        read = store.read(None, now_ns=T0, instance_ttl_ns=TTL)
    finally:
        store.close()
    assert [category for *_, category in stored_runs(read)] == ["unknown", "category_7"]
