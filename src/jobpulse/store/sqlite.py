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

import contextlib
import itertools
import json
import operator
import os
import sqlite3
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from jobpulse._shared import UNKNOWN, StoreError, StoreVersionError
from jobpulse.store._base import (
    STOPPED_RETENTION_NS,
    Cursor,
    FleetRead,
    Instance,
    JobChange,
    OpenRun,
    RunBatch,
    WriteResult,
    little_endian,
)
from jobpulse.store._rows import ROW_FIELDS, KnownRows, Rows, encode
from jobpulse.store._write import StoredInstance, WriteState, plan_write

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_HOUR_NS = 3600 * 1_000_000_000
_START, _DURATION, _END, _CATEGORY = (operator.itemgetter(index) for index in range(4))
#: The runs one write brought (`_pack_runs`); ``end_ns`` is the latest end among them (the
#: row is pruned once it leaves the history).
_INSERT_RUNS = "INSERT INTO run_writes (end_ns, runs) VALUES (?, ?)"


def _pack_runs(
    batches: Sequence[tuple[int, Sequence[Sequence[Any]]]], codes: Mapping[str | None, int]
) -> bytes:
    """The runs of a write as one value: little-endian 64-bit integers, the number of jobs
    n, their ids (n), their numbers of runs (n), then of every run, job after job, in the
    order they ended, its start_ns, duration_ns and end_ns (3 columns), and its category's
    code as 16 bits (0 for a success). Runs are ``(start_ns, duration_ns, end_ns, category,
    ...)``; `codes` holds every category among them. Integers, not text: turning
    10,000 runs into JSON took 5 ms of a 1,000-job flush."""
    runs: list[Sequence[Any]] = []
    ids: list[int] = []
    counts: list[int] = []
    for job, batch in batches:
        ids.append(job)
        counts.append(len(batch))
        runs += batch
    total = len(runs)
    categories = list(map(_CATEGORY, runs))
    if categories.count(None) == total:  # successes only, as most are: all codes 0
        code_bytes = bytes(2 * total)
    else:
        code_bytes = struct.pack(f"<{total}H", *map(codes.__getitem__, categories))
    # struct, not arrays: twice as fast for 50,000 runs.
    return b"".join(
        (
            struct.pack(f"<{1 + 2 * len(ids)}q", len(ids), *ids, *counts),
            struct.pack(f"<{total}q", *map(_START, runs)),
            struct.pack(f"<{total}q", *map(_DURATION, runs)),
            struct.pack(f"<{total}q", *map(_END, runs)),
            code_bytes,
        )
    )


def _unpack_runs(
    value: bytes, categories: Sequence[str | None]
) -> list[tuple[int, tuple[tuple[int, int, int, str | None], ...]]]:
    """`_pack_runs` undone: (job id, its runs as (start_ns, duration_ns, end_ns,
    category)), `categories` giving each code's category."""
    view = memoryview(value)
    jobs = int.from_bytes(view[:8], "little")
    runs = (len(value) - 8 - 16 * jobs) // 26
    header = little_endian("q", view[8 : 8 + 16 * jobs])
    fields = little_endian("q", view[8 + 16 * jobs : 8 + 16 * jobs + 24 * runs])
    codes = little_endian("H", view[8 + 16 * jobs + 24 * runs :])
    every = list(
        zip(
            fields[:runs],
            fields[runs : 2 * runs],
            fields[2 * runs :],
            map(categories.__getitem__, codes),
            strict=True,
        )
    )
    unpacked = []
    first = 0
    for index in range(jobs):
        last = first + header[jobs + index]
        unpacked.append((header[index], tuple(every[first:last])))
        first = last
    return unpacked


def _batch_runs(db: sqlite3.Connection) -> None:
    """4: the runs one write brings for a job in one row (a flush's 10,000 runs were 10,000
    rows and most of its time); the runs of schema 3, one row per job and hour. A batch is
    ``[[start_ns, duration_ns, end_ns, category], ...]`` in the order they ended, with the
    latest end as its ``end_ns``."""
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
    db.executemany(
        "INSERT INTO run_batches (job, end_ns, runs) VALUES (?, ?, ?)",
        [(job, max(map(_END, runs)), encode(runs)) for (job, _), runs in batches.items()],
    )
    db.execute("DROP TABLE runs")


#: The last code a category other than ``unknown`` may get: codes are 16 bits and never
#: given back, and ``unknown`` must still find one past it.
_LAST_CODE = 0xFFFE


def _code_of(db: sqlite3.Connection, category: str) -> int:
    """The code of a run's category in the store (given at its first use). Once the codes
    are all given, a new category is stored as ``unknown`` (a code past 16 bits would make
    every write of the run fail)."""
    found = db.execute("SELECT code FROM categories WHERE name = ?", (category,)).fetchone()
    if found is not None:
        return int(found[0])
    (last,) = db.execute("SELECT coalesce(max(code), 0) FROM categories").fetchone()
    if last >= _LAST_CODE and category != UNKNOWN:
        return _code_of(db, UNKNOWN)
    db.execute("INSERT INTO categories (name) VALUES (?)", (category,))
    return int(db.execute("SELECT code FROM categories WHERE name = ?", (category,)).fetchone()[0])


def _runs_per_write(db: sqlite3.Connection) -> None:
    """5: the runs of every job that one write brings in one row (`_pack_runs`: one value
    to make and one row to insert per flush, not one per job), their categories by code;
    schema 4's batches, one row each. Job ids are never used again (``meta.last_job``): a
    row of runs names its jobs by id, and outlives a job pruned meanwhile. Runs closed as
    lost are remembered (`lost_runs`), so that their real end, if their instance was not
    dead after all, is not counted a second time. A job's row keeps the ends of its failures
    since the last success (``failure_ends``), to count them across interleaved writers."""
    db.execute(
        "CREATE TABLE run_writes (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " end_ns INTEGER NOT NULL, runs BLOB NOT NULL)"
    )
    db.execute("CREATE INDEX run_writes_end ON run_writes (end_ns)")
    # Past every id in use, the ids of runs whose job was pruned included.
    db.execute(
        "INSERT INTO meta (key, value) SELECT 'last_job', max(coalesce(max(id), 0),"
        " (SELECT coalesce(max(job), 0) FROM run_batches),"
        " (SELECT coalesce(max(job), 0) FROM open_runs)) FROM jobs"
    )
    db.execute("CREATE TABLE categories (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
    codes: dict[str | None, int] = {None: 0}
    rows = []
    for id, job, end_ns, text in db.execute(
        "SELECT id, job, end_ns, runs FROM run_batches ORDER BY id"
    ).fetchall():
        runs = json.loads(text)
        for category in map(_CATEGORY, runs):
            if category not in codes:
                codes[category] = _code_of(db, category)
        rows.append((id, end_ns, _pack_runs([(job, runs)], codes)))
    db.executemany("INSERT INTO run_writes (id, end_ns, runs) VALUES (?, ?, ?)", rows)
    db.execute("DROP TABLE run_batches")
    # A run by its id (two runs of a job may start in the same clock tick); its start is what
    # its finished form, which has no id, is known by.
    db.execute("ALTER TABLE jobs ADD COLUMN failure_ends TEXT NOT NULL DEFAULT '[]'")
    db.execute(
        "CREATE TABLE lost_runs (instance TEXT NOT NULL, job INTEGER NOT NULL,"
        " run_id INTEGER NOT NULL, start_ns INTEGER NOT NULL,"
        " PRIMARY KEY (instance, job, run_id)) WITHOUT ROWID"
    )


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
    _runs_per_write,
)
SCHEMA_VERSION = len(_MIGRATIONS)

# The jobs table's columns: the id, then a row's values.
_COLUMNS = ", ".join(ROW_FIELDS)
_INSERT_JOB = f"INSERT INTO jobs (id, {_COLUMNS}) VALUES (?, {', '.join('?' * len(ROW_FIELDS))})"
#: Every column but the name, then the id.
_UPDATE_JOB = f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in ROW_FIELDS[1:])} WHERE id = ?"
_NAME_COLUMN = 1 + ROW_FIELDS.index("name")
_BUSY_SECONDS = 1.0
#: How long opening a file waits for the processes that open it too (a new file's first
#: process makes its tables while the others wait).
_OPEN_SECONDS = 10.0

T = TypeVar("T")


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


def _until_free(work: Callable[[], T]) -> T:
    """`work()`, tried again while another connection holds the lock it needs, up to
    `_OPEN_SECONDS`: processes that start together on a new file (uvicorn's workers) each
    open it, and one of them makes its tables."""
    deadline = time.monotonic() + _OPEN_SECONDS
    while True:
        try:
            return work()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)  # another process's lock: nothing to wait on here


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction (``BEGIN IMMEDIATE``): committed, or rolled back if the block
    raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _signed(run_id: int) -> int:
    # Run ids are span ids, 64-bit unsigned; SQLite's integers are signed.
    return run_id - (1 << 64) if run_id >= 1 << 63 else run_id


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
        # The jobs table as the writer knows it (every row, with rows of seq <= its seq
        # as they are): a write reads only what other writers changed since its last one.
        self._known = KnownRows()
        # Job ids to names for the reader (the writer's are its known rows'): ids are never
        # given twice in one file.
        self._read_names: dict[int, str] = {}
        # Categories of runs by code, as the writer knows them (all read again after a
        # failed write: a code given in it was given back).
        self._codes: dict[str | None, int] = {None: 0}
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
            _until_free(lambda: connection.execute("PRAGMA journal_mode = WAL"))
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
        self._read_names = {}

    def _open_writer(self) -> None:
        writer, identity = self._connect(create=True)
        try:
            _until_free(lambda: self._migrate(writer))
            store_id = writer.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        except StoreError:
            writer.close()
            raise
        except sqlite3.Error as exc:
            writer.close()
            raise self._fail(f"{self.path} cannot be used as a store", exc) from None
        self._store_id = store_id[0]
        self._writer, self._writer_identity = writer, identity
        self._known.forget()
        self._codes = {None: 0}

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
            self._read_names = {}
        return self._reader

    def _migrate(self, connection: sqlite3.Connection) -> None:
        with _immediate(connection):
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
            try:
                with _immediate(connection):
                    return self._write_locked(
                        connection, instance, changes, now_ns, instance_ttl_ns, margin_ns, stopping
                    )
            except BaseException:
                # The known rows were changed in place: all are read again at the next write.
                self._known.forget()
                self._codes = {None: 0}
                raise

    def beat(
        self,
        instance: Instance,
        *,
        now_ns: int,
        instance_ttl_ns: int,
        margin_ns: int,
        expected_store_id: str,
    ) -> bool:
        with self._write_lock:
            db = self._check_writer()
            if expected_store_id != self._store_id:
                return False
            with _immediate(db):
                mine = db.execute(
                    "SELECT stopped, closed FROM instances WHERE id = ?", (instance.id,)
                ).fetchone()
                beaten = (
                    mine == (0, 0)
                    and db.execute(
                        "SELECT 1 FROM instances WHERE id != ? AND closed = 0"
                        " AND (stopped != 0 OR last_seen_ns < ?) LIMIT 1",
                        (instance.id, now_ns - instance_ttl_ns),
                    ).fetchone()
                    is None
                    and not self._overdue(db, now_ns, margin_ns, limit=1)
                )
                if beaten:
                    db.execute(
                        "UPDATE instances SET last_seen_ns = max(last_seen_ns, ?) WHERE id = ?",
                        (now_ns, instance.id),
                    )
            return beaten

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
        """The write's statements (`plan_write` decides them), changing the known rows in
        place."""
        me = instance.id
        previous = db.execute(
            "SELECT last_seen_ns, closed FROM instances WHERE id = ?", (me,)
        ).fetchone()
        seq, last_job = self._catch_up(db)
        seq += 1
        known = self._known
        names = known.names
        open_runs: dict[str, list[tuple[str, int, int]]] = {}
        for who, job, run_id, start_ns in db.execute(
            "SELECT instance, job, run_id, start_ns FROM open_runs"
        ):
            open_runs.setdefault(who, []).append((names[job], run_id, start_ns))
        claims: dict[str, dict[int, list[int]]] = {}
        for job, run_id, start_ns in db.execute(
            "SELECT job, run_id, start_ns FROM lost_runs WHERE instance = ?", (me,)
        ):
            if job in names:
                claims.setdefault(names[job], {}).setdefault(start_ns, []).append(run_id)
        state = WriteState(
            previous_seen_ns=None if previous is None else previous[0],
            revived=previous is not None and bool(previous[1]),
            instances=[
                StoredInstance(id, host, pid, seen, bool(stopped), bool(closed))
                for id, host, pid, seen, stopped, closed in db.execute(
                    "SELECT id, host, pid, last_seen_ns, stopped, closed FROM instances"
                )
            ],
            open_runs=open_runs,
            claims=claims,
            row=known.row,
            overdue=lambda now, margin: self._overdue(db, now, margin),
            lost_before=lambda who: {
                (names[job], run_id)
                for job, run_id in db.execute(
                    "SELECT job, run_id FROM lost_runs WHERE instance = ?", (who,)
                )
                if job in names
            },
        )
        plan = plan_write(
            instance, changes, state, now_ns=now_ns, ttl_ns=ttl_ns, margin_ns=margin_ns
        )
        # An instance taken for dead (closed) that writes again is alive: closed again when
        # it dies, with the runs it has in progress then.
        db.execute(
            "INSERT INTO instances (id, service, host, pid, version, started_ns, last_seen_ns,"
            " stopped) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "last_seen_ns = excluded.last_seen_ns, stopped = excluded.stopped, closed = 0",
            (
                me,
                instance.service,
                instance.host,
                instance.pid,
                instance.version,
                instance.started_ns,
                now_ns,
                int(stopping),
            ),
        )
        if plan.rows:
            updates: list[list[Any]] = []
            inserts: list[list[Any]] = []
            for row in plan.rows.values():
                id = known.get_id(row.name)
                if id is None:
                    last_job += 1
                    inserts.append([last_job, *known.values(row, seq, last_job)])
                else:
                    values = known.values(row, seq)
                    values[0] = id  # for the name, which an update leaves as it is
                    values.append(values.pop(0))
                    updates.append(values)
            if updates:
                db.executemany(_UPDATE_JOB, updates)
            if inserts:
                db.executemany(_INSERT_JOB, inserts)
                db.execute("UPDATE meta SET value = ? WHERE key = 'last_job'", (str(last_job),))
            db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
            known.seq = seq
        if plan.runs:
            batches = [(known.id(name), runs) for name, runs in plan.runs.items()]
            every = list(itertools.chain.from_iterable(plan.runs.values()))
            codes = self._codes
            for category in set(map(_CATEGORY, every)) - codes.keys():
                codes[category] = _code_of(db, category)
            # Pruned a day after its latest end, or after now: a run recorded as ending in
            # the future must not keep the row, with the other jobs' runs, for good.
            end_ns = min(max(map(_END, every)), now_ns)
            db.execute(_INSERT_RUNS, (end_ns, _pack_runs(batches, codes)))
        for name, runs, stall_after_ns in plan.open_runs:
            job = known.id(name)
            db.execute("DELETE FROM open_runs WHERE instance = ? AND job = ?", (me, job))
            db.executemany(
                "INSERT INTO open_runs (instance, job, run_id, start_ns, stall_after_ns)"
                " VALUES (?, ?, ?, ?, ?)",
                [(me, job, _signed(run_id), start, stall_after_ns) for run_id, start in runs],
            )
        for who in plan.closed:
            db.execute("UPDATE instances SET closed = 1 WHERE id = ?", (who,))
            db.execute("DELETE FROM open_runs WHERE instance = ?", (who,))
        db.executemany(
            "INSERT OR IGNORE INTO lost_runs (instance, job, run_id, start_ns) VALUES (?, ?, ?, ?)",
            [
                (who, known.id(name), run_id, start)
                for who, name, run_id, start in (*plan.lost, *plan.absorbed)
            ],
        )
        db.executemany(
            "DELETE FROM open_runs WHERE instance = ? AND job = ?",
            {(who, known.id(name)) for who, name, _, _ in plan.absorbed},
        )
        db.executemany(
            "DELETE FROM lost_runs WHERE instance = ? AND job = ? AND run_id = ?",
            [(me, known.id(name), run_id) for name, run_id in plan.ended],
        )
        return WriteResult(
            self._store_id,
            lost_runs=len(plan.lost),
            missed_slots=plan.missed_slots,
            conflicts=tuple(plan.conflicts),
            revived=state.revived,
        )

    def _catch_up(self, db: sqlite3.Connection) -> tuple[int, int]:
        """Bring what the writer knows up to the jobs table (in the write's transaction): the
        rows other writers changed since, or all of them after a prune or on another file.
        Returns the store's seq and the last job id given."""
        meta = dict(
            db.execute("SELECT key, value FROM meta WHERE key IN ('seq', 'generation', 'last_job')")
        )
        seq, generation = int(meta["seq"]), int(meta["generation"])
        known = self._known
        if generation != known.generation or seq < known.seq:
            # Every row is read again; the names of jobs pruned meanwhile are forgotten.
            known.forget()
            known.generation = generation
        if seq > known.seq:
            for values in db.execute(
                f"SELECT id, {_COLUMNS} FROM jobs WHERE seq > ?", (known.seq,)
            ):
                known.add(values[0], values, 1)
            known.seq = seq
        return seq, int(meta["last_job"])

    @staticmethod
    def _overdue(db: sqlite3.Connection, now_ns: int, margin_ns: int, limit: int = -1) -> list[str]:
        # grace is at most 300 s: the index narrows to slots at least that far in the past.
        return [
            name
            for (name,) in db.execute(
                "SELECT name FROM jobs WHERE next_run_ns IS NOT NULL AND next_run_ns <= ?"
                " AND next_run_ns + grace_ns + ? <= ? LIMIT ?",
                (now_ns, margin_ns, now_ns, limit),
            )
        ]

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
        reset = (
            cursor is None
            or cursor.store_id != store_id
            or cursor.generation != generation
            or cursor.seq > seq  # the file restored from an older copy
        )
        if not reset and cursor is not None and cursor.seq == seq:
            return FleetRead(
                store_id, seq, generation, False, (), (), cursor.run_id, None, instances
            )
        since_seq = -1 if reset or cursor is None else cursor.seq
        since_run = 0 if reset or cursor is None else cursor.run_id
        if reset:  # every row is read: the names of the jobs pruned meanwhile go
            self._read_names = {}
        names = self._read_names
        if not names and since_seq >= 0:  # a connection made again: the names of every job
            names.update(db.execute("SELECT id, name FROM jobs"))
        raw = db.execute(f"SELECT id, {_COLUMNS} FROM jobs WHERE seq > ?", (since_seq,)).fetchall()
        for values in raw:
            names[values[0]] = values[_NAME_COLUMN]
        rows = Rows(raw, 1)
        runs: list[RunBatch] = []
        last_run = since_run
        # A job missing from the names is one pruned since: its runs left with it.
        categories: list[str | None] = []
        for write, value in db.execute(
            "SELECT id, runs FROM run_writes WHERE id > ? ORDER BY id", (since_run,)
        ):
            if not categories:
                categories = self._categories(db)
            last_run = write
            for job, batch in _unpack_runs(value, categories):
                name = names.get(job)
                if name is not None:
                    runs.append((name, batch))
        open_runs = [
            OpenRun(instance, names[job], run_id % (1 << 64), start_ns, stall_after_ns)
            for instance, job, run_id, start_ns, stall_after_ns in db.execute(
                "SELECT instance, job, run_id, start_ns, stall_after_ns FROM open_runs"
            )
            if job in names
        ]
        return FleetRead(
            store_id, seq, generation, reset, rows, runs, last_run, open_runs, instances
        )

    @staticmethod
    def _categories(db: sqlite3.Connection) -> list[str | None]:
        """Each code's category (None for 0, a success; codes are never given twice)."""
        categories: list[str | None] = [None]
        for code, name in db.execute("SELECT code, name FROM categories ORDER BY code"):
            categories.extend([None] * (code - len(categories)))
            categories.append(name)
        return categories

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
        with _immediate(connection):
            connection.execute("DELETE FROM run_writes WHERE end_ns < ?", (now_ns - history_ns,))
            connection.execute(
                "DELETE FROM instances WHERE (closed = 1 OR stopped = 1) AND last_seen_ns < ?"
                " OR (closed = 1 AND stopped = 1 AND last_seen_ns < ?)",
                (now_ns - retention_ns, now_ns - min(retention_ns, STOPPED_RETENTION_NS)),
            )
            connection.execute(
                "DELETE FROM lost_runs WHERE instance NOT IN (SELECT id FROM instances)"
            )
            stale = [
                (job,)
                for job, settings in connection.execute(
                    "SELECT id, settings FROM jobs WHERE updated_ns < ? AND next_run_ns IS NULL"
                    " AND id NOT IN (SELECT job FROM open_runs)",
                    (now_ns - retention_ns,),
                )
                if json.loads(settings).get("schedule") is None
            ]
            if stale:  # their runs stay until they leave the history: readers skip them
                connection.executemany("DELETE FROM jobs WHERE id = ?", stale)
                connection.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
                )

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
