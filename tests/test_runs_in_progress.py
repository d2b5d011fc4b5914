"""What the status page shows of the runs not ended yet and of who ran a job:
`JobMonitor._runs_in_progress`, for the process and for the fleet."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from jobpulse import JobMonitor
from jobpulse._monitor import RunInProgress
from jobpulse.testing import FakeClock
from tests.conftest import MakeMonitor, in_own_context, succeed

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def instance_id(monitor: JobMonitor) -> str:
    assert monitor._store is not None
    return monitor._store.publisher.instance.id


def test_the_process_runs_oldest_first_with_the_stalled_marked(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("slow", stall_after=30)
    assert monitor._runs_in_progress("slow") == ("", [])
    assert monitor._runs_in_progress("unknown") == ("", [])
    with in_own_context(monitor.run("slow")):
        clock.advance(31)  # the watchdog's deadline passes: the first run is stalled
        with in_own_context(monitor.run("slow")):
            runner, runs = monitor._runs_in_progress("slow")
    assert runner == ""
    assert runs == [
        RunInProgress(T0, True, ""),
        RunInProgress(T0 + timedelta(seconds=31), False, ""),
    ]
    assert monitor._runs_in_progress("slow") == ("", [])


def test_the_fleet_runs_name_their_instance_and_the_latest_runner(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    worker, other, web = fleet(), fleet(), fleet()
    worker.register("slow", stall_after=30)
    other.register("slow", stall_after=30)
    succeed(other, "slow")
    assert other.flush()
    assert web.flush()  # it reads the store again at once
    assert web._runs_in_progress("slow") == (instance_id(other), [])
    assert web._runs_in_progress("unknown") == ("", [])
    with worker.run("slow"):
        assert worker.flush()
        clock.advance(31)
        with other.run("slow"):
            assert worker.flush()
            assert other.flush()
            assert web.flush()
            runner, runs = web._runs_in_progress("slow")
    assert runner == instance_id(other)  # it started the latest run
    assert runs == [
        RunInProgress(T0, True, instance_id(worker)),
        RunInProgress(T0 + timedelta(seconds=31), False, instance_id(other)),
    ]
    assert worker.flush()
    assert other.flush()
    assert web.flush()
    assert web._runs_in_progress("slow") == (instance_id(other), [])


def test_a_store_that_cannot_be_read_gives_the_process_runs(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    monitor = fleet()
    link = monitor._store
    assert link is not None

    def broken(name: str) -> tuple[str, list[tuple[int, bool, str]]]:
        raise ConnectionError("store down")

    link.fleet.runs_in_progress = broken  # type: ignore[method-assign]
    with monitor.run("job"):
        assert monitor._runs_in_progress("job") == (
            "",
            [RunInProgress(T0, False, instance_id(monitor))],
        )
