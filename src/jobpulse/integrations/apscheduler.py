"""APScheduler 3.x: every job of a scheduler monitored, with no decorator on the jobs.

::

    from apscheduler.schedulers.background import BackgroundScheduler
    from jobpulse.integrations.apscheduler import instrument_scheduler

    scheduler = BackgroundScheduler()
    monitor = instrument_scheduler(scheduler)   # before or after start()
    scheduler.add_job(index_blocks, "interval", minutes=2, id="btc_transaction_indexing")

or, for every scheduler of the process, `APSchedulerInstrumentor` (also what
``opentelemetry-instrument python app.py`` turns on through the ``opentelemetry_instrumentor``
entry point).

How it works (see docs/apscheduler.md for the user's view):

- Runs: the executors call the module-level ``run_job`` / ``run_coroutine_job`` functions of
  ``apscheduler.executors.base``, imported by name into each executor module. Those names
  are replaced by wrappers that call APScheduler's own function with a proxy of the job
  whose ``func`` opens the run (a `JobRun`) in the thread or event loop task that runs it:
  exact durations, the job's own spans as children, exceptions recorded and re-raised
  unchanged to APScheduler. The job itself is never copied or modified.
- Expected runs: the next run time comes from APScheduler (``job.next_run_time``, computed
  by the job's trigger) and is handed to `JobMonitor.set_next_run`, only from events that
  APScheduler delivers on the scheduler's thread or the thread that called its API. A run's
  next run time is applied once that run has started (or was declared missed), whichever
  order APScheduler's SUBMITTED event and the run come in.
- APScheduler's MISSED events become `JobMonitor.record_missed` (reason ``misfire``), its
  MAX_INSTANCES events `JobMonitor.record_skipped` (reason ``max_instances``).
- Process pools: the job runs in a child process, where the wrapper (pickled by reference)
  only measures it; the parent records the finished run with `JobMonitor.record_run`.

Supported: APScheduler >= 3.10, < 4. APScheduler 4 (a pre-release with a different API) is
not supported.
"""

from __future__ import annotations

import functools
import gc
import importlib
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timezone
from typing import Any

from jobpulse import InvalidJobError, JobMonitor, JobRun, RedactingFilter
from jobpulse._shared import (
    CODE_FUNCTION,
    FAAS_TRIGGER,
    JOB_NAME,
    JOB_NAME_ATTRIBUTE,
    MAX_NAME_CHARS,
    Guard,
    classify_exception,
    from_ns,
    validate_name,
)
from jobpulse.integrations._common import MonitorChoice, check_monitor, require_version

try:
    APSCHEDULER_VERSION = require_version("apscheduler", "3.10", "4", "apscheduler")
except ImportError as exc:
    raise ImportError(
        f"{exc} (APScheduler 4 is a pre-release with a different API and is not supported)"
    ) from None

try:
    from apscheduler.events import (
        EVENT_ALL_JOBS_REMOVED,
        EVENT_EXECUTOR_ADDED,
        EVENT_JOB_ADDED,
        EVENT_JOB_ERROR,
        EVENT_JOB_EXECUTED,
        EVENT_JOB_MAX_INSTANCES,
        EVENT_JOB_MISSED,
        EVENT_JOB_MODIFIED,
        EVENT_JOB_REMOVED,
        EVENT_JOB_SUBMITTED,
        EVENT_SCHEDULER_PAUSED,
        EVENT_SCHEDULER_RESUMED,
        EVENT_SCHEDULER_SHUTDOWN,
        EVENT_SCHEDULER_STARTED,
    )
    from apscheduler.executors import base as _base
    from apscheduler.executors.pool import ProcessPoolExecutor
    from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED, BaseScheduler
    from apscheduler.util import get_callable_name
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
        BaseInstrumentor,
    )
except ImportError:  # pragma: no cover - the extra installs both
    raise ImportError(
        "jobpulse.integrations.apscheduler needs apscheduler and "
        "opentelemetry-instrumentation: pip install 'jobpulse[apscheduler]'"
    ) from None

__all__ = [
    "APSCHEDULER_VERSION",
    "APSchedulerInstrumentor",
    "instrument_scheduler",
    "job_name",
    "uninstrument_scheduler",
]

logger = logging.getLogger("jobpulse")

#: Span attributes of a run, besides ``job.name`` and ``code.function.name``.
JOB_ID = "apscheduler.job_id"
TRIGGER = "apscheduler.trigger"
#: The reasons given to `JobMonitor.record_missed` / `record_skipped`.
MISFIRE = "misfire"
MAX_INSTANCES = "max_instances"

# APScheduler's default job id: uuid4().hex.
_DEFAULT_ID = re.compile(r"[0-9a-f]{32}")
# Attributes the run wrapper puts on the events it returns (picklable, for process pools).
_NAME_ATTR = "_jobpulse_job_name"
_RUN_ATTR = "_jobpulse_run"

_EVENT_MASK = (
    EVENT_SCHEDULER_STARTED
    | EVENT_SCHEDULER_SHUTDOWN
    | EVENT_SCHEDULER_PAUSED
    | EVENT_SCHEDULER_RESUMED
    | EVENT_EXECUTOR_ADDED
    | EVENT_ALL_JOBS_REMOVED
    | EVENT_JOB_ADDED
    | EVENT_JOB_REMOVED
    | EVENT_JOB_MODIFIED
    | EVENT_JOB_EXECUTED
    | EVENT_JOB_ERROR
    | EVENT_JOB_MISSED
    | EVENT_JOB_SUBMITTED
    | EVENT_JOB_MAX_INSTANCES
)

_LISTENER_GUARD = Guard("apscheduler listener")
_RUN_GUARD = Guard("apscheduler run bookkeeping")
_START_GUARD = Guard("apscheduler instrumentor start")

# The executor modules and the run functions each imported from apscheduler.executors.base.
# The first three come with APScheduler; the others import tornado, twisted or gevent and are
# patched only once something imported them (an executor of that kind exists).
_TARGETS = (
    ("apscheduler.executors.pool", "run_job"),
    ("apscheduler.executors.asyncio", "run_job"),
    ("apscheduler.executors.asyncio", "run_coroutine_job"),
    ("apscheduler.executors.debug", "run_job"),
    ("apscheduler.executors.tornado", "run_job"),
    ("apscheduler.executors.tornado", "run_coroutine_job"),
    ("apscheduler.executors.twisted", "run_job"),
    ("apscheduler.executors.gevent", "run_job"),
)
_BUILTIN_EXECUTORS = frozenset(
    ("apscheduler.executors.pool", "apscheduler.executors.asyncio", "apscheduler.executors.debug")
)

_lock = threading.RLock()
_states: weakref.WeakKeyDictionary[Any, _SchedulerState] = weakref.WeakKeyDictionary()
_patched: dict[tuple[str, str], Any] = {}  # (module, name) -> what was there before
_filtered_loggers: set[str] = set()
_warned_ids: set[str] = set()


# -- job names ---------------------------------------------------------------------------


def _unwrapped(func: Any) -> Any:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def _callable_name(func: Any) -> str:
    func = _unwrapped(func)
    module = getattr(func, "__module__", None) or type(func).__module__
    return f"{module}:{get_callable_name(func)}"


def _function_name(job: Any) -> str:
    ref = getattr(job, "func_ref", None)
    return ref if isinstance(ref, str) and ref else _callable_name(job.func)


def _decorated_name(func: Any) -> str | None:
    name = getattr(_unwrapped(func), JOB_NAME_ATTRIBUTE, None)
    return name if isinstance(name, str) and name else None


def job_name(job: Any) -> str:
    """The job name jobpulse gives an APScheduler job: its id when the user set one, else
    the job name of its function if that is decorated with `JobMonitor.job` (seen through
    `functools.partial`), so that a run is one run, else its function's ``module:qualname``
    (APScheduler's default id, 32 hex digits of a uuid4, changes on every restart, so it is
    never used). Two jobs without an id that run the same function therefore share one
    name: give them ids. An id that is not a valid job name (over 200 characters,
    unprintable) falls back to the function's name."""
    job_id = job.id
    if isinstance(job_id, str) and not _DEFAULT_ID.fullmatch(job_id):
        try:
            return validate_name(job_id)
        except InvalidJobError as exc:
            if job_id not in _warned_ids and len(_warned_ids) < 100:
                _warned_ids.add(job_id)
                logger.warning("APScheduler job named after its function: %s", exc)
    return _decorated_name(job.func) or _function_name(job)[:MAX_NAME_CHARS]


def _run_attributes(job: Any, name: str) -> dict[str, str]:
    return {
        JOB_NAME: name,
        CODE_FUNCTION: _function_name(job),
        FAAS_TRIGGER: "timer",
        JOB_ID: str(job.id),
        TRIGGER: str(job.trigger),
    }


# -- the run wrappers --------------------------------------------------------------------


class _JobProxy:
    """The job as APScheduler's ``run_job`` sees it: the real job, but `func` monitored."""

    __slots__ = ("_job", "func")

    def __init__(self, job: Any, func: Callable[..., Any]) -> None:
        self._job = job
        self.func = func

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)

    def __repr__(self) -> str:
        return repr(self._job)


def _state_of(job: Any) -> _SchedulerState | None:
    scheduler = getattr(job, "_scheduler", None)
    return None if scheduler is None else _states.get(scheduler)


def _run_job(job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str) -> Any:
    """What the executors call instead of ``apscheduler.executors.base.run_job``."""
    _filter_logger(logger_name)
    state = _state_of(job)
    if state is not None:
        return state.run(job, jobstore_alias, run_times, logger_name)
    if getattr(job, "_scheduler", None) is None:  # unpickled: a process pool's child
        return _run_job_measured(job, jobstore_alias, run_times, logger_name)
    return _base.run_job(job, jobstore_alias, run_times, logger_name)


async def _run_coroutine_job(
    job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str
) -> Any:
    """What the executors call instead of ``apscheduler.executors.base.run_coroutine_job``."""
    _filter_logger(logger_name)
    state = _state_of(job)
    if state is None:
        return await _base.run_coroutine_job(job, jobstore_alias, run_times, logger_name)
    return await state.run_coroutine(job, jobstore_alias, run_times, logger_name)


def _run_job_measured(
    job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str
) -> Any:
    """A run in a process pool's child: no span here (the child may have no OpenTelemetry
    at all); each run's start, end and error category go back to the parent on its event."""
    name = job_name(job)
    attributes: dict[str, str | int] = {
        **_run_attributes(job, name),
        "process.pid": os.getpid(),
    }
    del attributes[JOB_NAME]
    measured: list[tuple[int, int, str | None]] = []
    func = job.func

    def measure(*args: Any, **kwargs: Any) -> Any:
        start = time.time_ns()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            measured.append((start, time.time_ns(), classify_exception(exc)))
            raise
        measured.append((start, time.time_ns(), None))
        return result

    events = _base.run_job(_JobProxy(job, measure), jobstore_alias, run_times, logger_name)
    with _RUN_GUARD:
        for event in events:
            setattr(event, _NAME_ATTR, name)
        results = [event for event in events if event.code in (EVENT_JOB_EXECUTED, EVENT_JOB_ERROR)]
        for event, run in zip(results, measured, strict=False):
            setattr(event, _RUN_ATTR, (*run, attributes))
    return events


# -- logging -----------------------------------------------------------------------------


# Redacts the records of APScheduler's executor loggers (which log the job's exception).
_REDACTOR = RedactingFilter()


def _filter_logger(logger_name: str) -> None:
    if logger_name in _filtered_loggers:
        return
    with _lock:
        if logger_name not in _filtered_loggers:
            logging.getLogger(logger_name).addFilter(_REDACTOR)
            _filtered_loggers.add(logger_name)


# -- one instrumented scheduler ----------------------------------------------------------


class _Track:
    """What is known of one job of an instrumented scheduler (guarded by the state's lock).

    ``schedule``: the job's trigger and next run time when last seen on the scheduler.
    ``settled``: the latest scheduled time whose run has started or was declared missed.
    ``deferred``: a next run time learned before the run it follows started, with the
    scheduled time of that run; applied once that run starts.
    ``func``, ``trigger``, ``attributes``: the run attributes, cached for those objects.
    """

    __slots__ = (
        "attributes",
        "deferred",
        "func",
        "jobstore",
        "name",
        "schedule",
        "settled",
        "trigger",
    )

    def __init__(self, name: str, jobstore: str | None) -> None:
        self.name = name
        self.jobstore = jobstore
        self.schedule: tuple[Any, datetime | None] = (None, None)
        self.func: Any = None
        self.trigger: Any = None
        self.attributes: dict[str, str] = {}
        self.settled: datetime | None = None
        self.deferred: tuple[datetime | None, datetime] | None = None

    def ended(self, now: datetime) -> bool:
        """Whether the job's schedule has run out: it was due and its trigger fires no more
        (a one-shot date job, a cron job past its end date). APScheduler then removes it."""
        trigger, due = self.schedule
        return due is not None and due <= now and trigger.get_next_fire_time(due, now) is None


class _SchedulerState:
    """The monitor one scheduler reports to, its listener, and what it knows of its jobs.

    Thread-safe. Holds the scheduler weakly. Only handlers of events delivered on the
    scheduler's thread or the API caller's thread call the scheduler (``get_job``,
    ``get_jobs``); events from pool threads (EXECUTED, ERROR, MISSED) never do: during
    ``shutdown(wait=True)`` the scheduler holds its job store lock while joining the pool.
    The expected run is handed to the monitor under this state's lock, so that updates
    decided in one order reach the monitor in that order; the monitor never calls back.
    """

    def __init__(self, scheduler: Any, monitor: JobMonitor, owned: bool = False) -> None:
        self._scheduler = weakref.ref(scheduler)
        self.owned = owned  # made by instrument_scheduler: uninstrument_scheduler shuts it down
        self.monitor = monitor
        self._lock = threading.Lock()
        self._tracks: dict[str, _Track] = {}

    # -- runs (executor threads and event loops) ------------------------------------------

    def _describe(self, job: Any) -> tuple[str, dict[str, str]]:
        """The job's name and run attributes, cached on its track while func and trigger
        stay the same objects. A job with no track (removed while due) is not tracked."""
        with self._lock:
            track = self._tracks.get(job.id)
            if track is not None and track.func is job.func and track.trigger is job.trigger:
                return track.name, track.attributes
        name = track.name if track is not None else job_name(job)
        attributes = _run_attributes(job, name)
        if track is not None:
            with self._lock:
                track.func, track.trigger, track.attributes = job.func, job.trigger, attributes
        return name, attributes

    def run(
        self, job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str
    ) -> Any:
        name, attributes = self._describe(job)
        monitor, func, job_id = self.monitor, job.func, job.id
        through = run_times[-1]

        def monitored(*args: Any, **kwargs: Any) -> Any:
            with JobRun(monitor, name, attributes):
                self._settle(job_id, through)
                return func(*args, **kwargs)

        try:
            events = _base.run_job(
                _JobProxy(job, monitored), jobstore_alias, run_times, logger_name
            )
        finally:
            self._settle(job_id, through)  # runs declared missed never call func
        _name_events(events, name)
        return events

    async def run_coroutine(
        self, job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str
    ) -> Any:
        name, attributes = self._describe(job)
        monitor, func, job_id = self.monitor, job.func, job.id
        through = run_times[-1]

        async def monitored(*args: Any, **kwargs: Any) -> Any:
            async with JobRun(monitor, name, attributes):
                self._settle(job_id, through)
                return await func(*args, **kwargs)

        try:
            events = await _base.run_coroutine_job(
                _JobProxy(job, monitored), jobstore_alias, run_times, logger_name
            )
        finally:
            self._settle(job_id, through)
        _name_events(events, name)
        return events

    def _settle(self, job_id: str, through: datetime) -> None:
        """The run scheduled at `through` started (or was declared missed): apply the next
        run time learned meanwhile."""
        with _RUN_GUARD, self._lock:
            track = self._tracks.get(job_id)
            if track is None:
                return
            if track.settled is None or through > track.settled:
                track.settled = through
            deferred = track.deferred
            if deferred is not None and deferred[1] <= through:
                track.deferred = None
                self.monitor.set_next_run(track.name, deferred[0])

    # -- events ---------------------------------------------------------------------------

    def on_event(self, event: Any) -> None:
        """The scheduler's listener. Never raises (APScheduler would log it as its own)."""
        with _LISTENER_GUARD:
            code = event.code
            if code == EVENT_JOB_SUBMITTED:
                self._on_submitted(event, skipped=False)
            elif code in (EVENT_JOB_EXECUTED, EVENT_JOB_ERROR):
                self._on_result(event)
            elif code == EVENT_JOB_MISSED:
                self._on_missed(event)
            elif code == EVENT_JOB_MAX_INSTANCES:
                self._on_submitted(event, skipped=True)
            elif code in (EVENT_JOB_ADDED, EVENT_JOB_MODIFIED):
                self._on_changed(event)
            elif code == EVENT_JOB_REMOVED:
                self._on_removed(event)
            elif code == EVENT_ALL_JOBS_REMOVED:
                alias = event.alias
                self._forget(lambda track_id, track: alias is None or track.jobstore == alias)
            elif code in (EVENT_SCHEDULER_STARTED, EVENT_SCHEDULER_RESUMED):
                self.walk()
            elif code in (EVENT_SCHEDULER_PAUSED, EVENT_SCHEDULER_SHUTDOWN):
                self.expect_nothing()
            else:  # EVENT_EXECUTOR_ADDED: its module may be one not patched yet
                _patch_executors()

    def _track_locked(self, job: Any, jobstore: str | None) -> tuple[_Track, str | None]:
        """The job's track, created or renamed (returned: a name it no longer uses)."""
        name = job_name(job)
        track = self._tracks.get(job.id)
        if track is None:
            track = self._tracks[job.id] = _Track(name, jobstore)
        track.schedule = (job.trigger, getattr(job, "next_run_time", None))
        old = None
        if track.name != name:
            old, track.name, track.func = track.name, name, None
        if jobstore is not None:
            track.jobstore = jobstore
        if old is not None and any(other.name == old for other in self._tracks.values()):
            old = None
        return track, old

    def _live_scheduler(self) -> Any:
        scheduler = self._scheduler()
        if scheduler is None:  # pragma: no cover - its events come from the scheduler itself
            raise ReferenceError("the instrumented scheduler no longer exists")
        return scheduler

    def _expected(self, scheduler: Any, job: Any) -> datetime | None:
        if scheduler.state != STATE_RUNNING:
            return None  # paused: no run is expected
        when: datetime | None = getattr(job, "next_run_time", None)
        return when

    def _on_changed(self, event: Any) -> None:
        scheduler = self._live_scheduler()
        if scheduler.state == STATE_STOPPED:
            # Not started (the walk at start learns the job) or shutting down, maybe holding
            # the job store lock while it waits for the thread this event came from.
            return
        job = scheduler.get_job(event.job_id, event.jobstore)
        if job is None:  # removed by another thread meanwhile
            return
        with self._lock:
            track, old = self._track_locked(job, event.jobstore)
            track.deferred = None
            self.monitor.set_next_run(track.name, self._expected(scheduler, job))
        if old is not None:
            self.monitor.unregister(old)

    def _on_submitted(self, event: Any, *, skipped: bool) -> None:
        scheduler = self._live_scheduler()
        if scheduler.state == STATE_STOPPED:  # shutting down: nothing more is expected
            return
        job = scheduler.get_job(event.job_id, event.jobstore)
        if job is None:  # a one-shot job, removed as it was submitted
            return
        expected = self._expected(scheduler, job)
        through = event.scheduled_run_times[-1]
        # A process pool's run starts in another process: nothing here to wait for.
        apply_now = skipped or isinstance(
            scheduler._executors.get(job.executor), ProcessPoolExecutor
        )
        with self._lock:
            track, old = self._track_locked(job, event.jobstore)
            if apply_now or (track.settled is not None and track.settled >= through):
                track.deferred = None
                self.monitor.set_next_run(track.name, expected)
            else:
                track.deferred = (expected, through)
            name = track.name
        if old is not None:
            self.monitor.unregister(old)
        if skipped:
            for scheduled in event.scheduled_run_times:
                self.monitor.record_skipped(name, reason=MAX_INSTANCES, scheduled_at=scheduled)

    def _name_of(self, event: Any) -> str | None:
        name: str | None = getattr(event, _NAME_ATTR, None)
        if name is None:
            with self._lock:
                track = self._tracks.get(event.job_id)
                name = None if track is None else track.name
        return name

    def _on_missed(self, event: Any) -> None:
        name = self._name_of(event)
        if name is not None:
            self.monitor.record_missed(name, scheduled_at=event.scheduled_run_time, reason=MISFIRE)

    def _on_result(self, event: Any) -> None:
        run = getattr(event, _RUN_ATTR, None)
        if run is None:
            return  # a run in this process: its span already said everything
        name = self._name_of(event)
        if name is None:  # pragma: no cover - a child names every event it returns
            return
        start_ns, end_ns, category, attributes = run
        self.monitor.record_run(
            name,
            start=from_ns(start_ns),
            end=from_ns(end_ns),
            error=event.exception if event.code == EVENT_JOB_ERROR else None,
            category=category,
            attributes=attributes,
        )

    def _on_removed(self, event: Any) -> None:
        with self._lock:
            track = self._tracks.get(event.job_id)
            if track is None:
                return
            if track.ended(datetime.now(timezone.utc)):
                # Removed by APScheduler as its last run was submitted: that run (or its
                # misfire) is still to come, so the job and its expected run stay in the view
                # until retention drops it.
                del self._tracks[event.job_id]
                return
        self._forget(lambda track_id, track: track_id == event.job_id)

    def _forget(self, removed: Callable[[str, _Track], bool]) -> None:
        with self._lock:
            gone = [job_id for job_id, track in self._tracks.items() if removed(job_id, track)]
            names = {self._tracks.pop(job_id).name for job_id in gone}
            names -= {track.name for track in self._tracks.values()}
        for name in sorted(names):
            self.monitor.unregister(name)

    def walk(self) -> None:
        """Learn every job of the scheduler and its next run time (at start, resume, and
        when instrumented while running). Call on the scheduler's or the caller's thread."""
        scheduler = self._live_scheduler()
        jobs = scheduler.get_jobs()
        renamed: list[str] = []
        with self._lock:
            for job in jobs:
                track, old = self._track_locked(job, getattr(job, "_jobstore_alias", None))
                track.deferred = None
                if old is not None:
                    renamed.append(old)
                if scheduler.state == STATE_STOPPED:
                    self.monitor.register(track.name)
                else:
                    self.monitor.set_next_run(track.name, self._expected(scheduler, job))
        for name in renamed:
            self.monitor.unregister(name)

    def expect_nothing(self) -> None:
        """No run is expected of any job (the scheduler paused, stopped or uninstrumented)."""
        with self._lock:
            for track in self._tracks.values():
                track.deferred = None
                self.monitor.set_next_run(track.name, None)


def _name_events(events: Iterable[Any], name: str) -> None:
    # A one-shot job is forgotten as it is submitted: its MISSED event carries its name.
    for event in events:
        if event.code == EVENT_JOB_MISSED:
            setattr(event, _NAME_ATTR, name)


# -- patching ----------------------------------------------------------------------------


def _patch_executors() -> None:
    """Replace the run functions in every executor module there is (idempotent)."""
    with _lock:
        for module_name, attribute in _TARGETS:
            if (module_name, attribute) in _patched:
                continue
            module = sys.modules.get(module_name)
            if module is None and module_name in _BUILTIN_EXECUTORS:
                module = importlib.import_module(module_name)
            current = getattr(module, attribute, None)
            if current is None:
                continue
            _patched[module_name, attribute] = current
            setattr(module, attribute, _REPLACEMENTS[attribute])


def _unpatch_executors() -> None:
    with _lock:
        for (module_name, attribute), original in _patched.items():
            module = sys.modules[module_name]
            if getattr(module, attribute, None) is _REPLACEMENTS[attribute]:
                setattr(module, attribute, original)
        _patched.clear()
        for name in _filtered_loggers:
            logging.getLogger(name).removeFilter(_REDACTOR)
        _filtered_loggers.clear()


_REPLACEMENTS: dict[str, Callable[..., Any]] = {
    "run_job": _run_job,
    "run_coroutine_job": _run_coroutine_job,
}


def instrument_scheduler(scheduler: Any, monitor: JobMonitor | None = None) -> JobMonitor:
    """Monitor every job of `scheduler`, present and future; returns the monitor it reports
    to: `monitor`, else `jobpulse.setup()`'s, else a new `JobMonitor` on the global providers
    (which `uninstrument_scheduler` shuts down).

    Works before or after ``scheduler.start()`` (call it from the thread that owns the
    scheduler). Idempotent: a scheduler already instrumented keeps its monitor.

    Raises:
        TypeError: `scheduler` is not an APScheduler 3 scheduler, or `monitor` not a monitor.
        ValueError: the scheduler is already instrumented with another monitor.
    """
    state, _ = _instrument(scheduler, monitor, strict=True)
    return state.monitor


def _instrument(
    scheduler: Any, monitor: JobMonitor | None, *, strict: bool
) -> tuple[_SchedulerState, bool]:
    """Instrument `scheduler` unless it is; returns its state and whether it is new."""
    if not isinstance(scheduler, BaseScheduler):
        raise TypeError(
            f"scheduler must be an APScheduler 3 scheduler, not {type(scheduler).__name__}"
        )
    with _lock:
        state = _states.get(scheduler)
        if state is not None:
            if strict and check_monitor(monitor) is not None and monitor is not state.monitor:
                raise ValueError(
                    "this scheduler is already instrumented with another monitor: "
                    "call uninstrument_scheduler() first"
                )
            return state, False
        choice = MonitorChoice(monitor)
        state = _SchedulerState(scheduler, choice.get(), choice.owned)
        _states[scheduler] = state
        _patch_executors()
        scheduler.add_listener(state.on_event, _EVENT_MASK)
    with _LISTENER_GUARD:
        state.walk()
    return state, True


def uninstrument_scheduler(scheduler: Any) -> None:
    """Stop monitoring `scheduler`'s jobs. Runs already started finish monitored; the jobs
    stay in the view with no next run expected. A monitor that `instrument_scheduler` made
    is shut down (with its threads). Does nothing if it is not instrumented."""
    with _lock:
        state = _states.pop(scheduler, None)
        if state is None:
            return
        scheduler.remove_listener(state.on_event)
        if not _states:
            _unpatch_executors()
    with _LISTENER_GUARD:
        state.expect_nothing()
    if state.owned:
        state.monitor.shutdown()


def _running_schedulers() -> list[Any]:
    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, BaseScheduler) and obj.running:
                found.append(obj)
        except ReferenceError:  # a weakref.proxy whose object is gone: not a scheduler
            continue
    return found


class APSchedulerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Monitor every APScheduler scheduler of the process: those running when it is
    instrumented, and each one that starts later (as it starts).

    ``APSchedulerInstrumentor().instrument(monitor=None, tracer_provider=None,
    meter_provider=None)``; ``opentelemetry-instrument`` calls it with no argument. The
    monitor is chosen at first use (when the first scheduler starts, or `monitor` is first
    read), not when instrumented: the one given, else `jobpulse.setup()`'s if one is open by
    then, else a new one on the given or global providers, which `uninstrument` shuts down.
    A singleton, as every `BaseInstrumentor`. Instrumenting again with the same monitor, or
    none, does nothing more; ``instrument(monitor=m)`` on an instrumentor instrumented
    without one (as ``opentelemetry-instrument`` does) switches every scheduler it adopted to
    `m`; with another monitor given before, it raises `ValueError`.
    """

    _choice: MonitorChoice = MonitorChoice()
    _original_start: Any = None
    _patched_start: Any = None
    _adopted: weakref.WeakSet[Any] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("apscheduler >= 3.10, < 4",)

    def instrument(self, **kwargs: Any) -> Any:
        """`BaseInstrumentor.instrument`, but a monitor passed to an instrumentor already
        instrumented without one becomes its monitor (see the class documentation)."""
        if self.is_instrumented_by_opentelemetry and self._choice.replaced_by(kwargs):
            self.uninstrument()
        return super().instrument(**kwargs)

    @property
    def monitor(self) -> JobMonitor:
        """The monitor the schedulers report to (e.g. to serve with
        `jobpulse.starlette.routes`). Raises `RuntimeError` when not instrumented."""
        if not self.is_instrumented_by_opentelemetry:
            raise RuntimeError(
                "APSchedulerInstrumentor is not instrumented: call instrument() first "
                "or run under opentelemetry-instrument"
            )
        return self._choice.get()

    def _instrument(self, **kwargs: Any) -> None:
        self._choice = MonitorChoice.of(kwargs)
        self._adopted = weakref.WeakSet()
        original = BaseScheduler.start
        instrumentor = self

        @functools.wraps(original)
        def start(scheduler: Any, *args: Any, **kwargs: Any) -> Any:
            with _START_GUARD:
                instrumentor._adopt(scheduler)
            return original(scheduler, *args, **kwargs)

        self._original_start, self._patched_start = original, start
        BaseScheduler.start = start
        for scheduler in _running_schedulers():
            self._adopt(scheduler)

    def _adopt(self, scheduler: Any) -> None:
        adopted = self._adopted
        if adopted is not None and _instrument(scheduler, self._choice.get(), strict=False)[1]:
            adopted.add(scheduler)  # not those the application instrumented itself

    def _uninstrument(self, **kwargs: Any) -> None:
        with _lock:
            if BaseScheduler.start is self._patched_start:
                BaseScheduler.start = self._original_start
            adopted, self._adopted = list(self._adopted or ()), None
        for scheduler in adopted:
            uninstrument_scheduler(scheduler)
        self._choice.close()
