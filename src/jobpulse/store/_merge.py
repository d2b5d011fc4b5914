"""How the changes of many instances fold into one row per job: the fleet's merge rules.

- Counts are sums of deltas: they survive restarts and are never counted twice.
- ``last_*`` fields follow the run that ended last: a late batch from another instance
  changes the totals, not the "last" fields. ``consecutive_failures`` counts the failures
  that ended after the last success, whichever instance ran them and however late they are
  written (two processes' runs interleave).
- Settings come from the latest registration; a different one from another instance is a
  conflict, which the caller logs.
- Missed: a slot (the expected next run) whose grace has passed with no run started since
  ``slot - grace``, anywhere, is counted once for the fleet. Two instances reporting the
  same slot count it once: a report counts only if its slot is later than the last one
  counted (by more than half a period for intervals, whose slots differ by a little from
  instance to instance). An instance that registers a scheduled job but has never run it
  (a web worker importing the scheduler's module) has no say on the job's slots while the
  instance that ran it last is alive: its expected runs and missed reports are its own
  view. Once that instance is gone (a deploy), the expected runs of the instance that
  registered the job last are the fleet's, and the slot they replace counts first if its
  grace has passed.

Backends call these inside their own transaction (or atomic script), so that every backend
merges alike. Pure functions of their arguments, apart from a cache of parsed schedules.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import operator
from collections.abc import Container, Iterable, Mapping
from typing import Any

from jobpulse._shared import LOST, Schedule, parse_schedule
from jobpulse.store._base import FinishedRun, FleetRow, JobChange, RunFields

__all__ = [
    "apply_change",
    "claim_overdue",
    "fold_runs",
    "is_missed",
    "judging_time",
    "lost_run",
    "schedule_of",
    "without_runs",
]

_END = operator.itemgetter(2)  # a run's end_ns
_CATEGORY = operator.itemgetter(3)  # None for a success

LOST_INSTANCE_ERROR = "the process running it stopped (instance {instance}, pid {pid} on {host})"


@functools.lru_cache(maxsize=1024)
def _parsed(text: str, timezone: str | None) -> Schedule | None:
    try:
        return parse_schedule(text, timezone)
    except Exception:  # noqa: BLE001 - written by a newer or broken writer: no fleet slots
        return None


def schedule_of(settings: Mapping[str, Any]) -> Schedule | None:
    """The schedule a row's settings name, or None (none, or one this version cannot read)."""
    text = settings.get("schedule")
    if not isinstance(text, str):
        return None
    timezone = settings.get("timezone")
    return _parsed(text, timezone if isinstance(timezone, str) else None)


def _registered(settings: Mapping[str, Any]) -> dict[str, Any]:
    # With stall_after="auto" the effective value follows each instance's own runs.
    if settings.get("stall_after_auto"):
        return {key: value for key, value in settings.items() if key != "stall_after"}
    return dict(settings)


def _tolerance_ns(schedule: Schedule | None) -> int:
    if schedule is not None and schedule.is_interval:
        return int(schedule.period_seconds * 1e9) // 2
    return 0


#: The ends of the failures since the last success a row keeps: enough to count them again
#: when a success that ended among them is written late (past it, the count is kept).
KEPT_FAILURE_ENDS = 64


def fold_runs(row: FleetRow, runs: Iterable[RunFields]) -> bool:
    """Fold finished runs into the row: each one into the last success and the failures
    since it (however late it is written: two processes' runs interleave), and those that
    ended after the run that ended last into the "last" fields. True if one of them is now
    the run that ended last (of runs that ended at the same nanosecond, the one written
    last)."""
    ordered = sorted(runs, key=_END)  # stable: equal ends keep the order written
    # Of successes in a row, in the order they ended, the last one alone leaves the row as
    # all of them do: each one moves the last success on and keeps fewer of the failures
    # since. A flush of a busy process folds tens of thousands of runs, most of them
    # successes: a call for each was half the cost of its write.
    if set(map(_CATEGORY, ordered)) == {None}:  # successes only
        succeeded(row, ordered[-1][2])
    else:
        success = None
        for run in ordered:
            if run[3] is None:
                success = run[2]
                continue
            if success is not None:
                succeeded(row, success)
                success = None
            _failed(row, run[2])
        if success is not None:
            succeeded(row, success)
    if row.last_end_ns is not None:
        del ordered[: bisect.bisect_left(ordered, row.last_end_ns, key=_END)]
    if not ordered:
        return False
    _, last_duration, last_end, last_category, last_error, *_ = ordered[-1]
    row.last_end_ns = last_end
    row.last_duration_ns = last_duration
    if last_category is None:
        row.last_failed = False
        row.last_error = row.last_error_category = None
    else:
        row.last_failed = True
        row.last_error = last_error
        row.last_error_category = last_category
    return True


def _failed(row: FleetRow, end_ns: int) -> None:
    """A failure that ended at `end_ns`: one more since the last success, unless it ended
    before it (at the same nanosecond, the one written last is the later)."""
    if row.last_success_ns is not None and end_ns < row.last_success_ns:
        return
    row.consecutive_failures += 1
    ends = row.failure_ends
    if len(ends) < KEPT_FAILURE_ENDS or end_ns > ends[0]:
        row.failure_ends = tuple(sorted((*ends, end_ns))[-KEPT_FAILURE_ENDS:])


def succeeded(row: FleetRow, end_ns: int) -> None:
    """A success that ended at `end_ns`: the last success unless it ended before it, and
    then the failures since are those that ended after it."""
    if row.last_success_ns is not None and end_ns < row.last_success_ns:
        return
    row.last_success_ns = end_ns
    ends = row.failure_ends
    if not ends:  # none kept: none since (or a streak seeded without its ends, before it)
        row.consecutive_failures = 0
        return
    later = tuple(end for end in ends if end > end_ns)
    if len(ends) < KEPT_FAILURE_ENDS or len(later) < len(ends):
        # Every failure counted is kept, or the success ended after some kept one (and so
        # after every one not kept): the count is exact.
        row.consecutive_failures = len(later)
        row.failure_ends = later


def _effective_slot(
    slot: int | None, grace_ns: int, last_start_ns: int | None, schedule: Schedule | None
) -> int | None:
    """The expected run `slot`, moved on if a run took it (the instance that ran it may be
    gone before it says what comes next)."""
    if slot is None:
        return None
    if last_start_ns is not None and last_start_ns >= slot - grace_ns:
        return None if schedule is None else schedule.next_after(max(last_start_ns, slot))
    return slot


def is_missed(
    next_run_ns: int | None,
    grace_ns: int,
    last_start_ns: int | None,
    last_missed_ns: int | None,
    schedule: Schedule | None,
    now_ns: int,
) -> bool:
    """Whether the fleet has missed a job's schedule as of `now_ns` (its row's fields): a
    slot was counted missed and no run started since, or the expected run is past its grace
    with none started."""
    if last_missed_ns is not None and (last_start_ns is None or last_start_ns < last_missed_ns):
        return True
    slot = _effective_slot(next_run_ns, grace_ns, last_start_ns, schedule)
    return slot is not None and now_ns >= slot + grace_ns


def claim_overdue(row: FleetRow, now_ns: int, margin_ns: int, *, running: bool = False) -> int:
    """Count the row's overdue slots (more than grace + `margin_ns` past, none taken) for
    the fleet and move its expected run past them; returns how many were counted. A job
    with a run in progress anywhere is alive: its slots move on uncounted."""
    schedule = schedule_of(row.settings)
    slot = _effective_slot(row.next_run_ns, row.grace_ns, row.last_start_ns, schedule)
    if slot != row.next_run_ns:
        if row.next_run_ns is not None and now_ns < row.next_run_ns + row.grace_ns + margin_ns:
            return 0  # taken just now: the instance that took it says what comes next
        row.next_run_ns = slot
    if slot is None or now_ns < slot + row.grace_ns + margin_ns:
        return 0
    if schedule is None:
        count, last, following = 1, slot, None
    else:
        more, last_more = schedule.count_until(slot, now_ns - row.grace_ns)
        count, last = 1 + more, last_more or slot
        following = schedule.next_after(last)
    row.next_run_ns = following
    row.updated_ns = max(row.updated_ns, now_ns)
    if running:
        return 0
    return _count_missed(row, count, last, schedule)


def _count_missed(row: FleetRow, count: int, last: int, schedule: Schedule | None) -> int:
    counted = row.last_missed_ns
    if counted is not None and last <= counted + _tolerance_ns(schedule):
        return 0  # another instance (or an earlier write) counted this slot
    row.missed_count += count
    row.last_missed_ns = last
    return count


def apply_change(
    row: FleetRow | None,
    change: JobChange,
    instance: str,
    now_ns: int,
    margin_ns: int,
    *,
    running: bool = False,
    live: Container[str] = (),
) -> tuple[FleetRow, bool, int]:
    """`change` from `instance` folded into `row` (a new row when None). `running` says
    whether the job has a run in progress on a live instance; `live` holds the ids of the
    live instances. Returns the row, whether its settings conflict with another instance's,
    and how many missed slots were counted for the fleet on the way."""
    if row is None:
        row = FleetRow(change.name, created_ns=change.created_ns, updated_ns=change.updated_ns)
    row.created_ns = min(row.created_ns, change.created_ns)
    row.updated_ns = max(row.updated_ns, change.updated_ns)
    if change.last_start_ns is not None and (
        row.last_start_ns is None or change.last_start_ns > row.last_start_ns
    ):
        row.last_start_ns = change.last_start_ns
        row.runner = instance
    # The slot held so far is judged before this change moves it (a restarted instance
    # says when it next expects the job; the slot it missed while down counts first).
    missed_slots = claim_overdue(row, now_ns, margin_ns, running=running)
    conflict = False
    if change.settings is not None:
        settings = dict(change.settings)
        conflict = (
            bool(row.settings)
            and row.settings_instance not in ("", instance)
            and _registered(row.settings) != _registered(settings)
        )
        row.settings, row.settings_instance = settings, instance
    row.success_count += change.success
    row.failure_count += change.failure
    row.timeout_count += change.timeouts
    row.total_duration_ns += change.total_duration_ns
    row.history_dropped += change.dropped_runs
    if change.min_ns is not None and (row.min_ns is None or change.min_ns < row.min_ns):
        row.min_ns = change.min_ns
    if change.max_ns is not None and (row.max_ns is None or change.max_ns > row.max_ns):
        row.max_ns = change.max_ns
    if change.seed_last is not None and row.last_end_ns is None:
        end_ns, duration_ns, failed, consecutive, error, category = change.seed_last
        row.last_end_ns, row.last_duration_ns, row.last_failed = end_ns, duration_ns, failed
        row.consecutive_failures, row.last_error, row.last_error_category = (
            consecutive,
            error,
            category,
        )
        if change.metadata is not None:
            row.metadata = dict(change.metadata)
    if fold_runs(row, change.runs) and change.metadata is not None:
        row.metadata = dict(change.metadata)
    last_success = change.last_success_ns  # the instance's own: its run may have been
    if last_success is not None and (  # left out of a full buffer
        row.last_success_ns is None or last_success > row.last_success_ns
    ):
        succeeded(row, last_success)
    if change.skipped:
        row.skipped_count += change.skipped
        row.last_skip_reason = change.last_skip_reason
    # An instance that never ran the job speaks for its slots only if none has, or if the
    # one that ran it last is gone and this one registered it last (its successor).
    ran = change.last_start_ns is not None
    says = (
        ran
        or row.last_start_ns is None
        or (row.runner not in live and row.settings_instance == instance)
    )
    if says and change.missed and change.last_missed_ns is not None:
        missed_slots += _count_missed(
            row, change.missed, change.last_missed_ns, schedule_of(row.settings)
        )
    if says and change.next_run is not None:
        if not ran:  # no live instance ran the held slot: past its grace, it was missed
            missed_slots += claim_overdue(row, now_ns, 0, running=running)
        row.next_run_ns, row.grace_ns = change.next_run
    return row, conflict, missed_slots


def lost_run(row: FleetRow, start_ns: int, now_ns: int, error: str) -> FinishedRun:
    """A run of a dead instance, closed now as failed with category ``lost``, counted."""
    run = FinishedRun(start_ns, max(now_ns - start_ns, 0), now_ns, LOST, error)
    row.failure_count += 1
    row.total_duration_ns += run.duration_ns
    if row.min_ns is None or run.duration_ns < row.min_ns:
        row.min_ns = run.duration_ns
    if row.max_ns is None or run.duration_ns > row.max_ns:
        row.max_ns = run.duration_ns
    row.updated_ns = max(row.updated_ns, now_ns)
    fold_runs(row, (run,))
    return run


def judging_time(now_ns: int, previous_ns: int | None, margin_ns: int) -> int | None:
    """The time against which an instance judges the others' heartbeats at a write: `now_ns`,
    or, if its own previous heartbeat (`previous_ns`) is more than `margin_ns` old, that
    heartbeat plus the margin. An instance that could not write for a while (the store was
    out, the process was stopped, the host slept, the wall clock stepped forward) cannot
    tell whether the others could: they may have been away as long, and are judged at its
    next write. None at an instance's first write: it has not seen the others write yet."""
    if previous_ns is None:
        return None
    return min(now_ns, previous_ns + margin_ns)


def without_runs(change: JobChange, starts: Mapping[int, int]) -> tuple[JobChange, list[int]]:
    """`change` without its finished runs that started at one of `starts`, at most as many
    of each start as `starts` gives (runs closed as lost while their instance was taken for
    dead, counted already; several runs of a job may start in the same clock tick), and
    their part of its counts, its last success and its extremes. Returns the change and the
    starts of the runs taken out."""
    kept: list[RunFields] = []
    taken: list[int] = []
    left = dict(starts)
    success = failure = timeouts = duration = 0
    for run in change.runs:
        if not left.get(run[0]):
            kept.append(run)
            continue
        left[run[0]] -= 1
        taken.append(run[0])
        duration += run[1]
        if run[3] is None:
            success += 1
        else:
            failure += 1
            timeouts += run[5]
    if not taken:
        return change, taken
    last_success_ns, min_ns, max_ns = change.last_success_ns, change.min_ns, change.max_ns
    if not change.dropped_runs:
        # The instance's own last success and extremes, absolute, counted the runs taken
        # out; those of its runs written before are in the row already, so the runs kept
        # give the rest exactly (unless some were left out of the buffer: kept as they are).
        last_success_ns = max((run[2] for run in kept if run[3] is None), default=None)
        min_ns = min((run[1] for run in kept), default=None)
        max_ns = max((run[1] for run in kept), default=None)
    return dataclasses.replace(
        change,
        runs=kept,
        success=change.success - success,
        failure=change.failure - failure,
        timeouts=change.timeouts - timeouts,
        total_duration_ns=change.total_duration_ns - duration,
        last_success_ns=last_success_ns,
        min_ns=min_ns,
        max_ns=max_ns,
    ), taken
