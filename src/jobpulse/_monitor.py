"""`JobMonitor`: the public entry point. Decorates jobs, opens runs, answers for the view."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta, tzinfo
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar, cast, overload

from opentelemetry import context as context_api
from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Span, Status, StatusCode

from jobpulse import _errors, _metadata
from jobpulse._clock import SYSTEM_CLOCK, Clock
from jobpulse._exceptions import (
    InvalidJobError,
    JobLimitError,
    JobSkippedError,
    JobTimeoutError,
)
from jobpulse._fork import after_fork_in_child
from jobpulse._guard import Guard, report_foreign_error, report_internal_error
from jobpulse._health import (
    PROCESS_VIEW,
    HealthDocument,
    HealthReport,
    HealthSnapshot,
    HealthStatus,
    evaluate,
)
from jobpulse._instruments import METER_NAME, Instruments, validate_namespace
from jobpulse._job import Job
from jobpulse._model import JobsSummary, JobStatus, RunRecord, from_ns, to_ns
from jobpulse._processor import ARMED, JobStatusProcessor, span_attribute
from jobpulse._registry import JobSettings, StatusRegistry
from jobpulse._sampling import JobAwareSampler
from jobpulse._schedule import parse_schedule
from jobpulse._shared import (
    CODE_FUNCTION,
    ERROR_CATEGORY,
    ERROR_TYPE,
    JOB_METADATA,
    JOB_NAME,
    JOB_NAME_ATTRIBUTE,
    JOB_TIMED_OUT,
    TIMEOUT,
)
from jobpulse._validation import (
    Duration,
    to_seconds,
    validate_name,
    validate_positive_int,
    validate_token,
)
from jobpulse._version import __version__

__all__ = ["JobMonitor", "JobRun", "RunInProgress", "record_failure", "set_metadata"]

logger = logging.getLogger("jobpulse")

if TYPE_CHECKING:
    from jobpulse.store import Instance, Store
    from jobpulse.store._link import StoreLink

P = ParamSpec("P")
R = TypeVar("R")

#: What ``schedule=`` takes: "@every 2m", "@daily", "30 2 * * *", seconds or a timedelta.
ScheduleSpec = str | float | timedelta
StallAfter = Duration  # or "auto"

#: What `JobMonitor._start` hands to `_finish`: the context token to detach (or None), the
#: start on the monotonic clock, and the start in epoch nanoseconds.
RunToken = tuple[object, float, int]
#: The token of a run opened inside a run of the same job: that outer run is the run.
NESTED: RunToken = (None, 0.0, 0)
#: The `skipped` reason of a sync job's call refused while its abandoned thread still runs.
ABANDONED_THREAD = "abandoned_thread"
#: A run current in jobpulse's context only (`JobMonitor._start(current=False)`): its job
#: name, its span and the task it is current in (None outside asyncio).
_OWN_RUN: contextvars.ContextVar[tuple[str, Span, object] | None] = contextvars.ContextVar(
    "jobpulse_run", default=None
)

#: Context key of the asyncio task a run's context was made current in: a task started
#: inside the run copies the context, and a run in that task is a run of its own.
_RUN_TASK = context_api.create_key("jobpulse.run_task")
#: The key ``trace.set_span_in_context`` files the current span under, learnt from it.
(_SPAN_KEY,) = trace.set_span_in_context(trace.INVALID_SPAN, context_api.Context())

#: Context key set in the thread of a sync job with a timeout: the job's name.
_JOB_THREAD = context_api.create_key("jobpulse.job_thread")

_START_GUARD = Guard("run start")
_METADATA_GUARD = Guard("run metadata")
_RECORD_GUARD = Guard("recorded run")


def record_failure(
    span: Span, exc: BaseException, *, timed_out: bool = False, category: str | None = None
) -> None:
    """Put the job's exception on its span: event, error type, category (`category`, else
    classified from the exception), ERROR status. Never raises, also at the recursion limit
    (no context manager: its ``__enter__`` is a call that can fail there)."""
    try:
        span.add_event("exception", _errors.exception_event_attributes(exc))
        if timed_out or isinstance(exc, JobTimeoutError):
            timed_out = True
            category = TIMEOUT
        attributes: dict[str, str | bool] = {
            ERROR_TYPE: _errors.qualified_type_name(type(exc)),
            ERROR_CATEGORY: category or _errors.classify_exception(exc),
        }
        if timed_out:
            attributes[JOB_TIMED_OUT] = True
        span.set_attributes(attributes)
        span.set_status(Status(StatusCode.ERROR, _errors.describe_exception(exc)))
    except Exception as error:  # noqa: BLE001 - the job's own exception is what matters
        _report("run failure", error)


def _report(where: str, error: Exception) -> None:
    try:  # noqa: SIM105 - a context manager more is a call more at the recursion limit
        report_internal_error(where, error)
    except RecursionError:
        pass


def _merge_metadata(span: Span, values: Mapping[Any, object]) -> None:
    with _METADATA_GUARD:
        current = _metadata.decode(span_attribute(span, JOB_METADATA)) or {}  # type: ignore[arg-type]
        refused = _metadata.merge(current, _metadata.sanitize(values))
        span.set_attribute(JOB_METADATA, _metadata.encode(current))
        if refused:
            logger.warning(
                "run metadata: %d keys dropped (at most %d keys, %d bytes of JSON)",
                refused,
                _metadata.MAX_KEYS,
                _metadata.MAX_METADATA_BYTES,
            )


def set_metadata(values: Mapping[str, object] | None = None, /, **more: object) -> bool:
    """Attach metadata to the job run in progress on this thread or task.

    Works inside any run (decorated function, ``monitor.run()`` block, integration). Values
    are made JSON-safe (others become their repr), credentials are redacted, sizes capped.
    Returns False, doing nothing, when no job run is current.
    """
    span = trace.get_current_span()
    if span_attribute(span, JOB_NAME) is None:  # type: ignore[arg-type]
        own = _OWN_RUN.get()
        if own is None or not own[1].is_recording():
            return False
        span = own[1]
    _merge_metadata(span, {**(values or {}), **more})
    return True


class JobRun:
    """One run of a job, as a context manager (``with`` or ``async with``). Single use.

    The run is a span named after the job. An exception leaving the block is recorded on the
    span and in the status view and re-raised unchanged. Under ``async with``, a job with a
    ``timeout`` is cancelled at the deadline and `JobTimeoutError` raised instead (on
    Python 3.10, a cancellation from elsewhere that coincides with the deadline is reported
    as the timeout: only 3.11's ``Task.uncancel`` tells the two apart); a plain
    ``with`` block cannot be interrupted, so there the timeout is not enforced (the run is
    still reported stalled past ``stall_after``, which is at least the timeout).
    """

    __slots__ = (
        "_attributes",
        "_handle",
        "_monitor",
        "_span",
        "_timed_out",
        "_timeout",
        "_token",
        "name",
    )

    def __init__(self, monitor: JobMonitor, name: str, attributes: Mapping[str, str]) -> None:
        self._monitor = monitor
        self.name = name
        self._attributes = attributes
        self._span: Span | None = None
        self._token: RunToken | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._timed_out = False

    @property
    def span(self) -> Span:
        """The run's span (a non-recording one before the run starts)."""
        return self._span or trace.INVALID_SPAN

    def set_metadata(self, values: Mapping[str, object] | None = None, /, **more: object) -> None:
        """Merge metadata into the run (see `jobpulse.set_metadata`)."""
        if self._span is None:
            raise RuntimeError("set_metadata() needs a run in progress: call it inside the block")
        _merge_metadata(self._span, {**(values or {}), **more})

    def __enter__(self) -> JobRun:
        if self._span is not None:
            raise RuntimeError(f"this run of {self.name!r} was already started; call run() again")
        self._span, self._token = self._monitor._start(self.name, self._attributes)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = cast(Span, self._span)
        if exc is not None and self._token is not NESTED:
            record_failure(span, exc)
        self._monitor._finish(span, self._token)

    async def __aenter__(self) -> JobRun:
        self.__enter__()
        timeout = self._monitor._registry.timeout_of(self.name)
        if timeout is not None and self._token is not NESTED:
            with _START_GUARD:
                task = asyncio.current_task()
                if task is not None:
                    self._timeout = timeout
                    self._handle = asyncio.get_running_loop().call_later(
                        timeout, self._cancel, task
                    )
        return self

    def _cancel(self, task: asyncio.Task[Any]) -> None:
        self._timed_out = True
        task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._timed_out:
            uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python >= 3.11
            cancelled_elsewhere = uncancel is not None and uncancel() > 0
            if isinstance(exc, asyncio.CancelledError) and not cancelled_elsewhere:
                error = JobTimeoutError(self.name, self._timeout)
                record_failure(cast(Span, self._span), error, timed_out=True)
                self._monitor._finish(cast(Span, self._span), self._token)
                raise error from exc
        self.__exit__(exc_type, exc, traceback)


class _Outcome:
    """What a job thread produced, handed to the caller that waits for it."""

    __slots__ = ("abandoned", "done", "error", "finished", "lock", "result")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.finished = False
        self.abandoned = False
        self.result: Any = None
        self.error: BaseException | None = None


class RunInProgress(NamedTuple):
    """A run of a job that has not ended, as `JobMonitor._runs_in_progress` gives it."""

    started_at: datetime
    #: Running past the job's ``stall_after``.
    stalled: bool
    #: The id of the store's instance running it; "" without a store (this process).
    instance: str


class JobMonitor:
    """Monitors background jobs: every run is a span, and a span processor keeps a status
    view that `status`, `statuses`, `summary` and `health` read.

    Args:
        tracer_provider: an SDK ``TracerProvider`` to add the monitor's processor to. None
            uses the global one if the SDK is set up, else a private provider that exports
            nothing (nothing global is created or replaced). The provider's sampler is wrapped
            in `JobAwareSampler` so that no run is sampled out of the view.
        meter_provider: where the instruments are created; None uses the global one (a no-op
            until the application sets one up).
        namespace: prefix of the metric names, e.g. ``icy_backend`` gives
            ``icy_backend_background_job_duration_seconds`` in Prometheus.
        stall_after: seconds (or timedelta) after which a still-running run is stalled,
            unless a job sets its own; a job's default is the larger of this and its timeout.
        max_jobs: how many distinct jobs (and pending kinds) may be tracked.
        retention: how long a job without a schedule that is not running and not updated
            stays in the view (scheduled jobs stay while registered).
        max_history: how many runs of the last 24 hours each job's history holds; past it,
            the oldest are dropped (and counted in ``history_dropped``).
        clock: where time is read; tests pass `jobpulse.testing.FakeClock`.
        store: where the processes of this service share their view (see docs/store.md):
            a URL (``sqlite:///jobs.db`` relative to the working directory,
            ``sqlite:////var/lib/app/jobs.db`` absolute) or a `jobpulse.store.Store`. With a
            store, `status`, `statuses`, `history`, `health` and the routes answer for every
            process writing to it, and a restarted process starts from what it holds. None
            (the default): this process alone, nothing written anywhere. Raises
            `jobpulse.StoreError` if it cannot be opened (nothing is attached then).
        flush_interval: seconds between the writes of this process's changes to the store
            (from a thread of its own, never a job's), and the longest a read of the fleet's
            view is reused.
        instance_ttl: a process whose last write is older than this is dead: its runs in
            progress are closed as failed, category ``lost``. At least twice `flush_interval`.
        store_buffer_runs: finished runs that may wait for a store that is down; those past
            it are counted and logged, and left out of the store's history (counts stay exact).
        service_name: the service this process is an instance of, in the store's list of
            instances; None takes ``service.name`` from the tracer provider's resource (or
            ``OTEL_SERVICE_NAME``).

    Thread-safe: runs may start and end on any thread or event loop.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        namespace: str = "",
        stall_after: Duration = 300.0,
        max_jobs: int = 1000,
        retention: Duration = timedelta(hours=24),
        max_history: int = 4096,
        clock: Clock | None = None,
        store: str | Store | None = None,
        flush_interval: Duration = 1.0,
        instance_ttl: Duration = 10.0,
        store_buffer_runs: int = 100_000,
        service_name: str | None = None,
    ) -> None:
        self._clock = clock or SYSTEM_CLOCK
        self.namespace = validate_namespace(namespace)
        default_stall_after = to_seconds(stall_after, "stall_after")
        retention_seconds = to_seconds(retention, "retention")
        max_history = validate_positive_int(max_history, "max_history")
        max_jobs = validate_positive_int(max_jobs, "max_jobs")
        # Checked and opened before anything is made or attached to a provider: a bad store,
        # or a bad setting of one, changes nothing and leaves no thread.
        buffer_runs = validate_positive_int(store_buffer_runs, "store_buffer_runs")
        service, version = _service_of(tracer_provider)
        service = service_name or service
        opened = (
            None
            if store is None
            else _open_store(store, flush_interval, instance_ttl, self.namespace, service)
        )
        self._registry = StatusRegistry(
            clock=self._clock,
            default_stall_after=default_stall_after,
            max_jobs=max_jobs,
            retention_seconds=retention_seconds,
            max_history=max_history,
        )
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(METER_NAME, __version__)
        self._processor = JobStatusProcessor(
            self._registry, Instruments(meter, self._registry, namespace)
        )
        self._private_provider: SdkTracerProvider | None = None
        self._tracer = self._attach(tracer_provider)
        self._abandoned: dict[str, int] = {}
        self._abandoned_lock = threading.Lock()
        after_fork_in_child(self._reset_after_fork)
        self._closed = False
        # What `setup()` built: the Prometheus registry that /metrics serves, and the
        # exporters to close (within one deadline) when the monitor shuts down.
        self._prometheus_registry: Any = None
        self._health_document = HealthDocument()
        self._fleet_document = HealthDocument()
        self._on_shutdown: list[Callable[[], object]] = []
        #: Seconds the store's last write may take at `shutdown` (setup() sets its own).
        self._shutdown_timeout = 2.0
        self._store: StoreLink | None = None
        if opened is not None:
            from jobpulse.store._link import StoreLink

            self._store = StoreLink(
                opened,
                self._registry,
                self._clock,
                service=service,
                version=version,
                flush_interval=to_seconds(flush_interval, "flush_interval"),
                instance_ttl=to_seconds(instance_ttl, "instance_ttl"),
                retention=retention_seconds,
                buffer_runs=buffer_runs,
                default_stall_after=default_stall_after,
                max_history=max_history,
            )

    @property
    def closed(self) -> bool:
        """True once `shutdown` has been called."""
        return self._closed

    def _attach(self, tracer_provider: trace.TracerProvider | None) -> trace.Tracer:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        if isinstance(provider, SdkTracerProvider):
            if not isinstance(provider.sampler, JobAwareSampler):
                provider.sampler = JobAwareSampler(provider.sampler)
            tracer = provider.get_tracer("jobpulse", __version__)
            if isinstance(tracer, SdkTracer):
                if not isinstance(tracer.sampler, JobAwareSampler):
                    tracer.sampler = provider.sampler
                provider.add_span_processor(self._processor)
                return tracer
            logger.info("OpenTelemetry SDK disabled: job runs are tracked but not exported")
        elif tracer_provider is not None:
            raise TypeError(
                "tracer_provider must be an opentelemetry.sdk.trace.TracerProvider, not "
                f"{type(tracer_provider).__name__}; pass None to use the global one"
            )
        private = SdkTracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
        # OTEL_SDK_DISABLED turns off telemetry, not the status view: this provider exports
        # nothing, so it stays enabled.
        private._disabled = False
        private.add_span_processor(self._processor)
        self._private_provider = private
        return private.get_tracer("jobpulse", __version__)

    # -- registration ------------------------------------------------------------------

    def register(
        self,
        name: str,
        *,
        critical: bool | None = None,
        failure_threshold: int | None = None,
        timeout: Duration | None = None,
        stall_after: StallAfter | None = None,
        schedule: ScheduleSpec | None = None,
        grace: Duration | None = None,
        timezone: str | tzinfo | None = None,
    ) -> None:
        """Add a job to the view (state ``pending``) or change the settings passed.

        Settings left at None keep their current value (a new job's defaults: not critical,
        failure_threshold 3, no timeout, stall_after the monitor's or the timeout if longer,
        no schedule).

        Args:
            stall_after: seconds, or ``"auto"``: max(3 x p95 of the last 24 h's successful
                runs, 60 s, the timeout) once 20 successful runs are known, the monitor's
                default until then.
            schedule: when runs are expected: ``"@every 2m"``, ``"@hourly"``, ``"@daily"``,
                ``"@weekly"``, ``"@monthly"``, ``"@yearly"``, a 5-field cron expression such
                as ``"30 2 * * *"`` (needs ``jobpulse[cron]``), or seconds / a timedelta. A
                run that has not started by the expected time plus `grace` makes the job
                ``missed``.
            grace: how late a run may start; default 10% of the schedule's period, at least
                1 s and at most 5 min.
            timezone: IANA name (or ``ZoneInfo``) for calendar schedules; default UTC.

        Raises:
            InvalidJobError: a bad name, setting or schedule (the message names the rule).
            JobLimitError: the job is new and the monitor already has `max_jobs` jobs.
        """
        name = validate_name(name)
        self._registry.register(
            name,
            self._settings(
                name, critical, failure_threshold, timeout, stall_after, schedule, grace, timezone
            ),
        )

    def unregister(self, name: str) -> bool:
        """Remove a job from the view (its schedule with it); True if it was there. A later
        run registers it again with default settings."""
        return self._registry.unregister(name)

    def set_next_run(
        self, name: str, when: datetime | None, *, grace: Duration | None = None
    ) -> None:
        """Expect the next run of `name` at `when` (an aware datetime), for scheduler
        integrations that know it better than a schedule string; None expects no run (a
        paused job). A run that starts no earlier than ``when - grace`` takes that slot; if
        none has started by ``when + grace`` the job is ``missed``. A job with a schedule of
        its own goes back to it after the next run. Registers the job on first use.
        """
        when_ns = None if when is None else _aware_ns(when, "when", held=False)
        grace_seconds = None if grace is None else to_seconds(grace, "grace")
        if name not in self._registry:
            self.register(name)
        self._registry.set_next_run(name, when_ns, grace_seconds)

    def record_run(
        self,
        name: str,
        *,
        start: datetime,
        end: datetime,
        error: BaseException | None = None,
        category: str | None = None,
        attributes: Mapping[str, str | bool | int | float] | None = None,
    ) -> None:
        """Record a run that executed elsewhere (another process, a pool's child) and has
        already finished, from `start` to `end` (aware datetimes). It becomes a span with those
        times, so the view, the metrics and the exporters see it as any other run. `error`
        makes it a failed run; `category` (a snake_case token such as ``"worker_lost"``)
        overrides the category classified from the error. Registers the job on first use.

        Raises:
            InvalidJobError: a bad name, time, category or an `end` before `start`.
        """
        start_ns, end_ns = _aware_ns(start, "start"), _aware_ns(end, "end")
        if end_ns < start_ns:
            raise InvalidJobError(f"end ({end.isoformat()}) is before start ({start.isoformat()})")
        if category is not None:
            validate_token(category, "category")
        if name not in self._registry:
            self.register(name)
        with _RECORD_GUARD:
            span = self._open_span(name, {**(attributes or {}), JOB_NAME: name}, start_ns)
            if span is None:
                return
            if error is not None:
                record_failure(span, error, category=category)
            self._end_span(span, end_ns)

    def record_skipped(
        self, name: str, *, reason: str, scheduled_at: datetime | None = None
    ) -> None:
        """Count a due run of `name` that was deliberately not started (a scheduler refused
        an overlapping run, a task was revoked before it began). `reason` is a snake_case
        token, the ``reason`` label of ``background_job.skipped_runs``. The job's state is
        unchanged. Registers the job on first use.

        Raises:
            InvalidJobError: a bad name, reason or `scheduled_at`.
        """
        validate_token(reason, "reason")
        if scheduled_at is not None:
            _aware_ns(scheduled_at, "scheduled_at")
        if name not in self._registry:
            self.register(name)
        self._registry.record_skipped(name, reason)

    def record_missed(self, name: str, *, scheduled_at: datetime, reason: str) -> None:
        """Count the run of `name` due at `scheduled_at` as missed, as the scheduler running
        it reports (e.g. APScheduler's misfire). Each scheduled time is counted once, also
        when jobpulse's own deadline already counted it. The job becomes ``missed`` unless a
        run is in progress; the next run that starts clears it. Registers the job on first use.

        Raises:
            InvalidJobError: a bad name, reason or `scheduled_at`.
        """
        slot_ns = _aware_ns(scheduled_at, "scheduled_at")
        validate_token(reason, "reason")
        if name not in self._registry:
            self.register(name)
        self._registry.record_missed(name, slot_ns, reason)

    @overload
    def job(self, func: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def job(
        self,
        name: str | None = None,
        /,
        *,
        critical: bool | None = None,
        failure_threshold: int | None = None,
        timeout: Duration | None = None,
        stall_after: StallAfter | None = None,
        schedule: ScheduleSpec | None = None,
        grace: Duration | None = None,
        timezone: str | tzinfo | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def job(
        self,
        name: str | Callable[..., Any] | None = None,
        /,
        *,
        critical: bool | None = None,
        failure_threshold: int | None = None,
        timeout: Duration | None = None,
        stall_after: StallAfter | None = None,
        schedule: ScheduleSpec | None = None,
        grace: Duration | None = None,
        timezone: str | tzinfo | None = None,
    ) -> Any:
        """Decorate a sync or async function so that each call is a monitored run.

        Used as ``@monitor.job``, ``@monitor.job()`` or ``@monitor.job("name", ...)``; the
        default name is the function's ``module.qualname``. The job is registered (and its
        name and settings checked) at decoration time. The wrapper keeps the function's name,
        docstring and signature, returns its result and re-raises its exceptions unchanged.

        With a ``timeout``, an async job is cancelled at the deadline and a sync job runs in a
        thread of its own; either way the caller gets `JobTimeoutError` at the deadline. A
        sync job's thread cannot be stopped: it is abandoned, and logged when it returns.

        The other settings are those of `register`.
        """
        options = (critical, failure_threshold, timeout, stall_after, schedule, grace, timezone)
        if callable(name):
            return self._decorate(name, None, options)
        if name is not None:
            self._settings(validate_name(name), *options)  # bad settings fail here, not later

        def decorator(func: Callable[P, R]) -> Callable[P, R]:
            return self._decorate(func, name, options)

        return decorator

    def _decorate(
        self, func: Callable[P, R], name: str | None, options: tuple[Any, ...]
    ) -> Callable[P, R]:
        function_name = _function_name(func)
        job_name = validate_name(name or function_name)
        settings = self._settings(job_name, *options)
        self._registry.register(job_name, settings)
        attributes = {JOB_NAME: job_name, CODE_FUNCTION: function_name}
        registry = self._registry

        def ensure_registered() -> None:
            if job_name not in registry:  # dropped by retention: bring the settings back
                try:
                    registry.register(job_name, settings)
                except JobLimitError as exc:  # the run goes ahead, unmonitored
                    logger.warning("%s", exc)

        job_of = registry.job

        def registered_job() -> Job | None:
            """The job in the view, brought back first if retention dropped it (None: the
            view is full, and the run goes ahead unmonitored)."""
            ensure_registered()
            return job_of(job_name)

        if inspect.isgeneratorfunction(func):
            generator = self._generator_job(func, job_name, attributes, ensure_registered)
            setattr(generator, JOB_NAME_ATTRIBUTE, job_name)
            return cast(Callable[P, R], generator)
        if inspect.isasyncgenfunction(func):
            agenerator = self._async_generator_job(func, job_name, attributes, ensure_registered)
            setattr(agenerator, JOB_NAME_ATTRIBUTE, job_name)
            return cast(Callable[P, R], agenerator)
        tracer_start = self._start
        finish = self._finish
        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[..., Awaitable[Any]], func)

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                job = job_of(job_name) or registered_job()
                if job is not None and job.timeout is not None:  # a JobRun cancels the task
                    async with JobRun(self, job_name, attributes):
                        return await async_func(*args, **kwargs)
                # What `async with JobRun(...)` does without a timeout, written out: the
                # hot path of an async job.
                span, token = tracer_start(job_name, attributes)
                try:
                    return await async_func(*args, **kwargs)
                except BaseException as exc:
                    if token is not NESTED:
                        record_failure(span, exc)
                    raise
                finally:
                    finish(span, token)

            setattr(run_async, JOB_NAME_ATTRIBUTE, job_name)
            return cast(Callable[P, R], run_async)

        @functools.wraps(func)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                job = job_of(job_name) or registered_job()
                timeout_seconds = None if job is None else job.timeout
                if timeout_seconds is None:
                    span, token = tracer_start(job_name, attributes)
            except RecursionError:  # no room left to monitor: the job runs as if undecorated
                return func(*args, **kwargs)
            if timeout_seconds is not None:
                return self._call_in_thread(
                    job_name, attributes, timeout_seconds, func, args, kwargs
                )
            try:
                return func(*args, **kwargs)
            except BaseException as exc:
                if token is not NESTED:
                    record_failure(span, exc)
                raise
            finally:
                finish(span, token)

        setattr(run_sync, JOB_NAME_ATTRIBUTE, job_name)
        return run_sync

    def _generator_job(
        self,
        func: Callable[..., Generator[Any, Any, Any]],
        name: str,
        attributes: Mapping[str, str],
        ensure_registered: Callable[[], None],
    ) -> Callable[..., Generator[Any, Any, Any]]:
        """A generator function's wrapper: a run spans the iteration, from the first
        ``next()`` to exhaustion, an exception, or ``close()`` (a consumer that stops early:
        a success). The run's span is current only while the generator's own code runs."""

        @functools.wraps(func)
        def run_generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            ensure_registered()
            inner = func(*args, **kwargs)
            span, token = self._start(name, attributes, current=None)
            # What is current while the generator's code runs: the run's span at first, then
            # whatever the generator left current at its last yield.
            step_context = _run_context(span)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                step = context_api.attach(step_context)
                try:
                    item = inner.send(sent) if thrown is None else inner.throw(thrown)
                except StopIteration as stop:
                    _detach(step)
                    self._finish(span, token)
                    return stop.value
                except BaseException as exc:
                    _detach(step)
                    self._fail(span, token, exc)
                    raise
                step_context = context_api.get_current()
                _detach(step)
                sent, thrown = None, None
                try:
                    sent = yield item
                except GeneratorExit:
                    step = context_api.attach(step_context)
                    try:
                        inner.close()
                    except BaseException as exc:
                        self._fail(span, token, exc)
                        raise
                    finally:
                        _detach(step)
                    self._finish(span, token)
                    raise
                except BaseException as exc:  # noqa: BLE001 - thrown in: handed to the job
                    thrown = exc

        return run_generator

    def _async_generator_job(
        self,
        func: Callable[..., AsyncGenerator[Any, Any]],
        name: str,
        attributes: Mapping[str, str],
        ensure_registered: Callable[[], None],
    ) -> Callable[..., AsyncGenerator[Any, Any]]:
        """`_generator_job` for an async generator function (``aclose()`` is a success)."""

        @functools.wraps(func)
        async def run_async_generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            ensure_registered()
            inner = func(*args, **kwargs)
            span, token = self._start(name, attributes, current=None)
            step_context = _run_context(span)  # as in `_generator_job`
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                step = context_api.attach(step_context)
                try:
                    item = await (inner.asend(sent) if thrown is None else inner.athrow(thrown))
                except StopAsyncIteration:
                    _detach(step)
                    self._finish(span, token)
                    return
                except BaseException as exc:
                    _detach(step)
                    self._fail(span, token, exc)
                    raise
                step_context = context_api.get_current()
                _detach(step)
                sent, thrown = None, None
                try:
                    sent = yield item
                except GeneratorExit:
                    step = context_api.attach(step_context)
                    try:
                        await inner.aclose()
                    except BaseException as exc:
                        self._fail(span, token, exc)
                        raise
                    finally:
                        _detach(step)
                    self._finish(span, token)
                    raise
                except BaseException as exc:  # noqa: BLE001 - thrown in: handed to the job
                    thrown = exc

        return run_async_generator

    def _fail(self, span: Span, token: RunToken | None, exc: BaseException) -> None:
        if token is not NESTED:
            record_failure(span, exc)
        self._finish(span, token)

    def run(self, name: str) -> JobRun:
        """A run of `name` as a context manager: ``with monitor.run("nightly_report") as run:``
        (or ``async with``). Registers the job on first use (raising `InvalidJobError` or
        `JobLimitError` before the block starts)."""
        if name not in self._registry:
            self.register(name)
        return JobRun(self, name, {JOB_NAME: name})

    def _settings(
        self,
        name: str,
        critical: bool | None,
        failure_threshold: int | None,
        timeout: Duration | None,
        stall_after: StallAfter | None,
        schedule: ScheduleSpec | None,
        grace: Duration | None,
        timezone: str | tzinfo | None,
    ) -> JobSettings:
        if critical is not None and not isinstance(critical, bool):
            raise InvalidJobError(f"critical must be a bool, not {type(critical).__name__}")
        parsed = None
        if schedule is not None:
            parsed = parse_schedule(schedule, timezone)
        elif timezone is not None:  # a new time zone for the job's current schedule
            current = self._registry.schedule_of(name)
            if current is None or current.timezone is None:
                raise InvalidJobError(
                    f"timezone {timezone!r} needs a calendar schedule (cron or @daily-style) "
                    f"and job {name!r} has none: pass schedule= too"
                )
            parsed = parse_schedule(current.text, timezone)
        auto = stall_after == "auto"
        return JobSettings(
            critical=critical,
            failure_threshold=None
            if failure_threshold is None
            else validate_positive_int(failure_threshold, "failure_threshold"),
            timeout=None if timeout is None else to_seconds(timeout, "timeout"),
            stall_after=None
            if stall_after is None or auto
            else to_seconds(stall_after, 'stall_after (or "auto")'),
            auto_stall=None if stall_after is None else auto,
            schedule=parsed,
            grace=None if grace is None else to_seconds(grace, "grace"),
        )

    # -- the run machinery (hot path) ---------------------------------------------------

    def _start(
        self, name: str, attributes: Mapping[str, str], *, current: bool | None = True
    ) -> tuple[Span, RunToken | None]:
        """Open a run of `name`: its span and the token that `_finish` (or `_release`)
        takes. The span is made current: in OpenTelemetry's context (`current` True, so
        spans made during the run are its children), in jobpulse's own only (False: nested
        runs and `set_metadata` find it, other tracers' spans do not take it as parent), or
        nowhere (None: the run is not this thread's or task's). Inside a run of the same job
        on this thread or task the run is that one: its span comes back with `NESTED`, and ending
        or failing it is left to the outer run. Never raises: if the span cannot be made,
        the job runs unmonitored (`INVALID_SPAN`, token None)."""
        try:
            # Not inside any run here (the common case): two reads, no call.
            current_context = context_api.get_current()
            if current_context.get(_SPAN_KEY, trace.INVALID_SPAN) is not trace.INVALID_SPAN:
                outer = self._outer_run(name)
                if outer is not None:
                    return outer, NESTED
            if _OWN_RUN.get() is not None:
                own = self._own_run(name)
                if own is not None:
                    return own, NESTED
            job = self._registry.job(name)
            scheduled = None if job is None else job.schedule_attributes
            if scheduled is not None:
                attributes = {**attributes, **scheduled}
            clock = self._clock
            start_ns = clock.time_ns()
            started = clock.monotonic()
            span = self._open_span(name, attributes, start_ns)
            if span is None:
                return trace.INVALID_SPAN, None
            if current:
                context: object = context_api.attach(_run_context(span, current_context))
            else:
                context = None if current is None else _OWN_RUN.set((name, span, _current_task()))
            return span, (context, started, start_ns)
        except Exception as exc:  # noqa: BLE001 - the job runs, unmonitored, rather than fail
            _report("run start", exc)
            return trace.INVALID_SPAN, None

    def _outer_run(self, name: str) -> Span | None:
        """The span of the run of `name` that a run starting here is part of: the current
        span, if it is a run of that job open in this monitor's view and this is the task
        (or thread) it runs in. Never raises."""
        try:
            outer = trace.get_current_span()
            if (
                outer is trace.INVALID_SPAN
                or span_attribute(outer, JOB_NAME) != name  # type: ignore[arg-type]
                or not outer.is_recording()
                # another monitor's run of a job of that name, or a span this view never saw
                or not self._registry.is_open(name, outer.get_span_context().span_id)
            ):
                return None
            owner = context_api.get_value(_RUN_TASK)
            if owner is not None:
                task = _current_task()
                if task is not None and task is not owner:
                    return None  # a task started inside the run: a run of its own
            return outer
        except Exception:  # noqa: BLE001 - then the run is a run of its own
            return None

    def _own_run(self, name: str) -> Span | None:
        """As `_outer_run`, for a run current in jobpulse's context only."""
        own = _OWN_RUN.get()
        if own is None or own[0] != name:
            return None
        span, task = own[1], own[2]
        if not span.is_recording() or not self._registry.is_open(
            name, span.get_span_context().span_id
        ):
            return None
        return span if task is None or task is _current_task() else None

    def _open_span(self, name: str, attributes: Mapping[str, Any], start_ns: int) -> Span | None:
        """Start the span of a run of `name`; None if the application's sampler or span
        processor raised before this monitor's processor saw the span start (the run is
        then not monitored)."""
        starting = self._processor.starting
        starting.span = ARMED
        try:
            span = self._tracer.start_span(name, attributes=attributes, start_time=start_ns)
        except Exception as exc:  # noqa: BLE001 - the application's processor or sampler
            # Our on_start may have opened the run before another processor raised: then
            # the run goes on with that span, else the job runs unmonitored.
            recovered, starting.span = starting.span, None
            if recovered is ARMED:
                report_foreign_error(
                    "starting a span", exc, f"the run of {name!r} is not monitored"
                )
                return None
            report_foreign_error("a span processor's on_start", exc, "the run is monitored")
            return cast(Span, recovered)
        starting.span = None  # holding no span once it is the caller's
        return span

    def _end_span(self, span: Span, end_ns: int) -> None:
        try:
            span.end(end_time=end_ns)
        except Exception as exc:  # noqa: BLE001 - the application's span processor
            report_foreign_error("a span processor's on_end", exc, "the run is recorded")
            self._processor.close_if_open(span)  # type: ignore[arg-type]

    def _finish(self, span: Span, token: RunToken | None) -> None:
        """End the run `_start` opened. Its end time is its start plus the time elapsed on
        the monotonic clock, so a step of the wall clock never changes a duration."""
        if token is NESTED:
            return
        try:
            if token is None:
                end_ns = self._clock.time_ns()
            else:
                context, started, start_ns = token
                if context is not None:
                    _detach(context)
                elapsed_ns = round((self._clock.monotonic() - started) * 1e9)
                end_ns = start_ns + max(elapsed_ns, 0)
            self._end_span(span, end_ns)
        except Exception as exc:  # noqa: BLE001 - never into the job (no guard: see record_failure)
            _report("run end", exc)

    @staticmethod
    def _release(token: RunToken | None) -> None:
        """Make the run's span stop being current here, without ending it."""
        if token is not None and token is not NESTED and token[0] is not None:
            _detach(token[0])

    def _call_in_thread(
        self,
        name: str,
        attributes: Mapping[str, str],
        timeout: float,
        func: Callable[..., R],
        args: Any,
        kwargs: Any,
    ) -> R:
        if context_api.get_value(_JOB_THREAD) == name:
            # A call inside the job's own thread is part of the run that thread is for (its
            # timeout is this call's), even once that run was abandoned.
            return func(*args, **kwargs)
        with self._abandoned_lock:
            hung = self._abandoned.get(name, 0)
        if hung:
            # A thread cannot be stopped: none more starts while one is left behind.
            self._registry.record_skipped(name, ABANDONED_THREAD)
            raise JobSkippedError(
                name,
                ABANDONED_THREAD,
                f"job {name!r} was not started: the run abandoned at its {timeout:g}s timeout "
                "is still running in its thread, and no thread is started for a sync job "
                "while one is left behind",
            )
        span, token = self._start(name, attributes)
        outcome = _Outcome()
        started = time.monotonic()
        job_context = contextvars.copy_context()  # the run's span is current in the thread
        job_context.run(_mark_job_thread, name)

        def target() -> None:
            try:
                outcome.result = job_context.run(func, *args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises
                outcome.error = exc
            with outcome.lock:
                outcome.finished = True
                abandoned = outcome.abandoned
            outcome.done.set()
            if abandoned:
                self._abandoned_returned(name, timeout, time.monotonic() - started, outcome.error)

        thread = threading.Thread(target=target, name=f"jobpulse-job-{name[:40]}", daemon=True)
        interrupted: BaseException | None = None
        try:
            thread.start()
            outcome.done.wait(timeout)
        except BaseException as exc:  # noqa: BLE001 - e.g. KeyboardInterrupt while waiting
            interrupted = exc
        with outcome.lock:
            outcome.abandoned = thread.ident is not None and not outcome.finished
            if outcome.abandoned:  # counted before the thread, once it returns, can uncount it
                with self._abandoned_lock:
                    self._abandoned[name] = self._abandoned.get(name, 0) + 1
        error = interrupted or outcome.error
        if error is None and outcome.abandoned:
            error = JobTimeoutError(name, timeout)
        if error is not None and token is not NESTED:
            record_failure(span, error)
        self._finish(span, token)
        if error is not None:
            raise error
        return cast(R, outcome.result)

    def _abandoned_returned(
        self, name: str, timeout: float, elapsed: float, error: BaseException | None
    ) -> None:
        with self._abandoned_lock:
            # At least 0: in a child forked while this thread ran, its count was reset.
            left = self._abandoned[name] = max(self._abandoned.get(name, 0) - 1, 0)
        logger.warning(
            "job %r: the thread abandoned at its %gs timeout returned after %.1fs (%s); "
            "%d abandoned threads of this job still running",
            name,
            timeout,
            elapsed,
            "ok" if error is None else f"raised {type(error).__name__}",
            left,
        )

    def _reset_after_fork(self) -> None:
        # The threads abandoned in the parent do not exist in the child; the lock may have
        # been held by one of the parent's threads.
        self._abandoned = {}
        self._abandoned_lock = threading.Lock()

    def abandoned_threads(self, name: str) -> int:
        """Threads of sync job `name` abandoned at their timeout and still running."""
        with self._abandoned_lock:
            return self._abandoned.get(name, 0)

    # -- pending work ------------------------------------------------------------------

    def set_pending(self, kind: str, count: int | None) -> None:
        """Report how many work items of `kind` wait (gauge ``background_jobs.pending``).

        `count` is an int >= 0, or None to stop reporting `kind`. Kinds follow the job-name
        rules and count against `max_jobs`.
        """
        validate_name(kind, "pending kind")
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or count < 0
        ):
            raise InvalidJobError(f"pending count must be an int >= 0 or None, got {count!r}")
        self._registry.set_pending(kind, count)

    # -- reading the view --------------------------------------------------------------

    def status(self, name: str) -> JobStatus | None:
        """The job's current status, or None if it is not in the view (the fleet's, with a
        store)."""
        local = functools.partial(self._registry.snapshot, name)
        if self._store is None:
            return local()
        return self._store.read(lambda fleet: fleet.snapshot(name), local)

    def statuses(self) -> dict[str, JobStatus]:
        """Every job in the view (the fleet's, with a store), by name (sorted)."""
        if self._store is None:
            return self._registry.snapshots()
        return self._store.read(lambda fleet: fleet.snapshots(), self._registry.snapshots)

    def pending(self) -> dict[str, int]:
        """The pending counts reported with `set_pending`."""
        return self._registry.pending()

    def history(self, name: str, limit: int | None = None) -> list[RunRecord]:
        """The job's finished runs of the last 24 hours, newest first, at most `max_history`
        of them ([] for an unknown job); with `limit`, the `limit` runs that ended last.
        With a store, the runs of every instance."""
        if limit is not None and limit < 0:
            raise InvalidJobError(f"limit must be at least 0, got {limit}")
        local = functools.partial(self._registry.history, name, limit)
        if self._store is None:
            return local()
        return self._store.read(lambda fleet: fleet.history(name, limit), local)

    def instances(self) -> list[Instance]:
        """The processes writing to the store, with service, host, pid, last heartbeat and
        whether they are alive; without a store, this process alone."""
        if self._store is None:
            return [self._local_instance()]
        return self._store.instances()

    def _runs_in_progress(self, name: str) -> tuple[str, list[RunInProgress]]:
        """The store's instance that started the job's latest run ("" if none is known, and
        without a store), and the job's runs in progress (the fleet's, with a store), oldest
        first. For the status page: a stalled run's start, and who runs the job."""
        link = self._store

        def local() -> tuple[str, list[tuple[int, bool, str]]]:
            here = "" if link is None else link.publisher.instance.id
            return "", [
                (start, stalled, here) for start, stalled in self._registry.runs_in_progress(name)
            ]

        if link is None:
            runner, runs = local()
        else:
            runner, runs = link.read(lambda fleet: fleet.runs_in_progress(name), local)
        return runner, [
            RunInProgress(from_ns(start), stalled, where) for start, stalled, where in runs
        ]

    def flush(self, timeout: float = 5.0) -> bool:
        """Write what this process has not yet written to its store, and wait until it is
        written or `timeout` seconds passed, trying again while the store refuses it; True
        if the store took it (and always without a store: nothing is pending). Later reads
        see the store as it is now. For tests, command-line tools and short scripts: a
        service needs no flush."""
        if self._store is None:
            return True
        return self._store.flush(timeout)

    def summary(self) -> JobsSummary:
        return JobsSummary.of(self.statuses(), from_ns(self._clock.time_ns()))

    def health(self) -> HealthReport:
        """The overall health (healthy 200 / degraded 206 / unhealthy 503) with every job."""
        started = time.perf_counter()
        statuses = self.statuses()
        view = PROCESS_VIEW if self._store is None else self._store.view()
        now = from_ns(self._clock.time_ns())
        return HealthReport(
            status=evaluate(statuses),
            timestamp=now,
            jobs=statuses,
            summary=JobsSummary.of(statuses, now),
            duration_ms=(time.perf_counter() - started) * 1000.0,
            view=view,
        )

    def health_json(self) -> tuple[HealthStatus, bytes]:
        """The overall health and the health document as compact UTF-8 JSON: what
        ``health().to_json()`` gives, built for the endpoint. Only the jobs that changed
        since the last call are serialized again."""
        status, parts = self._health_parts()
        return status, b"".join(parts)

    def _health_parts(self) -> tuple[HealthStatus, list[bytes]]:
        snapshot = self._health_snapshot()
        return snapshot.status, snapshot.parts()

    def _health_priority(self) -> AbstractContextManager[None]:
        """The scope in which the health endpoint builds its answer: with priority over
        runs on other threads (`StatusRegistry.reading`) when it is built from this
        process's view alone; with a store, reading the fleet's view may wait for it."""
        return self._registry.reading() if self._store is None else nullcontext()

    def _health_snapshot(self) -> HealthSnapshot:
        """The view as the endpoint serves it (the fleet's, with a store that can be read)."""
        started = time.perf_counter()
        link = self._store
        if link is None:
            rows = self._registry.health_rows()
            return self._health_document.snapshot(rows, from_ns(self._clock.time_ns()), started)
        fleet_rows = link.read(lambda fleet: fleet.health_rows(), lambda: None)
        view = link.view()
        if fleet_rows is None:
            rows = self._registry.health_rows()
            now = from_ns(self._clock.time_ns())
            return self._health_document.snapshot(rows, now, started, view)
        now = from_ns(self._clock.time_ns())
        return self._fleet_document.snapshot(fleet_rows, now, started, view)

    def shutdown(self) -> None:
        """Stop the watchdog and stop tracking. Idempotent. Does not shut down providers the
        application passed in or set globally, only the monitor's private one and what
        `jobpulse.setup()` built (flushed within its ``shutdown_timeout``)."""
        if self._closed:
            return
        self._closed = True
        # What setup() built is flushed first: its final metric export reads the view.
        for step in self._on_shutdown:
            step()
        self._processor.shutdown()
        if self._store is not None:
            self._store.stop(self._shutdown_timeout)
        if self._private_provider is not None:
            self._private_provider.shutdown()

    def _local_instance(self) -> Instance:
        from jobpulse.store import Instance

        service, version = _service_of(None)
        now_ns = self._clock.time_ns()
        return Instance("", service, socket.gethostname(), os.getpid(), version, now_ns, now_ns)


def _open_store(
    store: str | Store,
    flush_interval: Duration,
    instance_ttl: Duration,
    namespace: str,
    service: str,
) -> Store:
    from jobpulse.store import open_store

    flush_seconds = to_seconds(flush_interval, "flush_interval")
    ttl_seconds = to_seconds(instance_ttl, "instance_ttl")
    if flush_seconds <= 0 or ttl_seconds < 2 * flush_seconds:
        raise InvalidJobError(
            f"flush_interval must be > 0 and instance_ttl at least twice it, got "
            f"flush_interval={flush_seconds:g}s, instance_ttl={ttl_seconds:g}s"
        )
    return open_store(store, namespace=namespace, service=service)


def _service_of(provider: trace.TracerProvider | None) -> tuple[str, str]:
    """(service.name, service.version) of the provider's resource, or of the environment's
    (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``)."""
    provider = provider if provider is not None else trace.get_tracer_provider()
    if isinstance(provider, SdkTracerProvider):
        attributes = provider.resource.attributes
    else:
        attributes = Resource.create().attributes
    return (
        str(attributes.get(SERVICE_NAME, "unknown_service")),
        str(attributes.get(SERVICE_VERSION, "")),
    )


def _current_task() -> asyncio.Task[Any] | None:
    """The asyncio task running here, or None (no event loop running on this thread)."""
    loop = asyncio._get_running_loop()
    return None if loop is None else asyncio.current_task(loop)


def _run_context(span: Span, current: context_api.Context | None = None) -> context_api.Context:
    """The context that makes `span` current here (`current`: the current context, if the
    caller has it), marked with the task it is made current in (when there is one): the
    current context's values and those, in one copy (what ``set_span_in_context`` and
    ``set_value`` would make in one each)."""
    values = dict(context_api.get_current() if current is None else current)
    values[_SPAN_KEY] = span
    loop = asyncio._get_running_loop()  # `_current_task`, written out: every run calls this
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            values[_RUN_TASK] = task
    return context_api.Context(values)


def _mark_job_thread(name: str) -> None:
    context_api.attach(context_api.set_value(_JOB_THREAD, name))  # for the thread's lifetime


def _detach(context: object) -> None:
    """Restore the context that was current before the run's span was attached.

    A run that ends in another context than it began in (an async generator finalized by
    the event loop) has nothing to restore there: a contextvars token refuses to reset, and
    that is not an error. Other runtime contexts go through OpenTelemetry's own detach."""
    if isinstance(context, contextvars.Token):
        try:  # noqa: SIM105 - contextlib.suppress costs a context manager per run
            context.var.reset(context)
        except (ValueError, RuntimeError):
            pass
    else:
        context_api.detach(context)  # type: ignore[arg-type]


def _aware_ns(when: object, what: str, *, held: bool = True) -> int:
    """`when` in epoch nanoseconds; if `held` (the time of a run, or of a missed slot), it
    must fit what spans and stores hold: unsigned, and signed, 64-bit nanoseconds since 1970.
    An expected run may be any time: a slot centuries away is never due."""
    if not isinstance(when, datetime) or when.utcoffset() is None:
        raise InvalidJobError(f"{what} must be a timezone-aware datetime, got {when!r}")
    ns = to_ns(when)
    if held and not 0 <= ns < 1 << 63:
        raise InvalidJobError(f"{what} must be between 1970 and 2262, got {when.isoformat()}")
    return ns


def _function_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{qualname}" if module else qualname
