"""The metric instruments, their names, and the callbacks that read the status view.

Only the duration histogram is recorded per run (folded in batches where the SDK allows:
see `jobpulse._duration`). Runs, active and stalled runs, timeouts, missed and skipped runs,
the last success time, each job's state and consecutive failures, and pending work are
asynchronous instruments that read the registry when a reader collects, so a run costs one
histogram point and nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

from jobpulse._duration import DurationRecorder
from jobpulse._exceptions import InvalidJobError
from jobpulse._guard import Guard
from jobpulse._model import JobState
from jobpulse._registry import MetricPoint, StatusRegistry

__all__ = [
    "DURATION_BUCKETS",
    "METER_NAME",
    "Instruments",
    "instrument_names",
    "series_limit",
    "validate_namespace",
]

#: The instrumentation scope (meter) every jobpulse instrument belongs to.
METER_NAME = "jobpulse"

#: Histogram bucket bounds in seconds: 5 ms to 1 h.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
)  # fmt: skip

_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALLBACK_GUARD = Guard("metric callback")

_NAMES = {
    "duration": "background_job.duration",
    "runs": "background_job.runs",
    "active": "background_jobs.active",
    "stalled": "background_jobs.stalled",
    "timeouts": "job.timeouts",
    "missed": "background_job.missed_runs",
    "skipped": "background_job.skipped_runs",
    "last_success": "background_job.last_success_timestamp",
    "pending": "background_jobs.pending",
    "state": "background_job.state",
    "consecutive_failures": "background_job.consecutive_failures",
}


def validate_namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise InvalidJobError(f"namespace must be a str, not {type(namespace).__name__}")
    if namespace and not _NAMESPACE.fullmatch(namespace):
        raise InvalidJobError(
            f"namespace must be empty or match [A-Za-z_][A-Za-z0-9_]*, got {namespace!r}"
        )
    return namespace


def series_limit(max_jobs: int) -> int:
    """The per-instrument cardinality limit that `max_jobs` jobs need: the state gauge has a
    series per job and state. Never below the OpenTelemetry SDK's default of 2000."""
    return max(2000, len(JobState) * max_jobs + 1)


def instrument_names(namespace: str = "") -> dict[str, str]:
    """OpenTelemetry instrument names by role; with a namespace, each is prefixed "ns."."""
    prefix = f"{namespace}." if namespace else ""
    return {role: prefix + name for role, name in _NAMES.items()}


_Values = Callable[[MetricPoint], Iterable[tuple[float, Mapping[str, str]]]]


def _state_values(point: MetricPoint) -> Iterable[tuple[float, Mapping[str, str]]]:
    # Every state, 1 or 0, as kube-state-metrics does: a series per state stays put when the
    # state changes, so an OTLP path (where a series that stops being reported lingers until
    # the collector expires it) never shows two current states.
    critical = "true" if point.critical else "false"
    return [
        (
            1 if state is point.state else 0,
            {**point.attributes, "state": state.value, "critical": critical},
        )
        for state in JobState
    ]


class Instruments:
    """Creates every instrument on `meter`; the observable ones read `registry`.

    Set `closed` to make the observable instruments report nothing (after shutdown).
    """

    def __init__(self, meter: Meter, registry: StatusRegistry, namespace: str = "") -> None:
        self._registry = registry
        self.closed = False
        names = instrument_names(namespace)
        self.duration: Histogram = meter.create_histogram(
            names["duration"],
            unit="s",
            description="Duration of background job runs, by job and outcome.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.recorder = DurationRecorder(self.duration, registry.take_durations)
        if self.recorder.batched:
            registry.batch_durations()
        meter.create_observable_counter(
            names["runs"],
            callbacks=[
                self._per_job(
                    lambda p: (
                        (p.success_count, p.success_attributes),
                        (p.failure_count, p.failed_attributes),
                    ),
                    fold=True,
                )
            ],
            description="Finished background job runs, by job and outcome (success, failed).",
        )
        meter.create_observable_up_down_counter(
            names["active"],
            callbacks=[self._per_job(lambda p: ((p.active_runs, p.attributes),))],
            description="Background job runs in progress, by job.",
        )
        meter.create_observable_up_down_counter(
            names["stalled"],
            callbacks=[self._per_job(lambda p: ((p.stalled_runs, p.attributes),))],
            description="Background job runs in progress past their stall threshold, by job.",
        )
        meter.create_observable_counter(
            names["timeouts"],
            callbacks=[self._per_job(lambda p: ((p.timeout_count, p.attributes),))],
            description="Background job runs stopped at their timeout, by job.",
        )
        meter.create_observable_counter(
            names["missed"],
            callbacks=[self._per_job(lambda p: ((p.missed_count, p.attributes),))],
            description="Scheduled runs of background jobs that did not start in time, by job.",
        )
        meter.create_observable_counter(
            names["skipped"],
            callbacks=[self._per_job(lambda p: p.skipped)],
            description="Due runs of background jobs that were not started on purpose, by job "
            "and reason (e.g. max_instances, revoked).",
        )
        meter.create_observable_gauge(
            names["last_success"],
            unit="s",
            callbacks=[
                self._per_job(
                    lambda p: (
                        ()
                        if p.last_success_ns is None
                        else ((p.last_success_ns / 1e9, p.attributes),)
                    )
                )
            ],
            description="When each background job last finished successfully (Unix time).",
        )
        meter.create_observable_gauge(
            names["state"],
            callbacks=[self._per_job(_state_values)],
            description="Each background job's state: 1 for its current state, 0 for the others "
            "(labels state, critical).",
        )
        meter.create_observable_gauge(
            names["consecutive_failures"],
            callbacks=[self._per_job(lambda p: ((p.consecutive_failures, p.attributes),))],
            description="Failed runs in a row of each background job (0 after a success).",
        )
        meter.create_observable_gauge(
            names["pending"],
            callbacks=[self._observe_pending],
            description="Work items waiting for background jobs, by kind.",
        )

    def _per_job(
        self, values: _Values, *, fold: bool = False
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A callback observing `values` of every job; with `fold`, it first folds the
        durations waiting into the histogram (every reader's collection calls every
        callback before it reads the storage)."""

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            observations: list[Observation] = []
            if fold:
                with _CALLBACK_GUARD:
                    self.recorder.fold()
            if self.closed:
                return observations
            with _CALLBACK_GUARD:
                for point in self._registry.metric_points():
                    observations.extend(Observation(v, a) for v, a in values(point))
            return observations

        return callback

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        observations: list[Observation] = []
        if self.closed:
            return observations
        with _CALLBACK_GUARD:
            for kind, count in self._registry.pending().items():
                observations.append(Observation(count, {"kind": kind}))
        return observations
