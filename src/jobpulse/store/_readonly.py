"""A store opened to be read only, and the fleet's view of it: what ``jobpulse status`` and
``jobpulse history`` read.

A reader registers no instance, sends no heartbeat and writes nothing: it does not even make
a SQLite file that does not exist (``open_store(url, read_only=True)`` raises `StoreError`
then). A SQLite file is opened with SQLite's read-only mode; SQLite may leave its ``-wal``
and ``-shm`` companions next to the file when such a connection closes, which the next
writer uses or removes. Opening and reading a Redis store write nothing anyway: it is
opened as a writer would open it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any, TypeVar

from jobpulse._shared import Clock, JobStatus, RunRecord, StoreError, StoreVersionError
from jobpulse.store._base import Instance, JobChange, Store, WriteResult
from jobpulse.store._fleet import FleetView
from jobpulse.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = ["FleetReader", "ReadOnlySQLiteStore", "refuse_writes"]

T = TypeVar("T")


def refuse_writes(url: str) -> StoreError:
    return StoreError(f"store {url} was opened read-only: nothing may be written to it")


class ReadOnlySQLiteStore(SQLiteStore):
    """A `SQLiteStore` that only reads: its file must exist and be a store of a schema this
    version reads (else `StoreError`, or `StoreVersionError` for a newer one); it is opened
    in SQLite's read-only mode and never created, migrated or written."""

    def _open(self) -> None:
        if not self.path.is_file():
            raise StoreError(
                f"store {self.url}: no such file {self.path} (a reader does not create it; "
                "the first process that writes to the store does)"
            )
        self._reader, self._reader_identity = self._connect(create=False)
        try:
            version = self._schema_version(self._reader)
        except StoreError as exc:  # another application's tables
            self.close()
            raise StoreError(f"store {self.url}: {exc}") from None
        except sqlite3.Error as exc:
            self.close()
            raise self._fail(f"{self.path} is not a usable SQLite database", exc) from None
        if version != SCHEMA_VERSION:
            self.close()
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"store {self.url}: written by a newer jobpulse (schema version {version}; "
                    f"this version reads up to {SCHEMA_VERSION}); upgrade jobpulse to read it"
                )
            raise StoreError(
                f"store {self.url}: "
                + (
                    "the file is empty (not a store yet: no process has written to it)"
                    if version == 0
                    else f"schema version {version} is older than this version's "
                    f"{SCHEMA_VERSION}; a process of this version that writes to the store "
                    "brings it up to date"
                )
            )

    def _connect(self, *, create: bool) -> tuple[sqlite3.Connection, tuple[int, int]]:
        try:
            connection = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=1.0,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._fail(f"cannot open {self.path}", exc) from None
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            connection.close()
            raise self._fail(f"cannot open {self.path}", exc) from None
        return connection, (stat.st_dev, stat.st_ino)

    def write(self, instance: Instance, changes: Sequence[JobChange], **_: Any) -> WriteResult:
        raise refuse_writes(self.url)

    def beat(self, instance: Instance, **_: Any) -> bool:
        raise refuse_writes(self.url)

    def prune(self, **_: Any) -> None:
        raise refuse_writes(self.url)

    def __repr__(self) -> str:
        return f"ReadOnlySQLiteStore({self.url!r})"


class FleetReader:
    """The fleet's view of the store at `url`, read only (see the module's docstring):
    what `jobpulse.JobMonitor` answers with a store, without being an instance of it.

    Every call reads what changed in the store since the last one (`refresh_interval` 0),
    and judges the jobs by `clock` (running, stalled and missed change with time alone).
    Raises `StoreError` (naming the URL without its password) when the store cannot be
    opened or read. Thread-safe; `close` it when done.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "",
        service: str = "unknown_service",
        clock: Clock | None = None,
        instance_ttl: float = 10.0,
        stall_after: float = 300.0,
        max_history: int = 4096,
    ) -> None:
        from jobpulse.store import open_store

        self.store: Store = open_store(url, namespace=namespace, service=service, read_only=True)
        self._fleet = FleetView(
            self.store,
            clock or Clock(),
            refresh_interval=0.0,
            instance_ttl=instance_ttl,
            default_stall_after=stall_after,
            max_history=max_history,
        )

    def statuses(self) -> dict[str, JobStatus]:
        """Every job of the fleet, by name (sorted)."""
        return self._found(self._fleet.snapshots())

    def status(self, name: str) -> JobStatus | None:
        return self._found(self._fleet.snapshot(name))

    def history(self, name: str, limit: int | None = None) -> list[RunRecord]:
        """The job's runs of the last 24 hours, newest first ([] for an unknown job)."""
        return self._found(self._fleet.history(name, limit))

    def instances(self) -> list[Instance]:
        return self._found(self._fleet.instances())

    def _found(self, value: T) -> T:
        """`value`, read from a store that exists: a Redis prefix (service, namespace,
        database) where no process ever wrote reads as an empty fleet, which must not pass
        for a healthy one."""
        cursor = self._fleet.cursor
        if cursor is not None and not cursor.store_id:
            raise StoreError(
                f"{self.store!r} holds no jobpulse store (no process has written there: "
                "check the service name, the namespace and the database)"
            )
        return value

    def close(self) -> None:
        self.store.close()
