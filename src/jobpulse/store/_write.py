"""One write of an instance's changes, planned alike whatever the backend.

A backend reads what a write needs (`WriteState`) inside its transaction (SQLite) or while
it holds the store's write lock (Redis); `plan_write` then does the whole write in memory by
the merge rules of `jobpulse.store._merge`: it takes out of the changes the runs that were
closed as lost while their instance seemed dead, folds each change into its job's row,
closes the runs of the dead instances (each once: it is claimed), and counts the fleet's
overdue slots. The backend stores the plan (`WritePlan`) in the same transaction or script.
So every backend merges alike: only reading and storing are theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from jobpulse.store._base import FleetRow, Instance, JobChange
from jobpulse.store._merge import (
    LOST_INSTANCE_ERROR,
    apply_change,
    claim_overdue,
    judging_time,
    lost_run,
    without_runs,
)

__all__ = ["StoredInstance", "WritePlan", "WriteState", "plan_write"]

_RUN = Sequence[Any]  # (start_ns, duration_ns, end_ns, category, ...)


class StoredInstance(NamedTuple):
    """An instance as the store holds it, for judging whether it is dead."""

    id: str
    host: str
    pid: int
    last_seen_ns: int
    stopped: bool
    closed: bool


@dataclass
class WriteState:
    """What the store holds that one write needs, read at its start (before the instance's
    heartbeat is stored)."""

    #: The writing instance's previous heartbeat (None at its first write), and whether it
    #: was taken for dead since.
    previous_seen_ns: int | None
    revived: bool
    #: Every instance the store knows.
    instances: Sequence[StoredInstance]
    #: The runs in progress of every instance, as (job, run id, start_ns).
    open_runs: Mapping[str, Sequence[tuple[str, int, int]]]
    #: The writing instance's runs that were closed as lost: per job, their run ids by start.
    claims: Mapping[str, Mapping[int, Sequence[int]]]
    #: The store's row of a job, or None for a new one; the plan changes it in place.
    row: Callable[[str], FleetRow | None]
    #: The jobs whose expected run plus grace plus the margin (the second argument) has
    #: passed as of the first argument: a superset is fine.
    overdue: Callable[[int, int], Iterable[str]]
    #: The (job, run id) of an instance's runs closed as lost already.
    lost_before: Callable[[str], Collection[tuple[str, int]]]


@dataclass
class WritePlan:
    """What one write stores."""

    #: The rows it changed.
    rows: dict[str, FleetRow] = field(default_factory=dict)
    #: Per job, the finished runs it adds to the history, in the order they ended.
    runs: dict[str, Sequence[_RUN]] = field(default_factory=dict)
    #: Per job whose runs in progress on the writing instance changed: (job, its runs as
    #: (run id, start_ns), their stall_after_ns).
    open_runs: list[tuple[str, tuple[tuple[int, int], ...], int]] = field(default_factory=list)
    #: Instances found dead: marked closed, their runs in progress dropped.
    closed: list[str] = field(default_factory=list)
    #: Runs closed as lost by this write, to claim: (instance, job, run id, start_ns).
    lost: list[tuple[str, str, int, int]] = field(default_factory=list)
    #: The writing instance's claims its changes matched, to drop: (job, run id).
    ended: list[tuple[str, int]] = field(default_factory=list)
    #: Runs in progress of other instances that this write's runs are (`JobChange.ran_in`):
    #: (instance, job, run id, start_ns), to drop from the runs in progress and to claim
    #: (as counted already: never lost when their instance is found dead).
    absorbed: list[tuple[str, str, int, int]] = field(default_factory=list)
    missed_slots: int = 0
    conflicts: list[str] = field(default_factory=list)


def plan_write(
    instance: Instance,
    changes: Sequence[JobChange],
    state: WriteState,
    *,
    now_ns: int,
    ttl_ns: int,
    margin_ns: int,
) -> WritePlan:
    """The write of `changes` from `instance` as of `now_ns` (see the module)."""
    plan = WritePlan()
    rows = plan.rows
    judge_ns = judging_time(now_ns, state.previous_seen_ns, margin_ns)
    live_since = (now_ns if judge_ns is None else judge_ns) - ttl_ns
    live = {
        other.id
        for other in state.instances
        if not other.stopped and other.last_seen_ns >= live_since
    }
    live.add(instance.id)
    open_runs = {who: list(runs) for who, runs in state.open_runs.items()}
    for change in changes:
        if change.ran_in:
            _absorb(plan, instance, change, state.instances, open_runs)
    running = {job for who, runs in open_runs.items() if who in live for job, _, _ in runs}

    def take(name: str) -> FleetRow | None:
        row = rows.get(name)
        if row is None:
            row = state.row(name)
            if row is not None:
                rows[name] = row
        return row

    for change in changes:
        name = change.name
        claimed = state.claims.get(name)
        if claimed and change.runs:
            change, matched = without_runs(
                change, {start: len(ids) for start, ids in claimed.items()}
            )
            left = {start: list(ids) for start, ids in claimed.items()}
            plan.ended.extend((name, left[start].pop()) for start in matched)
        row, conflict, counted = apply_change(
            take(name),
            change,
            instance.id,
            now_ns,
            margin_ns,
            running=name in running or bool(change.open_runs),
            live=live,
        )
        rows[name] = row
        plan.missed_slots += counted
        if conflict:
            plan.conflicts.append(name)
        if change.runs:
            plan.runs[name] = change.runs
        if change.open_runs is not None:
            plan.open_runs.append((name, change.open_runs, change.stall_after_ns))
    # At its first write, an instance takes only stopped instances for dead.
    for other in state.instances:
        if other.closed or other.id == instance.id:
            continue
        if not other.stopped and (judge_ns is None or other.last_seen_ns >= judge_ns - ttl_ns):
            continue
        plan.closed.append(other.id)
        _close(plan, other, open_runs.get(other.id, ()), state, now_ns, take)
    for name in state.overdue(now_ns, margin_ns):
        overdue = take(name)
        if overdue is not None:
            plan.missed_slots += claim_overdue(overdue, now_ns, margin_ns, running=name in running)
    return plan


def _close(
    plan: WritePlan,
    dead: StoredInstance,
    runs: Sequence[tuple[str, int, int]],
    state: WriteState,
    now_ns: int,
    take: Callable[[str], FleetRow | None],
) -> None:
    """Close the runs in progress of the `dead` instance as lost, but those closed already
    (before it came back and died again)."""
    if not runs:
        return
    before = state.lost_before(dead.id)
    error = LOST_INSTANCE_ERROR.format(instance=dead.id, pid=dead.pid, host=dead.host)
    for name, run_id, start_ns in runs:
        if (name, run_id) in before:
            continue
        row = take(name)
        if row is None:  # a job pruned meanwhile: nothing to count it in
            continue
        run = lost_run(row, start_ns, now_ns, error)
        plan.runs[name] = [*plan.runs.get(name, ()), run]  # not the change's list
        plan.lost.append((dead.id, name, run_id, start_ns))


def _absorb(
    plan: WritePlan,
    writer: Instance,
    change: JobChange,
    instances: Sequence[StoredInstance],
    open_runs: dict[str, list[tuple[str, int, int]]],
) -> None:
    """The runs of `change.name` left open by the processes of the writer's host that
    `change.ran_in` names are the change's runs: taken from `open_runs` into
    `plan.absorbed`. A pid may have been another process's before: the one seen last."""
    for pid in set(change.ran_in):
        ran = [
            other
            for other in instances
            if other.host == writer.host and other.pid == pid and other.id != writer.id
        ]
        if not ran:
            continue
        who = max(ran, key=lambda other: other.last_seen_ns).id
        left = open_runs.get(who, [])
        for name, run_id, start_ns in left:
            if name == change.name:
                plan.absorbed.append((who, name, run_id, start_ns))
        open_runs[who] = [run for run in left if run[0] != change.name]
