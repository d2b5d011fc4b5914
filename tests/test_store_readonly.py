"""A store opened read only (`open_store(read_only=True)`, `FleetReader`): what ``jobpulse
status`` reads. It sees what the writers wrote, and writes nothing: no instance, no
heartbeat, no file."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis

from jobpulse import JobMonitor, JobState, StoreError, StoreVersionError
from jobpulse.store import SCHEMA_VERSION, SQLiteStore, open_store
from jobpulse.store._base import Instance
from jobpulse.store._readonly import FleetReader, ReadOnlySQLiteStore
from jobpulse.testing import FakeClock
from tests.conftest import succeed


def fail(monitor: JobMonitor, name: str) -> None:
    with pytest.raises(RuntimeError), monitor.run(name):
        raise RuntimeError("disk full: password=hunter2")


OpenReader = Callable[[FakeClock], FleetReader]


@pytest.fixture
def reader(fleet_url: str) -> Iterator[OpenReader]:
    """Opens a reader of the test's store (once the test has written it), closed after."""
    opened: list[FleetReader] = []

    def open_reader(clock: FakeClock) -> FleetReader:
        made = FleetReader(fleet_url, clock=clock, service="app")
        opened.append(made)
        return made

    yield open_reader
    for made in opened:
        made.close()


def write_jobs(url: str, clock: FakeClock) -> None:
    monitor = JobMonitor(store=url, clock=clock, service_name="app")
    try:
        monitor.register("nightly", schedule="@every 1h", critical=True)
        succeed(monitor, "nightly")
        fail(monitor, "reports")
        assert monitor.flush()
    finally:
        monitor.shutdown()


def test_a_reader_sees_what_the_writers_wrote(
    fleet_url: str, clock: FakeClock, reader: OpenReader
) -> None:
    write_jobs(fleet_url, clock)
    fleet = reader(clock)
    statuses = fleet.statuses()
    assert list(statuses) == ["nightly", "reports"]
    assert statuses["nightly"].state is JobState.SUCCESS
    assert statuses["nightly"].critical
    assert statuses["nightly"].schedule == "@every 1h"
    assert statuses["reports"].state is JobState.FAILED
    assert statuses["reports"].last_error == "RuntimeError: disk full: password=***"
    assert fleet.status("nope") is None
    assert [run.outcome for run in fleet.history("reports")] == [JobState.FAILED]
    assert fleet.history("nope") == []
    [writer] = fleet.instances()
    assert (writer.service, writer.stopped) == ("app", True)
    # Time passes for the reader alone: the slot of the hourly job goes by.
    clock.advance(3600 + 400)
    assert fleet.status("nightly").state is JobState.MISSED  # type: ignore[union-attr]


def test_a_reader_registers_no_instance_and_writes_nothing(
    fleet_url: str, clock: FakeClock, reader: OpenReader
) -> None:
    write_jobs(fleet_url, clock)
    before = _contents(fleet_url)
    fleet = reader(clock)
    for _ in range(3):
        fleet.statuses()
        fleet.history("reports")
        clock.advance(5)
    assert len(fleet.instances()) == 1
    assert _contents(fleet_url) == before


def test_a_read_only_sqlite_store_refuses_writes(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    write_jobs(url, clock)
    before = _contents(url)
    store = open_store(url, read_only=True)
    try:
        assert isinstance(store, ReadOnlySQLiteStore)
        assert repr(store) == f"ReadOnlySQLiteStore({url!r})"
        who = Instance("reader", "app", "host", 1, "", 0, 0)
        with pytest.raises(StoreError, match="opened read-only"):
            store.write(who, [], now_ns=0, instance_ttl_ns=1, margin_ns=1)
        with pytest.raises(StoreError, match="opened read-only"):
            store.beat(who, now_ns=0, instance_ttl_ns=1, margin_ns=1, expected_store_id="")
        with pytest.raises(StoreError, match="opened read-only"):
            store.prune(now_ns=0, history_ns=1, retention_ns=1)
    finally:
        store.close()
    assert _contents(url) == before


def _contents(url: str) -> object:
    """Everything the store holds."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = [
                name
                for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            return {
                table: db.execute(f"SELECT * FROM {table}").fetchall()
                for table in tables
                if not table.startswith("sqlite_")
            }
    server, _, prefix = url.partition("?prefix=")
    client = redis.Redis.from_url(server)
    try:
        return {key: client.dump(key) for key in sorted(client.scan_iter(f"{prefix}*"))}
    finally:
        client.close()


def test_a_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "jobs.db"
    with pytest.raises(StoreError, match=r"no such file .*jobs\.db \(a reader does not create"):
        FleetReader(f"sqlite:///{path}")
    assert not path.parent.exists()
    with pytest.raises(StoreError, match="no such file"):
        open_store(f"sqlite:///{tmp_path}/a.db", read_only=True)
    assert os.listdir(tmp_path) == []


def test_files_that_are_not_stores_of_this_schema_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="the file is empty"):
        open_store(f"sqlite:///{empty}", read_only=True)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        open_store(f"sqlite:///{junk}", read_only=True)
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE mine (x)")
    with pytest.raises(StoreError, match="another application's tables"):
        open_store(f"sqlite:///{other}", read_only=True)
    for version, error, match in (
        (SCHEMA_VERSION + 1, StoreVersionError, "newer jobpulse"),
        (SCHEMA_VERSION - 1, StoreError, "older than this version's"),
    ):
        path = tmp_path / f"v{version}.db"
        SQLiteStore(path).close()
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        with pytest.raises(error, match=match):
            open_store(f"sqlite:///{path}", read_only=True)
        with closing(sqlite3.connect(path)) as db:  # left as it was: not migrated
            assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
                str(version),
            )


def test_a_store_file_replaced_under_a_reader_is_read_anew(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "jobs.db"
    url = f"sqlite:///{path}"
    write_jobs(url, clock)
    fleet = FleetReader(url, clock=clock)
    try:
        assert list(fleet.statuses()) == ["nightly", "reports"]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        monitor = JobMonitor(store=url, clock=clock)
        try:
            succeed(monitor, "fresh")
            assert monitor.flush()
        finally:
            monitor.shutdown()
        assert list(fleet.statuses()) == ["fresh"]
        path.unlink()
        with pytest.raises(StoreError, match="cannot open"):
            fleet.statuses()
    finally:
        fleet.close()


def test_a_redis_reader_finds_the_service_by_its_prefix(redis_url: str, clock: FakeClock) -> None:
    namespace = f"ns{uuid.uuid4().hex[:8]}"
    monitor = JobMonitor(store=redis_url, clock=clock, namespace=namespace, service_name="billing")
    try:
        succeed(monitor, "invoices")
        assert monitor.flush()
    finally:
        monitor.shutdown()
    fleet = FleetReader(redis_url, namespace=namespace, service="billing", clock=clock)
    try:
        assert list(fleet.statuses()) == ["invoices"]
    finally:
        fleet.close()
    # Another service's prefix, or another database, holds no store: an error, not an empty
    # (healthy) fleet.
    other_database = redis_url.rsplit("/", 1)[0] + "/5"
    for url, service in ((redis_url, "shipping"), (other_database, "billing")):
        other = FleetReader(url, namespace=namespace, service=service, clock=clock)
        try:
            with pytest.raises(StoreError, match="holds no jobpulse store"):
                other.statuses()
            with pytest.raises(StoreError, match="holds no jobpulse store"):
                other.history("invoices")
            with pytest.raises(StoreError, match="holds no jobpulse store"):
                other.instances()
        finally:
            other.close()
