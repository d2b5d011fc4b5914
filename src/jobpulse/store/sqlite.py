"""The embedded store: one SQLite file in WAL mode, shared by the processes of one host.

Uvicorn and gunicorn workers, Celery's prefork children and a restarted service all open the
same file. Writes are serialized by SQLite (``BEGIN IMMEDIATE``), which makes the claims
that must happen once (closing a dead instance's runs, counting a missed slot) exact; WAL
lets readers read while one process writes. Readers and the writer use connections of their
own, made again in a forked child.

The schema has a version (``meta.schema_version``); `_MIGRATIONS` run forward at open, all
in one transaction. A file written by a newer version is refused with
`StoreVersionError`.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from jobpulse._shared import StoreError, StoreVersionError
from jobpulse.store._base import (
    Cursor,
    FleetRead,
    FleetRow,
    Instance,
    JobChange,
    OpenRun,
    RunFields,
    StoredRun,
    WriteResult,
)
from jobpulse.store._merge import LOST_INSTANCE_ERROR, apply_change, claim_overdue, lost_run

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_HOUR_NS = 3600 * 1_000_000_000
#: A batch: the runs one write brought for one job, as JSON
#: ``[[start_ns, duration_ns, end_ns, category], ...]`` in the order they ended; ``end_ns``
#: is the latest end among them (the batch is pruned once it leaves the history).
_INSERT_BATCH = "INSERT INTO run_batches (job, end_ns, runs) VALUES (?, ?, ?)"
_RUN_FIELDS = operator.itemgetter(0, 1, 2, 3)
_END = operator.itemgetter(2)


def _batch(job: int, runs: Sequence[Sequence[Any]]) -> tuple[int, int, str]:
    """`runs` (start_ns, duration_ns, end_ns, category, ...) of `job` as a run_batches row."""
    return job, max(map(_END, runs)), _encode(list(map(_RUN_FIELDS, runs)))


def _batch_runs(db: sqlite3.Connection) -> None:
    """4: the runs one write brings for a job in one row (a flush's 10,000 runs were 10,000
    rows and most of its time); the runs of schema 3, one row per job and hour."""
    db.execute(
        "CREATE TABLE run_batches (id INTEGER PRIMARY KEY AUTOINCREMENT, job INTEGER NOT NULL,"
        " end_ns INTEGER NOT NULL, runs TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX run_batches_end ON run_batches (end_ns)")
    batches: dict[tuple[int, int], list[tuple[int, int, int, str | None]]] = {}
    for job, start, duration, end, category in db.execute(
        "SELECT job, start_ns, duration_ns, end_ns, category FROM runs ORDER BY id"
    ):
        batches.setdefault((job, end // _HOUR_NS), []).append((start, duration, end, category))
    db.executemany(_INSERT_BATCH, [_batch(job, runs) for (job, _), runs in batches.items()])
    db.execute("DROP TABLE runs")


#: Each migration takes the schema from its index to index + 1: statements, or a function
#: given the connection.
_MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE instances (
        id TEXT PRIMARY KEY, service TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
        version TEXT NOT NULL, started_ns INTEGER NOT NULL, last_seen_ns INTEGER NOT NULL,
        stopped INTEGER NOT NULL DEFAULT 0, closed INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
        created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL,
        settings TEXT NOT NULL, settings_instance TEXT NOT NULL,
        success_count INTEGER NOT NULL, failure_count INTEGER NOT NULL,
        timeout_count INTEGER NOT NULL, skipped_count INTEGER NOT NULL,
        missed_count INTEGER NOT NULL, total_duration_ns INTEGER NOT NULL,
        min_ns INTEGER, max_ns INTEGER, last_end_ns INTEGER, last_start_ns INTEGER,
        last_duration_ns INTEGER, last_failed INTEGER, consecutive_failures INTEGER NOT NULL,
        last_error TEXT, last_error_category TEXT, last_success_ns INTEGER,
        metadata TEXT NOT NULL, last_skip_reason TEXT, next_run_ns INTEGER,
        grace_ns INTEGER NOT NULL, last_missed_ns INTEGER, history_dropped INTEGER NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE INDEX jobs_seq ON jobs (seq);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, job INTEGER NOT NULL,
        start_ns INTEGER NOT NULL, duration_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
        category TEXT
    );
    CREATE TABLE open_runs (
        instance TEXT NOT NULL, job INTEGER NOT NULL, run_id INTEGER NOT NULL,
        start_ns INTEGER NOT NULL, stall_after_ns INTEGER NOT NULL,
        PRIMARY KEY (instance, job, run_id)
    ) WITHOUT ROWID;
    """,
    # 2: pruning history and finding overdue slots without a scan of every row.
    """
    CREATE INDEX runs_end ON runs (end_ns);
    CREATE INDEX jobs_next_run ON jobs (next_run_ns) WHERE next_run_ns IS NOT NULL;
    """,
    # 3: who ran each job last, so that a restarted scheduler has a say on its slots.
    """
    ALTER TABLE jobs ADD COLUMN runner TEXT NOT NULL DEFAULT '';
    """,
    _batch_runs,
)
SCHEMA_VERSION = len(_MIGRATIONS)

# FleetRow's fields in the order of the jobs table's columns (after id).
_ROW_FIELDS = (*tuple(name for name in FleetRow.__dataclass_fields__ if name != "seq"), "seq")
_JSON_FIELDS = ("settings", "metadata")
_COLUMNS = ", ".join(_ROW_FIELDS)
_UPSERT = (
    f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * len(_ROW_FIELDS))}) "
    "ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _ROW_FIELDS if name != "name")
)
_SETTINGS_INDEX = _ROW_FIELDS.index("settings")
_METADATA_INDEX = _ROW_FIELDS.index("metadata")
_LAST_FAILED_INDEX = _ROW_FIELDS.index("last_failed")
_ROW_VALUES = operator.attrgetter(*_ROW_FIELDS)
#: A stored run as a StoredRun, without a Python call per run.
_stored_run = functools.partial(tuple.__new__, StoredRun)
_BUSY_SECONDS = 1.0
_CHUNK = 500  # names per IN (...) query, far below SQLite's variable limit


def _fork_safely(store: SQLiteStore) -> None:
    """Hold the store's locks across ``os.fork``: a child forked in the middle of one of its
    transactions would inherit SQLite's record of a lock it can never release (a Celery
    prefork pool forks while the parent's publisher writes), and be locked out for good. A
    fork waits for a write in progress (at most the busy timeout)."""
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return
    ref = weakref.ref(store)

    def before() -> None:
        held = ref()
        if held is not None:
            held._write_lock.acquire()
            held._lock.acquire()

    def after_in_parent() -> None:
        held = ref()
        if held is not None:
            held._lock.release()
            held._write_lock.release()

    def after_in_child() -> None:  # pragma: no cover - runs in the child only
        held = ref()
        if held is not None:
            held.after_fork()

    os.register_at_fork(
        before=before, after_in_parent=after_in_parent, after_in_child=after_in_child
    )


# Connections a forked child inherited: never used or closed there (closing could touch the
# parent's WAL), only kept from the garbage collector.
_INHERITED: list[sqlite3.Connection] = []


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _signed(run_id: int) -> int:
    # Run ids are span ids, 64-bit unsigned; SQLite's integers are signed.
    return run_id - (1 << 64) if run_id >= 1 << 63 else run_id


@functools.lru_cache(maxsize=4096)
def _loads(text: str) -> Any:
    """A JSON column's object, parsed once per distinct text (most rows hold one of a few
    settings and metadata texts) and shared by the rows that hold it: rows' settings and
    metadata are replaced, never changed in place. The same object for the same text also
    tells a reader that a row's settings did not move."""
    return json.loads(text)


def _to_row(values: Sequence[Any]) -> FleetRow:
    fields = list(values)
    fields[_SETTINGS_INDEX] = _loads(fields[_SETTINGS_INDEX])
    fields[_METADATA_INDEX] = _loads(fields[_METADATA_INDEX])
    if fields[_LAST_FAILED_INDEX] is not None:
        fields[_LAST_FAILED_INDEX] = bool(fields[_LAST_FAILED_INDEX])
    return FleetRow(*fields)


class _Known:
    """A jobs row as this writer last wrote or read it: its id, the row (that a write
    changes in place), and its JSON columns' text with the objects it encodes (written
    again as it is while the row holds the same objects: the merge replaces a row's
    settings and metadata, never changes them)."""

    __slots__ = ("id", "metadata", "metadata_text", "row", "settings", "settings_text")

    def __init__(self, id: int, row: FleetRow, settings_text: str, metadata_text: str) -> None:
        self.id, self.row = id, row
        self.settings, self.settings_text = row.settings, settings_text
        self.metadata, self.metadata_text = row.metadata, metadata_text


class SQLiteStore:
    """A store in the SQLite file at `path` (created with its folder if missing).

    Raises `StoreError` naming the path if the folder cannot be made, the file cannot be
    opened for writing or is not a SQLite database, and `StoreVersionError` if a newer
    jobpulse wrote it. Thread-safe (see `jobpulse.store.Store`).
    """

    def __init__(self, path: str | os.PathLike[str], *, url: str | None = None) -> None:
        self.path = Path(path)
        self.url = url or f"sqlite:///{self.path}"
        self._lock = threading.Lock()  # the reading connection's
        # The writing connection's: one store object may be given to several monitors,
        # whose publishers would interleave their transactions on it.
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer_identity: tuple[int, int] | None = None
        self._reader_identity: tuple[int, int] | None = None
        self._store_id = ""
        # The jobs table as the writer knows it (every row, with rows of seq <= _known_seq
        # as they are): a write reads only what other writers changed since its last one.
        self._known: dict[str, _Known] = {}
        self._known_seq = -1
        self._known_generation = -1
        self._open()
        _fork_safely(self)

    # -- opening -----------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.url}: {what} ({type(exc).__name__}: {exc})")

    def _connect(self, *, create: bool) -> tuple[sqlite3.Connection, tuple[int, int]]:
        """A connection and the identity (device, inode) of the file it opened."""
        mode = "rwc" if create else "rw"
        try:
            connection = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode={mode}",
                uri=True,
                timeout=_BUSY_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._fail(f"cannot open {self.path}", exc) from None
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            stat = os.stat(self.path)
        except (sqlite3.Error, OSError) as exc:
            connection.close()
            raise self._fail(f"{self.path} is not a usable SQLite database", exc) from None
        return connection, (stat.st_dev, stat.st_ino)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail(f"cannot create the folder {self.path.parent}", exc) from None
        self._open_writer()
        self._reader, self._reader_identity = self._connect(create=False)

    def _open_writer(self) -> None:
        writer, identity = self._connect(create=True)
        try:
            self._migrate(writer)
            store_id = writer.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        except StoreError:
            writer.close()
            raise
        except sqlite3.Error as exc:
            writer.close()
            raise self._fail(f"{self.path} cannot be used as a store", exc) from None
        self._store_id = store_id[0]
        self._writer, self._writer_identity = writer, identity
        self._known, self._known_seq, self._known_generation = {}, -1, -1

    def _identity_now(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def _check_writer(self) -> sqlite3.Connection:
        """The writing connection, opened again if the file was deleted or replaced under
        this process (writes to the old inode would go nowhere): a new file is a new store."""
        if self._writer is None or self._identity_now() != self._writer_identity:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open_writer()
        assert self._writer is not None
        return self._writer

    def _check_reader(self) -> sqlite3.Connection:
        # Readers never create the file: its writer does, at its next flush.
        if self._reader is None or self._identity_now() != self._reader_identity:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._reader, self._reader_identity = self._connect(create=False)
        return self._reader

    def _migrate(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = self._schema_version(connection)
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"store {self.url}: written by a newer jobpulse (schema version {version}; "
                    f"this version reads up to {SCHEMA_VERSION}). Upgrade jobpulse, or point "
                    "this service at another store."
                )
            for migration in _MIGRATIONS[version:]:
                if callable(migration):
                    migration(connection)
                    continue
                for statement in migration.split(";"):
                    if statement.strip():
                        connection.execute(statement)
            if version == 0:
                connection.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("store_id", uuid.uuid4().hex), ("seq", "0"), ("generation", "0")],
                )
            connection.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    @staticmethod
    def _schema_version(connection: sqlite3.Connection) -> int:
        has_meta = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            other = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if other:
                raise StoreError("the file holds another application's tables")
            return 0
        found = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(found[0]) if found else 0

    # -- writing -----------------------------------------------------------------------

    def write(
        self,
        instance: Instance,
        changes: Sequence[JobChange],
        *,
        now_ns: int,
        instance_ttl_ns: int,
        margin_ns: int,
        stopping: bool = False,
        expected_store_id: str | None = None,
    ) -> WriteResult:
        with self._write_lock:
            connection = self._check_writer()
            if expected_store_id is not None and expected_store_id != self._store_id:
                return WriteResult(self._store_id, applied=False)
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = self._write_locked(
                    connection, instance, changes, now_ns, instance_ttl_ns, margin_ns, stopping
                )
                connection.execute("COMMIT")
            except BaseException:
                # The known rows were changed in place: all are read again at the next write.
                self._known, self._known_seq = {}, -1
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

    def _write_locked(
        self,
        db: sqlite3.Connection,
        instance: Instance,
        changes: Sequence[JobChange],
        now_ns: int,
        ttl_ns: int,
        margin_ns: int,
        stopping: bool,
    ) -> WriteResult:
        """The write's statements, changing the known rows in place."""
        # An instance taken for dead (closed) that writes again is alive: closed again when
        # it dies, with the runs it has in progress then.
        db.execute(
            "INSERT INTO instances (id, service, host, pid, version, started_ns, last_seen_ns,"
            " stopped) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "last_seen_ns = excluded.last_seen_ns, stopped = excluded.stopped, closed = 0",
            (
                instance.id,
                instance.service,
                instance.host,
                instance.pid,
                instance.version,
                instance.started_ns,
                now_ns,
                int(stopping),
            ),
        )
        seq = self._catch_up(db) + 1
        live = {
            id
            for (id,) in db.execute(
                "SELECT id FROM instances WHERE stopped = 0 AND last_seen_ns >= ?",
                (now_ns - ttl_ns,),
            )
        }
        live.add(instance.id)
        running = {
            name
            for (name,) in db.execute(
                "SELECT DISTINCT j.name FROM open_runs o JOIN instances i ON i.id = o.instance"
                " JOIN jobs j ON j.id = o.job WHERE i.stopped = 0 AND i.last_seen_ns >= ?",
                (now_ns - ttl_ns,),
            )
        }
        rows: dict[str, FleetRow] = {}  # the rows this write changes
        new_runs: list[tuple[str, Sequence[RunFields]]] = []
        open_runs: list[tuple[str, tuple[tuple[int, int], ...], int]] = []
        conflicts: list[str] = []
        missed = 0
        for change in changes:
            row, conflict, counted = apply_change(
                self._take(rows, change.name),
                change,
                instance.id,
                now_ns,
                margin_ns,
                running=change.name in running or bool(change.open_runs),
                live=live,
            )
            rows[change.name] = row
            missed += counted
            if conflict:
                conflicts.append(change.name)
            if change.runs:
                new_runs.append((change.name, change.runs))
            if change.open_runs is not None:
                open_runs.append((change.name, change.open_runs, change.stall_after_ns))
        lost = self._close_dead(db, instance.id, now_ns, ttl_ns, rows, new_runs)
        for row in self._overdue(db, now_ns, margin_ns, rows):
            missed += claim_overdue(row, now_ns, margin_ns, running=row.name in running)
        known = self._known
        if rows:
            values = [self._values(row, seq) for row in rows.values()]
            db.executemany(_UPSERT, values)
            db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
            new = [name for name in rows if name not in known]
            ids = dict(self._ids(db, new)) if new else {}
            for value in values:
                name, row = value[0], rows[value[0]]
                entry = known.get(name)
                if entry is None:
                    known[name] = _Known(
                        ids[name], row, value[_SETTINGS_INDEX], value[_METADATA_INDEX]
                    )
                else:
                    entry.settings, entry.settings_text = row.settings, value[_SETTINGS_INDEX]
                    entry.metadata, entry.metadata_text = row.metadata, value[_METADATA_INDEX]
            self._known_seq = seq
        if new_runs:
            db.executemany(_INSERT_BATCH, [_batch(known[name].id, runs) for name, runs in new_runs])
        for name, runs, stall_after_ns in open_runs:
            job = known[name].id
            db.execute("DELETE FROM open_runs WHERE instance = ? AND job = ?", (instance.id, job))
            db.executemany(
                "INSERT INTO open_runs (instance, job, run_id, start_ns, stall_after_ns)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (instance.id, job, _signed(run_id), start, stall_after_ns)
                    for run_id, start in runs
                ],
            )
        return WriteResult(
            self._store_id, lost_runs=lost, missed_slots=missed, conflicts=tuple(conflicts)
        )

    def _catch_up(self, db: sqlite3.Connection) -> int:
        """Bring what the writer knows up to the jobs table (in the write's transaction): the
        rows other writers changed since, or all of them after a prune or on another file.
        Returns the store's seq."""
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('seq', 'generation')"))
        seq, generation = int(meta["seq"]), int(meta["generation"])
        if generation != self._known_generation or seq < self._known_seq:
            self._known, self._known_seq, self._known_generation = {}, -1, generation
        if seq > self._known_seq:
            for values in db.execute(
                f"SELECT id, {_COLUMNS} FROM jobs WHERE seq > ?", (self._known_seq,)
            ):
                row = _to_row(values[1:])
                self._known[row.name] = _Known(
                    values[0], row, values[1 + _SETTINGS_INDEX], values[1 + _METADATA_INDEX]
                )
            self._known_seq = seq
        return seq

    def _take(self, rows: dict[str, FleetRow], name: str) -> FleetRow | None:
        """The write's row of `name`, taken into `rows`: the one it works on already, or the
        known one (None for a new job)."""
        row = rows.get(name)
        if row is None:
            known = self._known.get(name)
            if known is not None:
                row = rows[name] = known.row
        return row

    def _values(self, row: FleetRow, seq: int) -> tuple[Any, ...]:
        """The row's columns for `_UPSERT`, its JSON columns encoded only if changed."""
        row.seq = seq
        values = list(_ROW_VALUES(row))
        known = self._known.get(row.name)
        if known is not None and known.settings is row.settings:
            values[_SETTINGS_INDEX] = known.settings_text
        else:
            values[_SETTINGS_INDEX] = _encode(row.settings)
        if known is not None and known.metadata is row.metadata:
            values[_METADATA_INDEX] = known.metadata_text
        else:  # a new copy with every run, most often empty
            values[_METADATA_INDEX] = _encode(row.metadata) if row.metadata else "{}"
        return tuple(values)

    @staticmethod
    def _ids(db: sqlite3.Connection, names: Sequence[str]) -> Iterable[tuple[str, int]]:
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            yield from db.execute(
                f"SELECT name, id FROM jobs WHERE name IN ({', '.join('?' * len(chunk))})", chunk
            )

    def _close_dead(
        self,
        db: sqlite3.Connection,
        me: str,
        now_ns: int,
        ttl_ns: int,
        rows: dict[str, FleetRow],
        new_runs: list[tuple[str, Sequence[RunFields]]],
    ) -> int:
        """Close the open runs of every instance found dead, exactly once: the instance is
        marked closed in the same transaction."""
        dead = db.execute(
            "SELECT id, host, pid FROM instances WHERE closed = 0 AND id != ?"
            " AND (stopped = 1 OR last_seen_ns < ?)",
            (me, now_ns - ttl_ns),
        ).fetchall()
        lost = 0
        for instance, host, pid in dead:
            db.execute("UPDATE instances SET closed = 1 WHERE id = ?", (instance,))
            runs = db.execute(
                "SELECT j.name, o.start_ns FROM open_runs o JOIN jobs j ON j.id = o.job"
                " WHERE o.instance = ?",
                (instance,),
            ).fetchall()
            if not runs:
                continue
            db.execute("DELETE FROM open_runs WHERE instance = ?", (instance,))
            error = LOST_INSTANCE_ERROR.format(instance=instance, pid=pid, host=host)
            for name, start_ns in runs:
                row = self._take(rows, name)
                assert row is not None  # an open run's job has a row
                run = lost_run(row, start_ns, now_ns, error)
                new_runs.append((name, (run,)))
                lost += 1
        return lost

    def _overdue(
        self, db: sqlite3.Connection, now_ns: int, margin_ns: int, rows: dict[str, FleetRow]
    ) -> list[FleetRow]:
        # grace is at most 300 s: the index narrows to slots at least that far in the past.
        names = db.execute(
            "SELECT name FROM jobs WHERE next_run_ns IS NOT NULL AND next_run_ns <= ?"
            " AND next_run_ns + grace_ns + ? <= ?",
            (now_ns, margin_ns, now_ns),
        ).fetchall()
        overdue = []
        for (name,) in names:
            row = self._take(rows, name)
            assert row is not None  # the table's rows are known
            overdue.append(row)
        return overdue

    # -- reading -----------------------------------------------------------------------

    def read(self, cursor: Cursor | None, *, now_ns: int, instance_ttl_ns: int) -> FleetRead:
        with self._lock:
            db = self._check_reader()
            db.execute("BEGIN")
            try:
                return self._read_locked(db, cursor, now_ns, instance_ttl_ns)
            finally:
                db.execute("COMMIT")

    def _read_locked(
        self, db: sqlite3.Connection, cursor: Cursor | None, now_ns: int, ttl_ns: int
    ) -> FleetRead:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        store_id, seq, generation = meta["store_id"], int(meta["seq"]), int(meta["generation"])
        instances = self._instances(db, now_ns, ttl_ns)
        reset = cursor is None or cursor.store_id != store_id or cursor.generation != generation
        if not reset and cursor is not None and cursor.seq == seq:
            return FleetRead(store_id, seq, generation, False, (), (), None, instances)
        since_seq = -1 if reset or cursor is None else cursor.seq
        since_run = 0 if reset or cursor is None else cursor.run_id
        rows = [
            _to_row(values)
            for values in db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE seq > ?", (since_seq,))
        ]
        runs = [
            _stored_run((id, name, *run))
            for id, name, batch in db.execute(
                "SELECT b.id, j.name, b.runs FROM run_batches b JOIN jobs j ON j.id = b.job"
                " WHERE b.id > ? ORDER BY b.id",
                (since_run,),
            )
            for run in json.loads(batch)
        ]
        open_runs = [
            OpenRun(values[0], values[1], values[2] % (1 << 64), values[3], values[4])
            for values in db.execute(
                "SELECT o.instance, j.name, o.run_id, o.start_ns, o.stall_after_ns"
                " FROM open_runs o JOIN jobs j ON j.id = o.job"
            )
        ]
        return FleetRead(store_id, seq, generation, reset, rows, runs, open_runs, instances)

    @staticmethod
    def _instances(db: sqlite3.Connection, now_ns: int, ttl_ns: int) -> list[Instance]:
        return [
            Instance(
                id,
                service,
                host,
                pid,
                version,
                started_ns,
                last_seen_ns,
                alive=not stopped and last_seen_ns >= now_ns - ttl_ns,
                stopped=bool(stopped),
            )
            for id, service, host, pid, version, started_ns, last_seen_ns, stopped in db.execute(
                "SELECT id, service, host, pid, version, started_ns, last_seen_ns, stopped"
                " FROM instances ORDER BY started_ns, id"
            )
        ]

    # -- housekeeping ------------------------------------------------------------------

    def prune(self, *, now_ns: int, history_ns: int, retention_ns: int) -> None:
        with self._write_lock:
            self._prune(now_ns, history_ns, retention_ns)

    def _prune(self, now_ns: int, history_ns: int, retention_ns: int) -> None:
        connection = self._check_writer()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute("DELETE FROM run_batches WHERE end_ns < ?", (now_ns - history_ns,))
            connection.execute(
                "DELETE FROM instances WHERE (closed = 1 OR stopped = 1) AND last_seen_ns < ?",
                (now_ns - retention_ns,),
            )
            stale = [
                job
                for job, settings in connection.execute(
                    "SELECT id, settings FROM jobs WHERE updated_ns < ? AND next_run_ns IS NULL"
                    " AND id NOT IN (SELECT job FROM open_runs)",
                    (now_ns - retention_ns,),
                )
                if json.loads(settings).get("schedule") is None
            ]
            if stale:
                connection.executemany(
                    "DELETE FROM run_batches WHERE job = ?", [(j,) for j in stale]
                )
                connection.executemany("DELETE FROM jobs WHERE id = ?", [(j,) for j in stale])
                connection.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
                )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def after_fork(self) -> None:
        # No I/O here (it runs inside os.fork, and the file may be locked by another
        # process): the child's connections are opened at its first write and read.
        _INHERITED.extend(c for c in (self._writer, self._reader) if c is not None)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._writer = self._reader = None

    def close(self) -> None:
        with self._write_lock, self._lock:
            for connection in (self._writer, self._reader):
                if connection is not None:
                    connection.close()
            self._writer = self._reader = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"
