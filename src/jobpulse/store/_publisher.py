"""The publisher: one thread per monitor that writes the process's changes to the store.

Every `flush_interval` it copies the changed jobs out of the registry (under the registry's
lock, O(changed jobs), no I/O), turns their counters into deltas against what it already
published, folds them into a bounded buffer and writes the buffer in one transaction. A
write that fails leaves the buffer as it is, for the next attempt: a store that is locked,
slow, full or gone costs the jobs nothing, and the runs it could not take are written when
it is back. Past `buffer_runs` runs waiting, further runs are left out of the store's
history (counted and logged; the counts stay exact, they are deltas). A write whose reply
was lost (`UnsureWrite`: the store may have taken it) is kept apart and settled before the
next one: dropped if it was taken, else written again with what came since, so that no
delta counts twice.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

from jobpulse._shared import (
    Clock,
    Guard,
    LocalJob,
    StatusRegistry,
    after_fork_in_child,
    redact,
    run_fields,
)
from jobpulse.store._base import Instance, JobChange, Store, UnsureWrite, WriteResult

__all__ = ["Publisher"]

logger = logging.getLogger("jobpulse")

_GUARD = Guard("store publisher")
_HISTORY_NS = 24 * 3600 * 1_000_000_000
_PRUNE_EVERY_SECONDS = 60.0
_RETRY_SECONDS = 0.1  # between tries of a flush the store refused
_NS_LIMIT = 1 << 63


class _Published:
    """What the store already has from this instance for one job."""

    __slots__ = ("counts", "next_run", "open_runs", "settings")

    def __init__(self) -> None:
        self.counts = (0, 0, 0, 0, 0, 0)
        self.settings: object = None
        self.next_run: tuple[int | None, int] | None = None
        self.open_runs: tuple[tuple[int, int], ...] = ()


def _merge(old: JobChange, new: JobChange) -> JobChange:
    """Two changes of one job, one after the other, as one."""
    return replace(
        new,
        created_ns=min(old.created_ns, new.created_ns),
        success=old.success + new.success,
        failure=old.failure + new.failure,
        timeouts=old.timeouts + new.timeouts,
        skipped=old.skipped + new.skipped,
        missed=old.missed + new.missed,
        total_duration_ns=old.total_duration_ns + new.total_duration_ns,
        # Extremes and last_* are the instance's own, absolute: the newer ones hold the older.
        runs=old.runs + new.runs,
        dropped_runs=old.dropped_runs + new.dropped_runs,
        settings=new.settings if new.settings is not None else old.settings,
        metadata=new.metadata if new.runs else old.metadata,
        last_skip_reason=new.last_skip_reason if new.skipped else old.last_skip_reason,
        next_run=new.next_run if new.next_run is not None else old.next_run,
        open_runs=new.open_runs if new.open_runs is not None else old.open_runs,
        ran_in=old.ran_in + new.ran_in,
    )


class Publisher:
    """Writes `registry`'s changes to `store` from a thread of its own (see the module).

    `flush` and `stop` may be called from any thread; everything else happens on the
    publisher's thread. A forked child gets its own instance, connection and thread, and
    publishes only what happens in it.
    """

    def __init__(
        self,
        store: Store,
        registry: StatusRegistry,
        clock: Clock,
        *,
        service: str,
        version: str,
        flush_interval: float,
        instance_ttl: float,
        retention: float,
        buffer_runs: int,
        on_written: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self._registry = registry
        self._clock = clock
        self._service, self._version = service, version
        self.flush_interval = flush_interval
        self._margin_ns = int(flush_interval * 2e9)  # see `judging_time`
        self._ttl_ns = int(instance_ttl * 1e9)
        self._retention_ns = int(retention * 1e9)
        self._buffer_runs = buffer_runs
        self._on_written = on_written
        self.instance = self._new_instance()
        self._published: dict[str, _Published] = {}
        self._pending: dict[str, JobChange] = {}
        #: A write whose reply was lost: how to settle it, and its changes.
        self._unsure: tuple[Callable[[], bool], Sequence[JobChange]] | None = None
        self._buffered_runs = 0
        self._dropped_runs = 0
        self._store_id: str | None = None
        self._failing: str | None = None  # the error of the write that failed last
        self._failures = 0  # writes failed in a row
        # Between tries of a store that fails: doubling from the interval, up to a quarter of
        # the ttl (so that the heartbeat is back well before others take this one for dead).
        self._max_backoff = max(flush_interval, instance_ttl / 4)
        self._resend = False  # every job's runs in progress, at the next write
        self._last_prune = -_PRUNE_EVERY_SECONDS
        self._start_thread()
        after_fork_in_child(self._reset_after_fork)

    def _new_instance(self) -> Instance:
        # One per monitor and per process: a resource's service.instance.id may be shared
        # by every worker started from one environment.
        now_ns = self._clock.time_ns()
        return Instance(
            id=uuid.uuid4().hex,
            service=self._service,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=self._version,
            started_ns=now_ns,
            last_seen_ns=now_ns,
        )

    def _start_thread(self) -> None:
        self._condition = threading.Condition()
        self._requested = self._completed = 0
        self._last_result = True
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="jobpulse-store", daemon=True)
        self._thread.start()

    # -- the thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(
                    lambda: self._stopping or self._requested > self._completed,
                    timeout=self._wait(),
                )
                stopping, target = self._stopping, self._requested
            written = False
            with _GUARD:
                written = self._cycle(stopping=stopping)
            if stopping:  # the last write is made here, so that `stop` can leave it behind
                with _GUARD:
                    self.store.close()
            with self._condition:
                self._completed = self._requested if stopping else max(self._completed, target)
                self._last_result = written
                self._condition.notify_all()
            if stopping:
                return

    def _wait(self) -> float:
        """Seconds until the next write: the interval, or a backoff while the store fails."""
        if not self._failures:
            return self.flush_interval
        # The exponent is capped: a float times 2**1024 overflows (after some 43 minutes of
        # an outage at the default settings), which would end this thread.
        doubled = self.flush_interval * 2.0 ** min(self._failures - 1, 64)
        backoff = min(doubled, self._max_backoff)
        return float(backoff) * (0.9 + 0.2 * random.random())  # apart from other processes

    def _collect(self, *, full: bool = False, seed: bool = False) -> None:
        """Copy the registry's changes into the buffer, as deltas (with the last runs'
        fields too if `seed`: for a store that lost its data)."""
        for job in self._registry.collect_changes(full=full):
            change = self._change_of(job)
            if seed:
                change.seed_last = job.last
            self._pend(change)

    def _pend(self, change: JobChange) -> None:
        """`change` waits for the next write, folded into what waits for its job."""
        old = self._pending.get(change.name)
        self._pending[change.name] = change if old is None else _merge(old, change)

    def _change_of(self, job: LocalJob) -> JobChange:
        published = self._published.get(job.name)
        if published is None:
            published = self._published[job.name] = _Published()
        counts = (
            job.success_count,
            job.failure_count,
            job.timeout_count,
            job.skipped_count,
            job.missed_count,
            job.total_duration_ns,
        )
        deltas = [now - before for now, before in zip(counts, published.counts, strict=True)]
        published.counts = counts
        runs = run_fields(job.runs)  # the registry's buffer, handed over
        room = self._buffer_runs - self._buffered_runs
        dropped = job.dropped_runs
        if len(runs) > room:
            dropped += len(runs) - max(room, 0)
            runs = runs[: max(room, 0)]
        if dropped:
            self._count_dropped(job.name, dropped)
        self._buffered_runs += len(runs)
        change = JobChange(
            name=job.name,
            created_ns=job.created_ns,
            updated_ns=job.updated_ns,
            success=deltas[0],
            failure=deltas[1],
            timeouts=deltas[2],
            skipped=deltas[3],
            missed=deltas[4],
            total_duration_ns=deltas[5],
            min_ns=job.min_ns,
            max_ns=job.max_ns,
            runs=runs,
            dropped_runs=dropped,
            metadata=job.metadata,
            last_start_ns=job.last_start_ns,
            last_success_ns=job.last_success_ns,
            last_missed_ns=job.last_missed_ns,
            last_skip_reason=job.last_skip_reason,
            stall_after_ns=int(job.stall_after * 1e9),
            ran_in=job.ran_in,
        )
        if job.settings != published.settings:
            change.settings = published.settings = job.settings
        # A slot past what a store holds (64-bit nanoseconds: April 2262) is never due.
        next_run_ns = (
            job.next_run_ns if job.next_run_ns is None or job.next_run_ns < _NS_LIMIT else None
        )
        next_run = (next_run_ns, job.grace_ns)
        if next_run != published.next_run and (
            next_run_ns is not None or published.next_run is not None
        ):
            change.next_run = published.next_run = next_run
        if job.open_runs != published.open_runs:
            change.open_runs = published.open_runs = job.open_runs
        if job.removed:  # a job of that name registered again counts from zero
            del self._published[job.name]
        return change

    def _count_dropped(self, name: str, count: int) -> None:
        before = self._dropped_runs
        self._dropped_runs += count
        if self._dropped_runs.bit_length() > before.bit_length():  # at 1, 2, 4, 8, ...
            logger.warning(
                "store %s: %d finished runs left out of its history (more than %d runs were "
                "waiting to be written; counts stay exact), the latest of job %r",
                self.store.url,
                self._dropped_runs,
                self._buffer_runs,
                name,
            )

    def _cycle(self, *, stopping: bool = False) -> bool:
        """Collect and write once; True if the store took everything."""
        self._collect(full=self._resend)
        self._resend = False
        now_ns = self._clock.time_ns()
        try:
            if self._unsure is not None:
                self._settle(*self._unsure)
            result = None if self._pending or stopping else self._beat(now_ns)
            if result is None:
                result = self._write(now_ns, stopping)
            if not result.applied:  # a new, empty store: it gets the whole view again
                self._reset(result.store_id)
                result = self._write(now_ns, stopping)
        except UnsureWrite as exc:  # kept apart until settled
            self._unsure = (exc.settle, list(self._pending.values()))
            self._pending = {}
            self._failed(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - the store's failure, not ours: retried
            self._failed(exc)
            return False
        self._written(result)
        if not stopping and time.monotonic() - self._last_prune >= _PRUNE_EVERY_SECONDS:
            self._last_prune = time.monotonic()
            try:
                self.store.prune(
                    now_ns=now_ns, history_ns=_HISTORY_NS, retention_ns=self._retention_ns
                )
            except Exception as exc:  # noqa: BLE001 - pruned next time
                logger.warning("store %s: pruning failed: %s", self.store.url, _text(exc))
        return True

    def _write(self, now_ns: int, stopping: bool) -> WriteResult:
        result = self.store.write(
            self.instance,
            list(self._pending.values()),
            now_ns=now_ns,
            instance_ttl_ns=self._ttl_ns,
            margin_ns=self._margin_ns,
            stopping=stopping,
            expected_store_id=self._store_id,
        )
        if result.applied:
            self._store_id = result.store_id
        return result

    def _beat(self, now_ns: int) -> WriteResult | None:
        """With nothing to write, the heartbeat alone if the store takes it as all there is
        to write (an idle process then reads none of the rows the others change); None if
        it does not, and a write is made instead."""
        store_id = self._store_id
        if store_id is None or not self.store.beat(
            self.instance,
            now_ns=now_ns,
            instance_ttl_ns=self._ttl_ns,
            margin_ns=self._margin_ns,
            expected_store_id=store_id,
        ):
            return None
        return WriteResult(store_id)

    def _settle(self, settle: Callable[[], bool], sent: Sequence[JobChange]) -> None:
        """The write of `sent` whose reply was lost: if the store took it, done with; else
        its changes go back before those collected since. Raises while the store cannot
        tell."""
        taken = settle()
        self._unsure = None
        if taken:
            self._buffered_runs -= sum(len(change.runs) for change in sent)
            # Whatever that write said (a revival, say) is lost: the runs in progress are
            # written again, as after a revival.
            self._reopen()
            return
        pending = self._pending
        self._pending = {}
        for change in sent:
            self._pending[change.name] = change
        for change in pending.values():
            self._pend(change)

    def _reopen(self) -> None:
        """Every job's runs in progress are sent again with the next write."""
        for published in self._published.values():
            published.open_runs = ()
        self._resend = True

    def _reset(self, store_id: str) -> None:
        logger.warning(
            "store %s is new or was emptied: writing this process's whole view to it",
            self.store.url,
        )
        self._store_id = store_id
        # The runs that were waiting go to the new store: they are in no other.
        waiting = {name: change.runs for name, change in self._pending.items() if change.runs}
        self._published.clear()
        self._pending.clear()
        self._collect(full=True, seed=True)
        for name, runs in waiting.items():
            change = self._pending.get(name)
            if change is not None:  # else the job left the view: its runs went with it
                change.runs = runs + change.runs
        self._buffered_runs = sum(len(change.runs) for change in self._pending.values())

    def _failed(self, exc: Exception) -> None:
        error = _text(exc)
        if self._failing is None:
            logger.warning(
                "store %s is unavailable (%s); %d finished runs wait to be written, tried "
                "again after a pause that doubles up to %gs",
                self.store.url,
                error,
                self._buffered_runs,
                self._max_backoff,
            )
        self._failing = error
        self._failures += 1

    def _written(self, result: WriteResult) -> None:
        if self._failing is not None:
            logger.info(
                "store %s is available again; %d finished runs written",
                self.store.url,
                self._buffered_runs,
            )
            self._failing = None
        self._failures = 0
        if result.revived:
            logger.warning(
                "store %s: this process was taken for dead (no heartbeat for longer than "
                "instance_ttl) and its runs in progress were closed as lost; they are shown "
                "as running again, and counted once",
                self.store.url,
            )
            self._reopen()
        for name in result.conflicts:
            logger.warning(
                "job %r: this process registered it with settings that differ from another "
                "instance's; the latest registration wins",
                name,
            )
        self._pending.clear()
        self._buffered_runs = 0
        with _GUARD:
            self._on_written()

    # -- control -----------------------------------------------------------------------

    @property
    def error(self) -> str | None:
        """The error of the last write if it failed, else None."""
        return self._failing

    def flush(self, timeout: float) -> bool:
        """Write what is pending now and wait until written or `timeout` seconds passed,
        trying again while the store refuses (another process may hold its lock for longer
        than one try waits); True if the store took it."""
        if threading.current_thread() is self._thread:  # from on_written, say
            return False
        deadline = time.monotonic() + timeout
        with self._condition:
            while not self._stopping:
                self._requested += 1
                target = self._requested
                self._condition.notify_all()
                done = self._condition.wait_for(
                    functools.partial(self._completed_since, target),
                    timeout=deadline - time.monotonic(),
                )
                if not done or self._last_result:
                    return done
                # Refused: again after a pause (the condition's wait lets the thread run).
                pause = min(_RETRY_SECONDS, deadline - time.monotonic())
                if pause <= 0 or self._condition.wait_for(lambda: self._stopping, pause):
                    return False
            return False

    def _completed_since(self, target: int) -> bool:
        return self._completed >= target

    def stop(self, timeout: float) -> bool:
        """Have the thread write what is left once, marking this instance as stopped, then
        end; wait for it at most `timeout` seconds. True if the last write was taken."""
        deadline = time.monotonic() + timeout
        with self._condition:
            if self._stopping:
                return False
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():  # the store is slow or locked: the thread ends on its own
            logger.warning("store %s: not flushed at shutdown (still busy)", self.store.url)
            return False
        return self._last_result

    def _reset_after_fork(self) -> None:
        # The child is a new instance: it publishes only its own changes from here on. What
        # the parent had not written yet is the parent's to write.
        self.store.after_fork()
        self.instance = self._new_instance()
        self._pending.clear()
        self._unsure = None
        self._buffered_runs = 0
        self._failing = None
        self._failures = 0
        self._resend = False
        self._collect(full=True)
        self._pending.clear()
        self._buffered_runs = 0
        self._start_thread()


def _text(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")[:500]
