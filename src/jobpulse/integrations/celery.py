"""Celery 5.x: every task execution on a worker is a job run, and beat's schedule is watched.

::

    from jobpulse.integrations.celery import CeleryJobInstrumentor

    monitor = jobpulse.setup(service_name="worker")  # once per process, before the pool forks
    CeleryJobInstrumentor().instrument(monitor=monitor)

Everything is done with Celery's signals (connected with ``weak=False``, disconnected by
`uninstrument`), in whichever process sends them; only in beat is the scheduler's
``apply_async`` wrapped (on the instance ``beat_init`` hands over, restored by
`uninstrument`), to know which entry a publish belongs to:

- In the process that runs the task (a prefork child, or the worker itself with the solo
  and threads pools), ``task_prerun`` opens the run (a span named after the task, with
  ``job.name`` = ``task.name``) and ``task_postrun`` ends it. ``task_failure`` records the
  error (a soft time limit has category ``timeout``), ``task_retry`` makes the attempt a
  failed run with category ``retry`` (the next attempt is a run of its own), a ``Reject`` is
  category ``rejected``, an ``Ignore`` a success. Per-run state is keyed by task id and
  attempt and freed at ``task_postrun``.
- In the prefork parent, where no span was opened, the failures the parent itself
  reports become runs recorded with `JobMonitor.record_run`: a hard time limit
  (``time_limit``), a lost child (``worker_lost``, also when Celery retries it), a task
  terminated by ``revoke(terminate=True)`` (``revoked``) and a run cancelled when the broker
  connection was lost (``cancelled``). They start at the request's ``time_start`` (when the
  child accepted it); without it a time limit starts that limit before now and a lost child
  at now. The child's own view of such a run is not ended (the parent's record is the run).
  A task revoked or expired before it started is counted with `JobMonitor.record_skipped`
  (reason ``revoked`` / ``expired``).
- With opentelemetry-instrumentation-celery active on the monitor's provider, its
  ``run/<task>`` span becomes the run (it gets ``job.name`` at creation through
  `JobAwareSampler`'s adopter hook): one span per task run, not two. Active on another
  provider, it keeps its span, and ours is not made current: its trace (parent, links, the
  task's own spans as children of ``run/<task>``) is unchanged.
- In a beat process (``celery beat`` or ``worker -B``), each schedule entry is a job named
  ``beat:<entry>`` whose next run is known; every task beat sends carries the entry's name
  (message header ``jobpulse_beat_entry``, run attribute ``celery.beat_entry`` and run
  metadata ``beat_entry`` on the worker), and beat follows it through the workers' task
  events: started within its grace, the entry has a run (tracked, not exported: the worker
  exports the task's span); not started, the entry's run is missed.

A pool child leaves with ``os._exit``: at ``worker_process_shutdown`` the monitor is shut
down, which flushes what `jobpulse.setup()` built.

Threading: signal handlers run on Celery's threads; the beat part adds a thread that
receives task events and a deadline thread, both stopped when beat's scheduler closes (or at
`uninstrument`). A monitor the instrumentor made itself is shut down by `uninstrument`. No
handler blocks beyond a lock, except ``beat_init``, which waits up to 5 s for the event
receiver to be ready, ``close`` of beat's scheduler (up to 4 s, stopping those threads), and
``worker_process_shutdown`` (the flush, within ``setup(shutdown_timeout=...)``). Every
handler runs under jobpulse's guard: monitoring never fails a task.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from jobpulse import JobAwareSampler, JobMonitor
from jobpulse._shared import (
    CANCELLED,
    ERROR_CATEGORY,
    ERROR_TYPE,
    INTERRUPTED,
    JOB_METADATA,
    JOB_NAME,
    JOB_RAN_IN_PID,
    JOB_RECORD_ONLY,
    NESTED,
    TIMEOUT,
    UNKNOWN,
    Guard,
    RunToken,
    Watchdog,
    add_span_adopter,
    classify_exception,
    classify_names,
    describe_exception,
    encode_metadata,
    qualified_type_name,
    record_failure,
    remove_span_adopter,
    safe_error_text,
    span_attribute,
    to_seconds,
)
from jobpulse.integrations._common import MonitorChoice, require_version

try:
    from celery import signals, states
    from celery._state import get_current_task
    from celery.events.receiver import EventReceiver
    from celery.exceptions import (
        Retry,
        SoftTimeLimitExceeded,
        TaskRevokedError,
        TimeLimitExceeded,
        WorkerLostError,
    )
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
        BaseInstrumentor,
    )
except ImportError:  # pragma: no cover - the extra installs them
    raise ImportError(
        "jobpulse.integrations.celery needs celery and opentelemetry-instrumentation: "
        "pip install 'jobpulse[celery]'"
    ) from None

CELERY_VERSION = require_version("celery", "5.3", "6", "celery")

__all__ = [
    "BEAT_ENTRY_ATTRIBUTE",
    "BEAT_HEADER",
    "BEAT_JOB_PREFIX",
    "CELERY_VERSION",
    "TASK_ID_ATTRIBUTE",
    "CeleryJobInstrumentor",
    "beat_job_name",
]

logger = logging.getLogger("jobpulse")

#: Message header beat's tasks carry: the name of the schedule entry that sent them.
BEAT_HEADER = "jobpulse_beat_entry"
#: Run attribute: the beat entry that sent the task (runs not sent by beat have none).
BEAT_ENTRY_ATTRIBUTE = "celery.beat_entry"
#: Run attribute: the Celery task id.
TASK_ID_ATTRIBUTE = "celery.task_id"
#: Beat entry ``x`` is the job ``beat:x`` in the beat process's view.
BEAT_JOB_PREFIX = "beat:"

RETRY = "retry"
TIME_LIMIT = "time_limit"
WORKER_LOST = "worker_lost"
REVOKED = "revoked"
REJECTED = "rejected"
NOT_STARTED = "not_started"

#: How long ``beat_init`` waits for the task event receiver before beat goes on.
RECEIVER_READY_SECONDS = 5.0
#: Tasks sent by beat and followed at a time; past it the oldest are forgotten.
MAX_TRACKED_BEAT_TASKS = 10_000
_RECONNECT_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
_OTEL_CELERY_MODULE = "opentelemetry.instrumentation.celery"
_EXCEPTION_REPR = re.compile(r"^([A-Za-z_][\w.]*)\(")

_PRERUN_GUARD = Guard("celery task_prerun")
_POSTRUN_GUARD = Guard("celery task_postrun")
_FAILURE_GUARD = Guard("celery task_failure")
_RETRY_GUARD = Guard("celery task_retry")
_REVOKED_GUARD = Guard("celery task_revoked")
_RECEIVED_GUARD = Guard("celery task_received")
_WORKER_GUARD = Guard("celery worker signal")
_PUBLISH_GUARD = Guard("celery task publish")
_BEAT_GUARD = Guard("celery beat")
_EVENT_GUARD = Guard("celery task event")

# The beat schedule entry being applied on this thread, set around Scheduler.apply_async.
_APPLYING: contextvars.ContextVar[Any] = contextvars.ContextVar("jobpulse_beat_entry")


def beat_job_name(entry_name: str) -> str:
    """The job that stands for beat schedule entry `entry_name` in the beat process's view."""
    return BEAT_JOB_PREFIX + entry_name


def _utc(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _attempt(request: Any) -> int:
    """Which attempt of its task `request` is (0 the first; also for a task whose request
    is None, as a task may declare)."""
    retries = getattr(request, "retries", None)
    return retries if isinstance(retries, int) else 0


def _beat_entry_of(request: Any) -> str | None:
    entry = getattr(request, BEAT_HEADER, None)
    if entry is None:
        headers = getattr(request, "headers", None)
        entry = headers.get(BEAT_HEADER) if isinstance(headers, dict) else None
    return entry if isinstance(entry, str) and entry else None


class _Run:
    """A task run in progress in this process."""

    __slots__ = (
        "adopted",
        "category",
        "error",
        "name",
        "own",
        "span",
        "started",
        "token",
    )

    def __init__(self, name: str, started: datetime) -> None:
        self.name = name
        self.started = started
        self.span: Span | None = None  # ours, or the adopted run/<task> span once seen
        self.token: RunToken | None = None
        self.own = False  # the span is ours, opened at task_prerun
        self.adopted = False  # the span is opentelemetry-instrumentation-celery's
        self.error: BaseException | None = None
        self.category: str | None = None


_Key = tuple[str, int]


class CeleryJobInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Monitors Celery 5.x tasks and beat (see the module documentation).

    A singleton, as every OpenTelemetry instrumentor: ``instrument()`` connects the signal
    handlers, ``uninstrument()`` disconnects them and frees every per-run state; either
    called twice only logs a warning. The entry point ``jobpulse_celery`` makes
    ``opentelemetry-instrument`` call ``instrument()`` without arguments.

    ``instrument()`` keyword arguments:

    - ``monitor``: the `JobMonitor` to report to. Without one, the monitor is chosen at
      first use (the worker starting, beat starting, the first task run), not when
      instrumented: the open monitor of `jobpulse.setup()` by then, else a new one on
      ``tracer_provider`` / ``meter_provider``, which `uninstrument` shuts down. Passed to
      an instrumentor already instrumented without one (as ``opentelemetry-instrument``
      does), it is instrumented again with this monitor and these arguments; with another
      monitor given before, `ValueError`.
    - ``send_task_events`` (default True): turn on the workers' task events
      (``worker_send_task_events``), which a beat process needs to see tasks start.
    - ``beat_grace``: seconds (or a timedelta) a task sent by beat may take to start on a
      worker; default 10% of the entry's period, at least 1 s and at most 5 min.
    """

    _choice: MonitorChoice = MonitorChoice()

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("celery >= 5.3, < 6",)

    def instrument(self, **kwargs: Any) -> Any:
        """`BaseInstrumentor.instrument`, but a monitor passed to an instrumentor already
        instrumented without one becomes its monitor (see the class documentation)."""
        if self.is_instrumented_by_opentelemetry and self._choice.replaced_by(kwargs):
            self.uninstrument()
        return super().instrument(**kwargs)

    @property
    def monitor(self) -> JobMonitor | None:
        """The monitor runs are reported to (chosen now if it was not yet); None while not
        instrumented."""
        return self._choice.get() if self.is_instrumented_by_opentelemetry else None

    @property
    def _monitor(self) -> JobMonitor:
        return self._choice.get()

    def _instrument(self, **kwargs: Any) -> None:
        beat_grace = kwargs.get("beat_grace")
        self._beat_grace = None if beat_grace is None else to_seconds(beat_grace, "beat_grace")
        self._send_task_events = bool(kwargs.get("send_task_events", True))
        self._choice = MonitorChoice.of(kwargs)
        self._runs: dict[_Key, _Run] = {}
        self._local = threading.local()
        # The parent process sees requests arrive and reads their start time when a failure
        # it reports (time limit, lost child) comes: requests are held weakly.
        self._received: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._reported: weakref.WeakSet[Any] = weakref.WeakSet()
        self._reported_ids: OrderedDict[str, float] = OrderedDict()
        self._pool_child = False
        self._beat: _BeatWatch | None = None
        self._connections: list[tuple[Any, Callable[..., None]]] = [
            (signals.task_received, self._on_received),
            (signals.task_prerun, self._on_prerun),
            (signals.task_postrun, self._on_postrun),
            (signals.task_failure, self._on_failure),
            (signals.task_retry, self._on_retry),
            (signals.task_revoked, self._on_revoked),
            (signals.worker_init, self._on_worker_init),
            (signals.worker_process_init, self._on_process_init),
            (signals.worker_process_shutdown, self._on_process_shutdown),
            (signals.before_task_publish, self._on_before_publish),
            (signals.after_task_publish, self._on_after_publish),
            (signals.beat_init, self._on_beat_init),
        ]
        for signal, handler in self._connections:
            signal.connect(handler, weak=False)
        add_span_adopter(self._adopt_span)
        if self._choice.given is not None:  # else at first use
            self._share_sampler()

    def _uninstrument(self, **kwargs: Any) -> None:
        for signal, handler in self._connections:
            signal.disconnect(handler)
        remove_span_adopter(self._adopt_span)
        beat, self._beat = self._beat, None
        if beat is not None:
            beat.close()
        monitor = self._choice.peek()
        attached: dict[_Key, RunToken] = {}
        for key, run in self._runs.items():
            if not run.own or monitor is None:
                continue
            token = run.token
            if token is not None and token is not NESTED and token[0] is not None:
                # Ended here, but still current in the task's context, which only the task's
                # own thread can restore: at its task_postrun.
                attached[key] = token
                token = (None, token[1], token[2])
            monitor._finish(run.span, token)  # type: ignore[arg-type]
        if attached:
            _LateRelease(attached)
        self._runs.clear()
        self._received.clear()
        self._choice.close()

    # -- opentelemetry-instrumentation-celery --------------------------------------------

    def _otel_celery(self) -> tuple[SdkTracer, bool] | None:
        """The SDK tracer of opentelemetry-instrumentation-celery if it is instrumented and
        records spans (not on a no-op provider), with whether it is on the provider the
        monitor feeds; None otherwise."""
        module = sys.modules.get(_OTEL_CELERY_MODULE)
        instance = getattr(getattr(module, "CeleryInstrumentor", None), "_instance", None)
        if instance is None or not instance.is_instrumented_by_opentelemetry:
            return None
        tracer = getattr(instance, "_tracer", None)
        if isinstance(tracer, trace.ProxyTracer):  # made before a global provider was set
            tracer = tracer._tracer
        if not isinstance(tracer, SdkTracer):
            return None
        ours = self._monitor._tracer
        return tracer, isinstance(ours, SdkTracer) and tracer.span_processor is ours.span_processor

    def _share_sampler(self) -> tuple[SdkTracer, bool] | None:
        """If opentelemetry-instrumentation-celery is active on the monitor's provider, make
        its tracer sample with the monitor's `JobAwareSampler` (its tracer may predate the
        monitor), so that its run span can be adopted. Returns what `_otel_celery` found."""
        found = self._otel_celery()
        if found is None or not found[1]:
            return found
        tracer, ours = found[0], self._monitor._tracer
        if isinstance(ours, SdkTracer) and not isinstance(tracer.sampler, JobAwareSampler):
            tracer.sampler = ours.sampler
        return found

    def _adopt_span(self, name: str, kind: SpanKind | None) -> Mapping[str, AttributeValue] | None:
        if kind is not SpanKind.CONSUMER or not name.startswith("run/"):
            return None
        task = get_current_task()
        if task is None or getattr(task, "name", None) != name[4:]:
            return None
        request = task.request
        task_id = getattr(request, "id", None)
        if not isinstance(task_id, str):
            return None
        key = (task_id, _attempt(request))
        run = self._runs.get(key)
        if run is not None:
            run.adopted = True
        else:  # its task_prerun handler runs before ours: ours picks this up
            self._local.adopted = key
        return self._attributes(task.name, task_id, request)

    # -- runs in this process ------------------------------------------------------------

    def _attributes(self, name: str, task_id: str, request: Any) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {JOB_NAME: name, TASK_ID_ATTRIBUTE: task_id}
        entry = _beat_entry_of(request)
        if entry is not None:
            attributes[BEAT_ENTRY_ATTRIBUTE] = entry
            attributes[JOB_METADATA] = encode_metadata({"beat_entry": entry})
        scheduled = self._monitor._registry.schedule_attributes(name)
        if scheduled:
            attributes.update(scheduled)
        return attributes

    def _on_prerun(self, sender: Any, task_id: str, **kwargs: Any) -> None:
        with _PRERUN_GUARD:
            task = kwargs["task"]
            request = task.request
            key = (task_id, _attempt(request))
            run = _Run(task.name, _now())
            if getattr(self._local, "adopted", None) == key:  # made before this handler ran
                self._local.adopted = None
                run.adopted = True
                self._span_of(run, task_id)
            elif (found := self._share_sampler()) is not None and found[1]:
                pass  # opentelemetry-instrumentation-celery makes the run's span
            else:
                # Its run/<task> span, on another provider, keeps its own parent and links,
                # and the task's spans stay its children: ours is not made current there.
                attributes: Any = self._attributes(task.name, task_id, request)
                run.span, run.token = self._monitor._start(
                    task.name, attributes, current=found is None
                )
                run.own = True
            self._runs[key] = run

    def _span_of(self, run: _Run, task_id: str) -> Span | None:
        if run.span is None and run.adopted:
            current = trace.get_current_span()
            if span_attribute(current, TASK_ID_ATTRIBUTE) == task_id:  # type: ignore[arg-type]
                run.span = current
        return run.span

    def _fail(self, run: _Run, task_id: str, exc: BaseException, category: str | None) -> None:
        run.error, run.category = exc, category
        span = self._span_of(run, task_id)
        if span is None:
            return
        timed_out = isinstance(exc, SoftTimeLimitExceeded)
        if run.own or category == RETRY:
            record_failure(span, exc, timed_out=timed_out, category=category)
        else:
            # The adopted span gets its exception event from opentelemetry-instrumentation-
            # celery's own failure handler: only what it lacks is added.
            span.set_attributes(
                {
                    ERROR_TYPE: qualified_type_name(type(exc)),
                    ERROR_CATEGORY: TIMEOUT if timed_out else category or classify_exception(exc),
                }
            )
            span.set_status(Status(StatusCode.ERROR, describe_exception(exc)))

    def _on_failure(
        self, sender: Any, task_id: str, exception: BaseException, **kwargs: Any
    ) -> None:
        with _FAILURE_GUARD:
            run = self._runs.get((task_id, _attempt(sender.request)))
            if run is not None:
                category = TIMEOUT if isinstance(exception, SoftTimeLimitExceeded) else None
                self._fail(run, task_id, exception, category)
            elif isinstance(exception, TimeLimitExceeded):
                self._record_elsewhere(sender, task_id, exception, TIME_LIMIT)
            elif isinstance(exception, WorkerLostError):
                self._record_elsewhere(sender, task_id, exception, WORKER_LOST)

    def _on_retry(self, sender: Any, request: Any, **kwargs: Any) -> None:
        with _RETRY_GUARD:
            reason = kwargs.get("reason")
            exc = getattr(reason, "exc", None) or reason
            run = self._runs.get((request.id, request.retries or 0))
            if run is not None:
                self._fail(
                    run, request.id, exc if isinstance(exc, BaseException) else Retry(), RETRY
                )
            elif isinstance(exc, WorkerLostError):  # retry_on_worker_lost, sent by the parent
                self._record_elsewhere(sender, request.id, exc, WORKER_LOST)
            elif reason is None:  # cancelled by the parent when the broker connection was lost
                self._record_elsewhere(sender, request.id, Retry("cancelled by Celery"), CANCELLED)

    def _on_revoked(self, sender: Any, request: Any, **kwargs: Any) -> None:
        with _REVOKED_GUARD:
            if kwargs.get("terminated"):
                signum = kwargs.get("signum")
                error = TaskRevokedError(f"terminated by revoke (signal {signum})")
                run = self._runs.get((request.id, request.retries or 0))
                if run is not None:
                    self._fail(run, request.id, error, REVOKED)
                else:
                    self._record_elsewhere(sender, request.id, error, REVOKED)
            else:
                reason = "expired" if kwargs.get("expired") else REVOKED
                self._monitor.record_skipped(sender.name, reason=reason)

    def _on_postrun(
        self, sender: Any, task_id: str, state: str | None = None, **kwargs: Any
    ) -> None:
        with _POSTRUN_GUARD:
            task = kwargs["task"]
            run = self._runs.pop((task_id, _attempt(task.request)), None)
            if run is None:
                return
            if state is None and self._pool_child:  # pragma: no cover - runs in the child
                # Killed (time limit, revoke, shutdown): the parent records this run, so the
                # child leaves its span unended, never exported.
                self._monitor._release(run.token)
                return
            if run.error is None and state not in (states.SUCCESS, states.IGNORED):
                if state == states.REJECTED:
                    error = _NoResult("the task rejected its message")
                    self._fail(run, task_id, error, REJECTED)
                elif state is None:  # a BaseException (SystemExit, KeyboardInterrupt) left it
                    error = _NoResult("the task was interrupted")
                    self._fail(run, task_id, error, INTERRUPTED)
                elif state == states.FAILURE:  # Celery failed it without task_failure
                    self._fail(run, task_id, _NoResult("the task failed"), None)
            if run.own:
                self._monitor._finish(run.span, run.token)  # type: ignore[arg-type]
            elif run.adopted:
                span = run.span
                if run.error is not None and span is not None and span.is_recording():
                    # opentelemetry-instrumentation-celery's failure handler, if it ran after
                    # ours, described the error as str(exc): the run's error keeps its type.
                    span.set_status(Status(StatusCode.ERROR, describe_exception(run.error)))
            else:
                # opentelemetry-instrumentation-celery was to make the run's span and did
                # not (its tracer is not the SDK's): the run is recorded afterwards.
                logger.warning(
                    "celery task %r: the run/<task> span of opentelemetry-instrumentation-"
                    "celery was not seen; the run is recorded when it ends",
                    run.name,
                )
                self._monitor.record_run(
                    run.name, start=run.started, end=_now(), error=run.error, category=run.category
                )

    # -- what the prefork parent reports -------------------------------------------------

    def _on_received(self, sender: Any, request: Any, **kwargs: Any) -> None:
        with _RECEIVED_GUARD:
            self._received[request.id] = request

    def _already_reported(self, request: Any, task_id: str) -> bool:
        # A hard time limit sends task_failure twice (on_failure, then on_timeout).
        if request is not None:
            if request in self._reported:
                return True
            self._reported.add(request)
            return False
        now = time.monotonic()
        seen = self._reported_ids.get(task_id)
        self._reported_ids[task_id] = now
        while len(self._reported_ids) > 1024:
            self._reported_ids.popitem(last=False)
        return seen is not None and now - seen < 60.0

    def _record_elsewhere(
        self, task: Any, task_id: str, error: BaseException, category: str
    ) -> None:
        request = self._received.get(task_id)
        if self._already_reported(request, task_id):
            return
        end = _now()
        time_start = getattr(request, "time_start", None)
        if time_start:
            start = min(_utc(time_start), end)
        else:  # the time limit before now, or no duration at all
            limit = error.args[0] if isinstance(error, TimeLimitExceeded) and error.args else 0
            start = end - timedelta(seconds=limit if isinstance(limit, (int, float)) else 0)
        attributes: dict[str, str | bool | int | float] = {TASK_ID_ATTRIBUTE: task_id}
        pid = getattr(request, "worker_pid", None)
        if isinstance(pid, int) and not isinstance(pid, bool):
            # The child that ran it: with a store, the run it left open is this one.
            attributes[JOB_RAN_IN_PID] = pid
        headers = getattr(request, "request_dict", None)
        entry = headers.get(BEAT_HEADER) if isinstance(headers, dict) else None
        if isinstance(entry, str) and entry:
            attributes[BEAT_ENTRY_ATTRIBUTE] = entry
        self._monitor.record_run(
            task.name, start=start, end=end, error=error, category=category, attributes=attributes
        )

    # -- worker processes ----------------------------------------------------------------

    def _on_worker_init(self, sender: Any, **kwargs: Any) -> None:
        with _WORKER_GUARD:
            self._share_sampler()  # the monitor is chosen here, before a pool forks
            if self._send_task_events:
                sender.task_events = True

    def _on_process_init(self, **kwargs: Any) -> None:  # pragma: no cover - runs in the child
        with _WORKER_GUARD:
            self._pool_child = True
            self._runs.clear()
            self._received.clear()

    def _on_process_shutdown(self, **kwargs: Any) -> None:  # pragma: no cover - in the child
        # A pool child leaves with os._exit: exit handlers do not run, so what the monitor
        # of setup() holds is flushed here, within its shutdown deadline.
        with _WORKER_GUARD:
            monitor = self._choice.peek()  # none chosen: nothing to flush
            if monitor is not None:
                monitor.shutdown()

    # -- beat ----------------------------------------------------------------------------

    def _on_beat_init(self, sender: Any, **kwargs: Any) -> None:
        with _BEAT_GUARD:
            if self._beat is not None:
                self._beat.close()
            self._beat = _BeatWatch(
                self._monitor, sender.app, sender.scheduler, self._beat_grace, self._beat_closed
            )
            self._beat.start()

    def _beat_closed(self, beat: _BeatWatch) -> None:
        if self._beat is beat:
            self._beat = None

    def _on_before_publish(self, headers: Any = None, **kwargs: Any) -> None:
        with _PUBLISH_GUARD:
            entry = _APPLYING.get(None)
            if entry is not None and isinstance(headers, dict):
                headers[BEAT_HEADER] = entry.name

    def _on_after_publish(self, headers: Any = None, **kwargs: Any) -> None:
        with _PUBLISH_GUARD:
            entry = _APPLYING.get(None)
            beat = self._beat
            if entry is not None and beat is not None and isinstance(headers, dict):
                beat.sent(entry, headers["id"])


class _LateRelease:
    """The runs `uninstrument` ended while their tasks still ran: each one's span stops being
    current at its task's ``task_postrun``, on the task's thread; then this disconnects."""

    def __init__(self, tokens: dict[_Key, RunToken]) -> None:
        self._tokens = tokens
        self._lock = threading.Lock()
        signals.task_postrun.connect(self._on_postrun, weak=False)

    def _on_postrun(self, sender: Any = None, task_id: str | None = None, **kwargs: Any) -> None:
        with _POSTRUN_GUARD:
            task = kwargs.get("task", sender)
            key = (task_id, _attempt(task.request))
            with self._lock:
                token = self._tokens.pop(key, None)  # type: ignore[arg-type]
                done = not self._tokens
            if token is not None:
                JobMonitor._release(token)
            if done:
                signals.task_postrun.disconnect(self._on_postrun)


class _NoResult(Exception):
    """A task run that ended without a result: it rejected its message, or was interrupted."""


class _Sent:
    """A task beat sent, followed until a worker reports how it ended."""

    __slots__ = ("entry", "job", "slot", "span", "task_id", "token")

    def __init__(self, entry: str, task_id: str, slot: datetime) -> None:
        self.entry = entry
        self.job = beat_job_name(entry)
        self.task_id = task_id
        self.slot = slot  # when beat was to send it
        self.span: Span | None = None  # the run, once a worker started it
        self.token: RunToken | None = None  # what JobMonitor._start gave for it


class _Entry:
    """What beat's view expects of one schedule entry."""

    __slots__ = ("grace", "unstarted", "upcoming")

    def __init__(self, upcoming: datetime, grace: float) -> None:
        self.upcoming = upcoming  # the next time beat will send it
        self.grace = grace
        self.unstarted: list[_Sent] = []  # sent, neither started nor missed yet, oldest first

    def expected(self) -> datetime:
        """The run the view waits for: the oldest task not started yet, else the next."""
        return self.unstarted[0].slot if self.unstarted else self.upcoming


class _ReadyReceiver(EventReceiver):  # type: ignore[misc]
    """An event receiver that tells when it consumes, and gives up at the first failed
    connection (the thread retries with a backoff, and can be stopped in between)."""

    connect_max_retries = 0

    def __init__(self, *args: Any, ready: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ready = ready

    def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
        super().on_consume_ready(*args, **kwargs)
        self._ready.set()


class _BeatWatch:
    """In a beat process: the entries' expected runs, the header of each task sent, and the
    task events that tell whether a worker started it within its grace.

    The job of an entry expects (`JobMonitor.set_next_run`) the oldest task beat sent that
    no worker has started yet, else the entry's next send: a task started takes its slot
    (a run of the job, ended by the task's last event), a task not started by its slot plus
    the grace makes the job missed, and a beat that stops sending leaves the next slot
    unrun, so missed as well.

    It lives as long as beat's scheduler: closing the scheduler (what ``Service.stop()`` leads
    to, as beat's loop ends) closes it, which stops its two threads and expects no more runs
    of the entries.

    Thread-safe: `sent` runs on beat's thread, the event handlers on the receiver thread,
    the deadlines on the watchdog thread; `_lock` guards the bookkeeping, and the monitor
    is called outside it.
    """

    def __init__(
        self,
        monitor: JobMonitor,
        app: Any,
        scheduler: Any,
        grace: float | None,
        on_closed: Callable[[_BeatWatch], None] | None = None,
    ) -> None:
        self._monitor = monitor
        self._on_closed = on_closed
        self._closed = False
        self._app = app
        self._scheduler = scheduler
        self._grace = grace
        self._lock = threading.Lock()
        self._tasks: OrderedDict[str, _Sent] = OrderedDict()
        self._entries: dict[str, _Entry] = {}
        self._watchdog = Watchdog(monitor._clock, self._on_deadline, name="jobpulse-celery-beat")
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._receiver: _ReadyReceiver | None = None
        self._thread = threading.Thread(
            target=self._receive, name="jobpulse-celery-events", daemon=True
        )
        self._original_apply_async = scheduler.apply_async

    def start(self) -> None:
        """Expect each entry's next run, mark the tasks beat sends, start receiving events;
        wait (at most `RECEIVER_READY_SECONDS`) until the receiver consumes."""
        now = _now()
        for entry in list(self._scheduler.schedule.values()):
            with _BEAT_GUARD:
                upcoming = self._next_run(entry, now)
                job = beat_job_name(entry.name)
                state = self._entries[job] = _Entry(upcoming, self._grace_for(entry, upcoming, now))
                self._expect(job, state.expected(), state.grace, now)
        original = self._original_apply_async

        def apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
            token = _APPLYING.set(entry)
            try:
                return original(entry, *args, **kwargs)
            finally:
                _APPLYING.reset(token)

        original_close = self._scheduler.close

        def close(*args: Any, **kwargs: Any) -> Any:
            try:
                return original_close(*args, **kwargs)
            finally:
                with _BEAT_GUARD:
                    self.close()

        self._scheduler.apply_async = apply_async
        self._scheduler.close = close
        self._thread.start()
        if not self._ready.wait(RECEIVER_READY_SECONDS):
            logger.warning(
                "celery beat: the task event receiver was not ready within %gs; tasks that "
                "start before it is may be reported missed",
                RECEIVER_READY_SECONDS,
            )

    def close(self) -> None:
        """Stop following tasks: restore the scheduler, stop the threads (bounded wait),
        end the runs in progress and expect no run of the entries. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        for method in ("apply_async", "close"):
            if self._scheduler.__dict__.get(method) is not None:
                delattr(self._scheduler, method)
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        if self._thread.is_alive():
            self._thread.join(3.0)
        self._watchdog.stop()
        with self._lock:
            tasks = list(self._tasks.values())
            jobs = sorted(self._entries)
            self._tasks.clear()
            self._entries.clear()
        for sent in tasks:
            if sent.span is not None:
                self._monitor._finish(sent.span, sent.token)
        for job in jobs:  # a stopped beat sends nothing: nothing is missed
            self._monitor.set_next_run(job, None)
        if self._on_closed is not None:
            self._on_closed(self)

    @staticmethod
    def _next_run(entry: Any, now: datetime) -> datetime:
        due, wait_seconds = entry.is_due()
        return now if due else now + timedelta(seconds=float(wait_seconds))

    def _grace_for(self, entry: Any, next_run: datetime, now: datetime) -> float:
        if self._grace is not None:
            return self._grace
        period = (next_run - now).total_seconds()
        if period <= 0:
            run_every = getattr(entry.schedule, "run_every", None)
            period = run_every.total_seconds() if isinstance(run_every, timedelta) else 0.0
        return min(max(0.1 * period, 1.0), 300.0)

    def _expect(self, job: str, when: datetime, grace: float, now: datetime) -> None:
        # A slot already past its grace is left to its deadline, which counts it missed.
        if (when - now).total_seconds() + grace > 0:
            self._monitor.set_next_run(job, when, grace=grace)

    def sent(self, entry: Any, task_id: str) -> None:
        """Beat sent `task_id` for `entry` (on beat's thread, right after publishing)."""
        now = _now()
        current = self._scheduler.schedule.get(entry.name, entry)
        upcoming = self._next_run(current, now)
        grace = self._grace_for(current, upcoming, now)
        job = beat_job_name(entry.name)
        evicted: list[_Sent] = []
        with self._lock:
            state = self._entries.get(job)
            if state is None:  # an entry added to the schedule after beat started
                state = self._entries[job] = _Entry(now, grace)
            slot = min(state.upcoming, now)
            state.upcoming, state.grace = upcoming, grace
            sent = _Sent(entry.name, task_id, slot)
            state.unstarted.append(sent)
            self._tasks[task_id] = sent
            while len(self._tasks) > MAX_TRACKED_BEAT_TASKS:
                evicted.append(self._forget_locked(next(iter(self._tasks))))
            expected = state.expected()
        for old in evicted:
            if old.span is not None:
                self._end(old, "no task event came for it", UNKNOWN)
        delay = max((slot - now).total_seconds() + grace, 0.0)
        self._watchdog.schedule(task_id, self._monitor._clock.monotonic() + delay)
        self._expect(job, expected, grace, now)

    def _forget_locked(self, task_id: str) -> _Sent:
        sent = self._tasks.pop(task_id)
        self._unstarted_locked(sent)
        return sent

    def _unstarted_locked(self, sent: _Sent) -> _Entry | None:
        """Take `sent` off its entry's unstarted tasks; return the entry if it was there."""
        state = self._entries.get(sent.job)
        if state is None or sent not in state.unstarted:
            return None
        state.unstarted.remove(sent)
        return state

    def _on_deadline(self, key: Any, now: float) -> float | None:
        with self._lock:
            sent = self._tasks.get(key)
            state = None if sent is None else self._unstarted_locked(sent)
            if sent is None or state is None:
                return None
            expected, grace = state.expected(), state.grace
        self._monitor.record_missed(sent.job, scheduled_at=sent.slot, reason=NOT_STARTED)
        self._expect(sent.job, expected, grace, _now())
        return None

    # -- the receiver thread -------------------------------------------------------------

    def _receive(self) -> None:
        handlers = {
            "task-started": self._on_started,
            "task-succeeded": self._on_succeeded,
            "task-failed": self._on_failed,
            "task-retried": self._on_retried,
            "task-revoked": self._on_revoked,
            "task-rejected": self._on_rejected,
        }
        attempt = 0
        while not self._stop.is_set():
            try:
                with self._app.connection_for_read() as connection:
                    # One attempt: kombu's own retries (broker_connection_max_retries, with
                    # sleeps) would keep this thread from seeing that it is to stop; this
                    # loop retries, with a backoff that `close` interrupts.
                    connection.ensure_connection(max_retries=0)
                    self._receiver = _ReadyReceiver(
                        connection, handlers=handlers, app=self._app, ready=self._ready
                    )
                    attempt = 0
                    self._receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception as exc:  # noqa: BLE001 - the broker went away: try again
                if self._stop.is_set():
                    return
                delay = _RECONNECT_SECONDS[min(attempt, len(_RECONNECT_SECONDS) - 1)]
                attempt += 1
                logger.warning(
                    "celery beat: task events unavailable (%s); retrying in %gs", exc, delay
                )
                self._stop.wait(delay)

    def _task(self, event: Mapping[str, Any], *, done: bool) -> _Sent | None:
        task_id = event.get("uuid")
        with self._lock:
            if not isinstance(task_id, str) or task_id not in self._tasks:
                return None
            return self._forget_locked(task_id) if done else self._tasks[task_id]

    def _on_started(self, event: Mapping[str, Any]) -> None:
        with _EVENT_GUARD:
            with self._lock:
                sent = self._tasks.get(event.get("uuid"))  # type: ignore[arg-type]
                if sent is None or sent.span is not None:
                    return
                state = self._unstarted_locked(sent)
                expected = None if state is None else (state.expected(), state.grace)
            attributes: Any = {
                JOB_NAME: sent.job,
                BEAT_ENTRY_ATTRIBUTE: sent.entry,
                TASK_ID_ATTRIBUTE: sent.task_id,
                JOB_RECORD_ONLY: True,
            }
            # This thread is not the run's: nothing is made current.
            sent.span, sent.token = self._monitor._start(sent.job, attributes, current=None)
            if expected is not None:  # the run took its slot: expect the entry's next one
                self._expect(sent.job, *expected, _now())

    def _on_succeeded(self, event: Mapping[str, Any]) -> None:
        with _EVENT_GUARD:
            sent = self._task(event, done=True)
            if sent is not None and sent.span is not None:
                self._monitor._finish(sent.span, sent.token)

    def _on_failed(self, event: Mapping[str, Any]) -> None:
        with _EVENT_GUARD:
            sent = self._task(event, done=True)
            if sent is not None:
                self._end(sent, str(event.get("exception") or "failed"), None)

    def _on_retried(self, event: Mapping[str, Any]) -> None:
        with _EVENT_GUARD:
            sent = self._task(event, done=False)
            if sent is not None:  # the next attempt, if a worker starts it, is a run too
                self._end(sent, str(event.get("exception") or "retried"), RETRY)

    def _on_revoked(self, event: Mapping[str, Any]) -> None:
        with _EVENT_GUARD:
            sent = self._task(event, done=True)
            if sent is None:
                return
            if sent.span is not None:
                self._end(sent, "terminated by revoke", REVOKED)
                return
            reason = "expired" if event.get("expired") else REVOKED
            self._monitor.record_skipped(sent.job, reason=reason)
            with self._lock:
                state = self._entries.get(sent.job)
                expected = None if state is None else (state.expected(), state.grace)
            if expected is not None:  # the slot was skipped on purpose, not missed
                self._expect(sent.job, *expected, _now())

    def _on_rejected(self, event: Mapping[str, Any]) -> None:
        with _EVENT_GUARD:
            sent = self._task(event, done=True)
            if sent is not None:
                self._end(sent, "the task rejected its message", REJECTED)

    def _end(self, sent: _Sent, error: str, category: str | None) -> None:
        """End the run of `sent` as failed; the worker's event gives the error as text."""
        span, token = sent.span, sent.token
        sent.span = sent.token = None
        if span is None:
            return
        match = _EXCEPTION_REPR.match(error)
        type_name = match.group(1) if match else ""
        span.set_attributes(
            {
                ERROR_TYPE: type_name or "error",
                ERROR_CATEGORY: category or classify_names([type_name] if type_name else [], error),
            }
        )
        span.set_status(Status(StatusCode.ERROR, safe_error_text(error)))
        self._monitor._finish(span, token)
