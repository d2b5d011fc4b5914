"""The span processor that turns job spans into the status view and the duration histogram.

Any span created with a ``job.name`` attribute is a job run, whoever created it: jobpulse's
decorator, a scheduler integration, or the application's own tracer. Spans without it are
left alone after one dictionary lookup.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from types import MappingProxyType

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import NonRecordingSpan, StatusCode, set_span_in_context

from jobpulse import _errors, _metadata
from jobpulse._guard import Guard, swallow
from jobpulse._instruments import Instruments
from jobpulse._registry import StalledRun, StatusRegistry
from jobpulse._shared import (
    ERROR_CATEGORY,
    ERROR_TYPE,
    JOB_METADATA,
    JOB_NAME,
    JOB_RAN_IN_PID,
    JOB_TIMED_OUT,
    STALLED_EVENT,
)
from jobpulse._validation import is_token

__all__ = [
    "JobStatusProcessor",
    "span_attribute",
]

logger = logging.getLogger("jobpulse")

#: See `JobStatusProcessor.starting`.
ARMED = object()

#: Runs at least this long are recorded with their span as context, for exemplars.
SLOW_RUN_SECONDS = 0.1

_START = "span processor on_start"
_END = "span processor on_end"
_STALL_GUARD = Guard("stall report")
# Recording with an empty context keeps fast successful runs free of exemplar costs.
_NO_CONTEXT = Context()


def span_attribute(span: ReadableSpan, key: str) -> object:
    """One attribute of a span, or None, without the cost of a KeyError on a miss."""
    return _attributes_of(span).get(key)


_NO_ATTRIBUTES: Mapping[str, object] = MappingProxyType({})


def _attributes_of(span: ReadableSpan) -> Mapping[str, object]:
    """A span's attributes as a mapping to read (the SDK's own dict: no copy)."""
    try:
        attributes = span._attributes  # the SDK's BoundedAttributes; a dict lookup is cheapest
        return attributes._dict if attributes else _NO_ATTRIBUTES  # type: ignore[attr-defined]
    except AttributeError:  # another SDK's span, or a non-recording one
        public = getattr(span, "attributes", None)
        return public if public else _NO_ATTRIBUTES


class JobStatusProcessor(SpanProcessor):
    """Feeds the status view from ``on_start``/``on_end`` of spans carrying ``job.name``.

    Never blocks beyond one short registry lock and never raises: every hook body runs under
    the guard. After `shutdown` it ignores spans.
    """

    def __init__(self, registry: StatusRegistry, instruments: Instruments) -> None:
        self._registry = registry
        self._instruments = instruments
        self._recorder = instruments.recorder
        self._batched = instruments.recorder.batched
        self._closed = False
        # Set to ARMED by `JobMonitor._start` before it starts a span on this thread; the
        # span's on_start replaces it with the span, which `_start` takes back when another
        # processor raises in on_start after this one (the SDK then loses the span). Only
        # the monitor's own spans are kept here, so a lost span of another tracer is freed.
        self.starting = threading.local()
        registry.stall_listener = self._report_stalls
        registry.finished_elsewhere = self._finish_if_ended

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        name = _attributes_of(span).get(JOB_NAME)
        if name is None or self._closed:
            return
        starting = self.starting
        if getattr(starting, "span", None) is ARMED:
            starting.span = span
        try:  # the guard, written out: the hot path
            try:  # the SDK's span: its fields, without a property call for each
                run_id, start_ns = span._context[1], span._start_time or 0  # type: ignore[index]
            except (AttributeError, TypeError):  # another SDK's span
                run_id, start_ns = span.context.span_id, span.start_time or 0
            self._registry.start_run(
                name,  # type: ignore[arg-type]  # validated by the registry when new
                run_id,
                span,
                start_ns,
            )
        except Exception as exc:  # noqa: BLE001
            swallow(_START, exc)

    def on_end(self, span: ReadableSpan) -> None:
        self._record_end(span)

    def _record_end(self, span: ReadableSpan, *, closed_elsewhere: bool = False) -> bool:
        """Record the end of `span`'s run; False if nothing was recorded (see
        `StatusRegistry.end_run` for `closed_elsewhere`)."""
        attributes = _attributes_of(span)
        name = attributes.get(JOB_NAME)
        if name is None or self._closed:
            return False
        try:  # the guard, written out: the hot path
            try:  # the SDK's span: its fields, without a property call for each
                run_id, start_ns, end_ns = span._context[1], span._start_time, span._end_time  # type: ignore[index]
                failed = span._status._status_code is StatusCode.ERROR
            except (AttributeError, TypeError):  # another SDK's span
                run_id, start_ns, end_ns = span.context.span_id, span.start_time, span.end_time
                failed = span.status.status_code is StatusCode.ERROR
            start_ns = start_ns or 0
            end_ns = end_ns or start_ns
            error = category = ran_in = None
            timed_out = False
            if failed:
                error, category = _failure_of(span)
                timed_out = bool(attributes.get(JOB_TIMED_OUT))
                pid = attributes.get(JOB_RAN_IN_PID)
                ran_in = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
            metadata_text = attributes.get(JOB_METADATA)
            seconds = (end_ns - start_ns) / 1e9
            fast = error is None and 0.0 <= seconds < SLOW_RUN_SECONDS
            registry = self._registry
            result = registry.end_run(
                name,  # type: ignore[arg-type]  # validated by the registry when new
                run_id,
                start_ns,
                end_ns,
                error,
                category,
                timed_out,
                None if metadata_text is None else _metadata.decode(metadata_text),
                closed_elsewhere,  # positional: cheaper than keywords (the hot path)
                ran_in,
                seconds if fast and self._batched else None,
            )
            if result is None:
                return False
            metric_attributes, consecutive = result
            if fast:
                if not self._batched:
                    self._recorder.record(seconds, metric_attributes, _NO_CONTEXT)
                elif registry.durations_due:
                    self._recorder.fold()
            else:
                # on_end receives a ReadableSpan, which the exemplar filter does not take
                # for a span: hand it the run's span context instead.
                run = NonRecordingSpan(span.get_span_context())  # type: ignore[arg-type]
                self._recorder.record(seconds, metric_attributes, set_span_in_context(run))
            if error is not None:
                logger.warning(
                    "job %r failed after %.3fs (%s, %d in a row): %s",
                    name,
                    seconds,
                    category,
                    consecutive,
                    error,
                )
            return True
        except Exception as exc:  # noqa: BLE001
            swallow(_END, exc)
            return False

    def close_if_open(self, span: ReadableSpan) -> None:
        """Record the end of `span` if the view still has it running: its ``span.end()``
        raised in a span processor that comes before this one, so ``on_end`` never came."""
        self._record_end(span, closed_elsewhere=True)

    def _finish_if_ended(self, handle: object) -> bool:
        if not isinstance(handle, ReadableSpan) or handle.end_time is None:
            return False
        if self._record_end(handle, closed_elsewhere=True):
            logger.warning(
                "job %r: a run's span ended without jobpulse's span processor being told by "
                "its stall deadline (a span processor before it raised in on_end, or is still "
                "at work there); the run is recorded now",
                span_attribute(handle, JOB_NAME),
            )
        return True

    def _report_stalls(self, stalled: list[StalledRun]) -> None:
        for run in stalled:
            with _STALL_GUARD:
                logger.error(
                    "job %r stalled: running for %.1fs, past its stall_after of %.1fs",
                    run.job_name,
                    run.elapsed_seconds,
                    run.stall_after_seconds,
                )
                span = run.handle
                if isinstance(span, Span) and span.is_recording():
                    span.add_event(
                        STALLED_EVENT,
                        {
                            "job.elapsed_seconds": run.elapsed_seconds,
                            "job.stall_after_seconds": run.stall_after_seconds,
                        },
                    )

    def shutdown(self) -> None:
        self._closed = True
        self._instruments.closed = True
        self._registry.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _failure_of(span: ReadableSpan) -> tuple[str, str]:
    """The error text and category of a failed span, from what its creator recorded."""
    description = span.status.description
    exception_type = ""
    message = ""
    for event in reversed(span.events):
        if event.name == "exception" and event.attributes:
            exception_type = str(event.attributes.get("exception.type", ""))
            message = str(event.attributes.get("exception.message", ""))
            break
    category = span_attribute(span, ERROR_CATEGORY)
    if not is_token(category):  # absent, or another tracer's free text: classified here
        type_name = exception_type or str(span_attribute(span, ERROR_TYPE) or "")
        category = _errors.classify_names(
            [type_name] if type_name else [], message or description or ""
        )
    if not description:
        short_type = exception_type.rpartition(".")[2]
        description = (
            f"{short_type}: {message}" if short_type and message else short_type or message
        )
    return _errors.safe_error_text(description or "error"), category
