"""A sampler wrapper under which no job run is ever sampled out of the status view.

Two hooks serve integrations:

- an *adopter* (`add_span_adopter`) turns a span that another instrumentation creates for a
  job run (opentelemetry-instrumentation-celery's ``run/<task>``) into the run itself, by
  adding ``job.name`` to its attributes at creation, so that a task run is one span, not
  two;
- a span created with ``job.record_only=True`` is tracked but never exported: a run that
  another process exports already (Celery beat's view of a task a worker runs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes, AttributeValue

from jobpulse._guard import report_internal_error
from jobpulse._shared import JOB_NAME, JOB_RECORD_ONLY

__all__ = [
    "JobAwareSampler",
    "SpanAdopter",
    "add_span_adopter",
    "remove_span_adopter",
]

#: ``adopter(span_name, kind)`` returns the attributes (with ``job.name``) that make a span
#: about to be created a job run, or None to leave it alone. Called for every span without
#: ``job.name`` while registered, on the thread creating the span: it must be fast and must
#: not raise (`add_span_adopter` guards it anyway).
SpanAdopter = Callable[[str, "SpanKind | None"], "Mapping[str, AttributeValue] | None"]

_adopters: tuple[SpanAdopter, ...] = ()
_adopters_lock = threading.Lock()


def add_span_adopter(adopter: SpanAdopter) -> None:
    """Consult `adopter` for every span created through a `JobAwareSampler` from now on."""
    global _adopters
    with _adopters_lock:
        if adopter not in _adopters:
            _adopters = (*_adopters, adopter)


def remove_span_adopter(adopter: SpanAdopter) -> None:
    """Stop consulting `adopter`; unknown adopters are ignored."""
    global _adopters
    with _adopters_lock:
        _adopters = tuple(known for known in _adopters if known != adopter)


def _adopt(name: str, kind: SpanKind | None) -> Mapping[str, AttributeValue] | None:
    for adopter in _adopters:
        try:
            adopted = adopter(name, kind)
        except Exception as exc:  # noqa: BLE001 - an integration's bug must not stop a span
            report_internal_error("span adopter", exc)
            continue
        if adopted:
            return adopted
    return None


class JobAwareSampler(Sampler):
    """Wraps another sampler; a span carrying ``job.name`` that it would drop is recorded
    instead (``RECORD_ONLY``): span processors, and so the status view and the metrics, see
    every run, while exporters still receive only sampled spans. A job span created with
    ``job.record_only=True`` is always ``RECORD_ONLY``.

    ``job.name`` must be passed when the span is created, not set afterwards (or added by a
    registered adopter).
    """

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    @property
    def delegate(self) -> Sampler:
        """The sampler wrapped."""
        return self._delegate

    @delegate.setter
    def delegate(self, sampler: Sampler) -> None:
        self._delegate = sampler
        # The SDK's default sampler: its answer for a job run is worked out here, in one
        # step (the delegate's takes three calls and a second look at the parent).
        self._parent_based_always_on = _is_default_sampler(sampler)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if attributes and JOB_NAME in attributes and self._parent_based_always_on:
            # ParentBased(ALWAYS_ON)'s answer: sampled but under a parent that is not, with
            # the parent's trace state; a dropped run is recorded anyway (RECORD_ONLY).
            parent = get_current_span(parent_context).get_span_context()
            valid = parent.is_valid
            sampled = (not valid or parent.trace_flags.sampled) and attributes.get(
                JOB_RECORD_ONLY
            ) is not True
            return SamplingResult(
                Decision.RECORD_AND_SAMPLE if sampled else Decision.RECORD_ONLY,
                attributes,
                parent.trace_state if valid else None,
            )
        delegate = self.delegate
        adopted = None
        if not (attributes and JOB_NAME in attributes):
            if _adopters:
                adopted = _adopt(name, kind)
            if adopted is None:  # not a job run: the delegate's answer as it is
                return delegate.should_sample(
                    parent_context, trace_id, name, kind, attributes, links, trace_state
                )
            attributes = {**(attributes or {}), **adopted}
        result = delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is Decision.DROP or attributes.get(JOB_RECORD_ONLY) is True:
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        if adopted is not None:  # whatever the delegate echoed, the span gets them
            echoed: Mapping[str, AttributeValue] = result.attributes or {}
            return SamplingResult(result.decision, {**echoed, **adopted}, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"JobAwareSampler{{{self.delegate.get_description()}}}"


def _is_default_sampler(sampler: Sampler) -> bool:
    """Whether `sampler` is ``ParentBased(ALWAYS_ON)`` with its default samplers for parents
    (the SDK's default): sample a root, follow a parent's sampled flag."""
    return (
        type(sampler) is ParentBased
        and getattr(sampler, "_root", None) is ALWAYS_ON
        and getattr(sampler, "_remote_parent_sampled", None) is ALWAYS_ON
        and getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON
        and getattr(sampler, "_remote_parent_not_sampled", None) is ALWAYS_OFF
        and getattr(sampler, "_local_parent_not_sampled", None) is ALWAYS_OFF
    )
