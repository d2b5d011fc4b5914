"""What every store backend speaks: the records a publisher writes, what a reader reads,
and the `Store` protocol itself.

Times are epoch nanoseconds on the writer's wall clock, durations integer nanoseconds:
nothing is rounded on its way through a store. A job's row (`FleetRow`) is the fleet's
merged view of that job; `apply_change` in `jobpulse.store._merge` is the one place that
says how an instance's change folds into it, whichever backend holds the row.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from jobpulse._shared import StoreError, from_ns, rfc3339

__all__ = [
    "STOPPED_RETENTION_NS",
    "Cursor",
    "FinishedRun",
    "FleetRead",
    "FleetRow",
    "Instance",
    "JobChange",
    "OpenRun",
    "RunBatch",
    "RunFields",
    "Store",
    "UnsureWrite",
    "WriteResult",
    "little_endian",
]

_LITTLE_ENDIAN = sys.byteorder == "little"

#: How long an instance that shut down cleanly stays listed once another writer has taken
#: note of its end (closed it): an hour, not the retention of dead ones (a crontab line
#: checking in with `jobpulse exec` every minute is an instance a minute).
STOPPED_RETENTION_NS = 3600 * 1_000_000_000


class FinishedRun(NamedTuple):
    """A run an instance saw end. ``category`` None is a success; ``error`` is the redacted
    error text of a failed run (kept only in the job's row, for the run that ended last);
    ``timed_out`` says whether it counted as a timeout."""

    start_ns: int
    duration_ns: int
    end_ns: int
    category: str | None
    error: str | None
    timed_out: bool = False


#: A `FinishedRun`'s fields, in its order: what `JobChange.runs` holds (the registry's own
#: tuples, taken without a copy per run).
RunFields = tuple[int, int, int, str | None, str | None, bool]


#: Runs of one job as a reader gets them back from the store's history: (job name, runs),
#: each run ``(start_ns, duration_ns, end_ns, category)``, in the order they ended. A read's
#: batches are in the order they were written. Plain tuples of plain values, which the
#: garbage collector stops tracking at once (a restarted process reads a day of runs).
RunBatch = tuple[str, Sequence[tuple[int, int, int, str | None]]]


class OpenRun(NamedTuple):
    """A run in progress on a live instance."""

    instance: str
    name: str
    run_id: int
    start_ns: int
    stall_after_ns: int


@dataclass(frozen=True)
class Instance:
    """One process writing to the store. ``alive`` is whether its heartbeat is younger than
    the reader's ``instance_ttl`` and it has not shut down."""

    id: str
    service: str
    host: str
    pid: int
    version: str
    started_ns: int
    last_seen_ns: int
    alive: bool = True
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "started_at": rfc3339(from_ns(self.started_ns)),
            "last_seen": rfc3339(from_ns(self.last_seen_ns)),
            "alive": self.alive,
        }


@dataclass
class JobChange:
    """What one instance has to tell the store about one job since its last write.

    Counts are deltas (they add up across instances and restarts); ``min_ns``, ``max_ns``,
    ``last_start_ns``, ``last_success_ns`` and ``last_missed_ns`` are the instance's own
    extremes (merged with min/max, so sending them twice changes nothing). ``settings``,
    ``next_run`` and ``open_runs`` are None when unchanged since the last write.
    """

    name: str
    created_ns: int
    updated_ns: int
    settings: Mapping[str, Any] | None = None
    success: int = 0
    failure: int = 0
    timeouts: int = 0
    skipped: int = 0
    missed: int = 0
    total_duration_ns: int = 0
    min_ns: int | None = None
    max_ns: int | None = None
    runs: list[RunFields] = field(default_factory=list)
    dropped_runs: int = 0
    metadata: Mapping[str, Any] | None = None
    last_start_ns: int | None = None
    last_success_ns: int | None = None
    last_missed_ns: int | None = None
    last_skip_reason: str | None = None
    #: (next expected run or None, its grace), when it changed.
    next_run: tuple[int | None, int] | None = None
    #: (run id, start) of every run in progress on the instance, when they changed.
    open_runs: tuple[tuple[int, int], ...] | None = None
    stall_after_ns: int = 0
    #: Only when the store lost its data: the instance's last finished run as
    #: (end_ns, duration_ns, failed, consecutive_failures, error, category), for a row
    #: that has none.
    seed_last: tuple[int, int, bool, int, str | None, str | None] | None = None
    #: The pids of processes of the writer's host that ran some of `runs` and could not end
    #: them (a prefork child killed by a time limit): the runs they left open are those, so
    #: they are not also lost when those processes are found dead.
    ran_in: tuple[int, ...] = ()


@dataclass(slots=True)
class FleetRow:
    """The fleet's view of one job, as a store holds it. See `jobpulse.store._merge`."""

    name: str
    created_ns: int
    updated_ns: int
    settings: dict[str, Any] = field(default_factory=dict)
    settings_instance: str = ""
    success_count: int = 0
    failure_count: int = 0
    timeout_count: int = 0
    skipped_count: int = 0
    missed_count: int = 0
    total_duration_ns: int = 0
    min_ns: int | None = None
    max_ns: int | None = None
    last_end_ns: int | None = None
    last_start_ns: int | None = None
    last_duration_ns: int | None = None
    last_failed: bool | None = None
    consecutive_failures: int = 0
    #: When the failures since the last success ended (the newest, at most 64).
    failure_ends: tuple[int, ...] = ()
    last_error: str | None = None
    last_error_category: str | None = None
    last_success_ns: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    last_skip_reason: str | None = None
    next_run_ns: int | None = None
    grace_ns: int = 0
    last_missed_ns: int | None = None
    history_dropped: int = 0
    #: The instance that started the latest run: while it is alive, an instance that never
    #: ran the job has no say on its slots.
    runner: str = ""
    seq: int = 0


@dataclass(frozen=True)
class WriteResult:
    """What one write did: nothing if ``applied`` is False (the store is not the one the
    writer expected: a new, empty one); else runs it closed as lost (those of dead
    instances) and missed slots it counted for the fleet."""

    store_id: str
    applied: bool = True
    lost_runs: int = 0
    missed_slots: int = 0
    #: Jobs whose settings differ from those another instance registered.
    conflicts: tuple[str, ...] = ()
    #: The instance had been taken for dead (its runs in progress closed as lost): the
    #: runs it still has in progress must be written again.
    revived: bool = False


class UnsureWrite(StoreError):
    """A write that the store may have taken, or may take still, although it raised: its
    reply was lost (a timeout, a connection dropped) after it was sent.

    `settle()` finds out for good: True if the store took the write, False if it did not
    and never will. It raises while the store cannot tell; it may then be called again. A
    backend whose writes are over when they raise (SQLite's transactions) never raises
    this; one that does (Redis) must fence its writes so that a late one is refused once
    `settle` has said False.
    """

    def __init__(self, message: str, settle: Callable[[], bool]) -> None:
        super().__init__(message)
        self.settle = settle


@dataclass(frozen=True)
class FleetRead:
    """What changed in the store since a reader's cursor.

    ``reset`` means the reader must forget what it holds (another store, or jobs were
    pruned): ``rows`` and ``runs`` are then everything. ``open_runs`` (of every instance,
    alive or not: liveness changes with time) is None when no write happened since the
    cursor (what the reader holds is still true).
    """

    store_id: str
    seq: int
    generation: int
    reset: bool
    rows: Sequence[FleetRow]
    runs: Sequence[RunBatch]
    #: Where the next read's runs start (`Cursor.run_id`).
    run_cursor: int
    open_runs: Sequence[OpenRun] | None
    instances: Sequence[Instance]


class Cursor(NamedTuple):
    """Where a reader is in a store: what it has read so far."""

    store_id: str
    seq: int
    generation: int
    run_id: int


@runtime_checkable
class Store(Protocol):
    """A place where the instances of a service share their job status.

    Thread-safety: `write` is called from one thread at a time (the publisher's); `read`,
    `instances` and `history` may be called from any thread, concurrently with `write`.
    Every method may block on I/O and raises on failure: callers are never a job's thread.
    `after_fork` is called in a forked child before anything else: connections made by
    the parent must not be used there.
    """

    #: The store's URL with any password replaced by ``***``.
    url: str

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
        """In one transaction: the instance's heartbeat, every change folded into its job's
        row (`jobpulse.store._merge.apply_change`), the runs of dead instances closed as
        lost (each exactly once across the fleet), and the fleet's missed slots counted
        (each once). ``stopping`` marks the instance as shut down. If `expected_store_id` is
        given and is not the store's id, nothing is written (``applied`` False). Raises
        `UnsureWrite` if the write may have been taken although it failed."""
        ...

    def beat(
        self,
        instance: Instance,
        *,
        now_ns: int,
        instance_ttl_ns: int,
        margin_ns: int,
        expected_store_id: str,
    ) -> bool:
        """The instance's heartbeat alone, stored only if it is all that a `write` of no
        changes would store; True if stored. False, with nothing stored, if such a write
        could do more: another instance to close (stopped, or not seen for
        `instance_ttl_ns`), a job's expected run `margin_ns` past its grace, this instance
        taken for dead or not written yet, or a store other than `expected_store_id`:
        `write` is called then. It may come between another writer's reading and writing
        (a heartbeat changes nothing that writer decides on: had it taken this instance for
        dead, it still closes it, and this instance's next write finds it revived). Reads
        no job's row: what an idle process's heartbeat costs does not grow with the jobs
        the others change."""
        ...

    def read(self, cursor: Cursor | None, *, now_ns: int, instance_ttl_ns: int) -> FleetRead:
        """What changed since `cursor` (everything when None)."""
        ...

    def prune(self, *, now_ns: int, history_ns: int, retention_ns: int) -> None:
        """Drop runs that ended more than `history_ns` ago, instances dead for more than
        `retention_ns` (stopped and closed ones after `STOPPED_RETENTION_NS` if sooner), and
        unscheduled jobs not updated for `retention_ns`."""
        ...

    def after_fork(self) -> None: ...

    def close(self) -> None: ...


def little_endian(typecode: str, data: bytes | memoryview) -> array[int]:
    """The integers that `data` holds little-endian (as both backends pack runs), in an
    array of this host's order."""
    values = array(typecode)
    values.frombytes(data)
    if not _LITTLE_ENDIAN:  # pragma: no cover - big-endian hosts
        values.byteswap()
    return values
