"""The duration histogram, recorded in batches where the OpenTelemetry SDK allows it.

``Histogram.record`` is the largest part of a monitored run's cost: six layers of the SDK
(attribute copy and hashing, a Measurement, the exemplar filter, a storage and a view per
reader, a lock) for one bucket increment. With the SDK's own MeterProvider, the registry
keeps the durations of fast successful runs instead (a float appended under the lock it
holds anyway), and `DurationRecorder` folds them into the SDK's aggregations at each
collection, before any reader reads, and whenever `FOLD_AT` are waiting. A fold makes, in
each aggregation, the additions that ``record`` would have made, one value at a time and in
the same order: the points exported (count, sum, buckets, min and max; cumulative or delta;
one reader or several) are the same to the bit. Failed and slow runs are recorded inline,
with their span as context, for exemplars (the batched ones are fast successes recorded
without a span, which keep no exemplar under the trace-based filter either).

Folding reads the SDK's private metric storage. Batching is chosen at start-up only when
the histogram is the SDK's (not a proxy of the API, not another SDK's), the SDK's version is
one this code was tested with, the exemplar filter keeps no exemplar of a measurement made
without a span, and a self-test folds and records the same values on a private provider (a
cumulative and a delta reader) and gets the same points. Otherwise every run is recorded
inline, as before, and one log line says why. Whatever a View does to the histogram
(buckets, aggregation, attribute keys) is respected: an aggregation that is not an explicit
bucket histogram receives each value through the SDK's own per-view path.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Hashable, Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import Histogram

from jobpulse._fork import after_fork_in_child

__all__ = [
    "FOLD_AT",
    "TESTED_SDK_VERSIONS",
    "Batch",
    "DurationRecorder",
    "batching_refusal",
]

logger = logging.getLogger("jobpulse")

#: Runs waiting to be folded that make the next run's thread fold them (bounded memory
#: when no reader collects).
FOLD_AT = 1024

#: The opentelemetry-sdk versions (major, minor) whose private metric storage the fold was
#: tested against, both ends included; CI runs the suite with the first and the last.
TESTED_SDK_VERSIONS = ((1, 30), (1, 45))

#: One series' waiting durations: its attributes and its values, oldest first.
Batch = tuple[Mapping[str, str], Sequence[float]]

_NO_CONTEXT = Context()

_refusal_lock = threading.Lock()
_self_test_result: list[str | None] = []  # empty until the self-test has run


class DurationRecorder:
    """Records `histogram` inline, or folds the batches `take()` returns into it.

    `batched` says which (decided once, at construction). `take` returns the series waiting
    and empties them; it is called with this recorder's lock held.
    """

    def __init__(
        self,
        histogram: Histogram,
        take: Callable[[], list[Batch]],
        *,
        check: bool = True,
    ) -> None:
        self._histogram = histogram
        self._take = take
        self._lock = threading.Lock()
        reason = batching_refusal(histogram) if check else None
        self.batched = reason is None
        if reason is not None:
            logger.info(
                "jobpulse records the duration histogram run by run (%s); it exports the "
                "same points, at a higher cost per run",
                reason,
            )
        after_fork_in_child(self._reset_after_fork)

    def record(self, seconds: float, attributes: Mapping[str, str], context: Context) -> None:
        """Record one run now; the runs waiting are folded first, so every series receives
        its values in the order the runs ended."""
        if not self.batched:
            self._histogram.record(seconds, attributes, context=context)
            return
        with self._lock:
            self._fold_locked()
            self._histogram.record(seconds, attributes, context=context)

    def fold(self) -> None:
        """Fold the runs waiting into the histogram's aggregations."""
        with self._lock:
            self._fold_locked()

    def _fold_locked(self) -> None:
        batches = self._take()
        if not batches:
            return
        histogram: Any = self._histogram
        enabled = getattr(histogram, "_is_enabled", None)
        if enabled is not None and not enabled():
            return  # a disabled meter: `record` would have dropped them too
        now_ns = time_ns()
        for storage in list(histogram._measurement_consumer._reader_storages.values()):
            for match in storage._get_or_init_view_instrument_match(histogram):
                for attributes, values in batches:
                    _fold_into(match, histogram, attributes, values, now_ns)

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()


def _fold_into(
    match: Any, instrument: Any, attributes: Mapping[str, str], values: Sequence[float], now_ns: int
) -> None:
    """Add `values` to the aggregation of `attributes` in one view of one reader's storage,
    as that many ``aggregate`` calls would, in order."""
    plain = dict(attributes)
    keys = match._view._attribute_keys
    kept = plain if keys is None else {k: v for k, v in plain.items() if k in keys}
    key = _aggregation_key(kept)
    index = 0
    while index < len(values):
        aggregation = match._attributes_aggregation.get(key)
        if aggregation is None or type(aggregation) is not _EXPLICIT:
            # The SDK's own path: it creates the aggregation (with its cardinality limit and
            # overflow series), or aggregates a kind this module does not add to itself.
            match.consume_measurement(
                _Measurement(values[index], now_ns, instrument, _NO_CONTEXT, plain), False
            )
            index += 1
            continue
        # Held by a collection while it takes (and, for delta, drops) the aggregations.
        with match._lock:
            if match._attributes_aggregation.get(key) is aggregation:
                _aggregate(aggregation, values, index)
                return


def _aggregate(aggregation: Any, values: Sequence[float], start: int) -> None:
    """``aggregation.aggregate`` of values[start:], without exemplars, in one lock hold."""
    boundaries = aggregation._boundaries
    with aggregation._lock:
        counts = aggregation._value
        if counts is None:
            counts = aggregation._value = aggregation._get_empty_bucket_counts()
        total = aggregation._sum
        low, high = aggregation._min, aggregation._max
        for index in range(start, len(values)):
            value = values[index]
            total += value
            if value < low:
                low = value
            if value > high:
                high = value
            counts[bisect_left(boundaries, value)] += 1
        aggregation._sum = total
        if aggregation._record_min_max:
            aggregation._min, aggregation._max = low, high


def batching_refusal(histogram: Histogram) -> str | None:
    """Why `histogram` must be recorded run by run, or None if folding batches is safe."""
    try:
        from opentelemetry.sdk.metrics import Histogram as SdkHistogram
        from opentelemetry.sdk.metrics._internal.exemplar import (
            AlwaysOffExemplarFilter,
            TraceBasedExemplarFilter,
        )
        from opentelemetry.sdk.metrics._internal.measurement_consumer import (
            SynchronousMeasurementConsumer,
        )
        from opentelemetry.sdk.version import __version__ as sdk_version
    except ImportError as exc:  # pragma: no cover - an SDK without these is not tested
        return f"opentelemetry-sdk lacks what batching needs ({exc})"
    if not isinstance(histogram, SdkHistogram):
        return (
            f"the meter is not the OpenTelemetry SDK's ({type(histogram).__name__}: a proxy "
            "when no MeterProvider was set before the monitor was made, or another SDK)"
        )
    version = _major_minor(sdk_version)
    low, high = TESTED_SDK_VERSIONS
    if version is None or not low <= version <= high:
        return (
            f"opentelemetry-sdk {sdk_version} is outside the versions tested "
            f"({low[0]}.{low[1]} to {high[0]}.{high[1]})"
        )
    consumer: Any = getattr(histogram, "_measurement_consumer", None)
    if type(consumer) is not SynchronousMeasurementConsumer:
        return f"an unknown measurement consumer ({type(consumer).__name__})"
    exemplar_filter = consumer._sdk_config.exemplar_filter
    if not isinstance(exemplar_filter, (TraceBasedExemplarFilter, AlwaysOffExemplarFilter)):
        return (
            f"the exemplar filter {type(exemplar_filter).__name__} keeps exemplars of runs "
            "recorded without a span"
        )
    with _refusal_lock:
        if not _self_test_result:
            _self_test_result.append(_self_test())
        return _self_test_result[0]


def _major_minor(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _self_test() -> str | None:
    """Fold and record the same values on a private provider; None if every point matches."""
    from opentelemetry.sdk.metrics import Histogram as SdkHistogram
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

    from jobpulse._instruments import DURATION_BUCKETS

    readers = (
        InMemoryMetricReader(),
        InMemoryMetricReader(preferred_temporality={SdkHistogram: AggregationTemporality.DELTA}),
    )
    provider = MeterProvider(metric_readers=readers, shutdown_on_exit=False)
    try:
        meter = provider.get_meter("jobpulse.self_test")
        advisory = list(DURATION_BUCKETS)
        inline = meter.create_histogram("inline", explicit_bucket_boundaries_advisory=advisory)
        folded = meter.create_histogram("folded", explicit_bucket_boundaries_advisory=advisory)
        waiting: list[Batch] = []
        recorder = DurationRecorder(folded, lambda: _drain(waiting), check=False)
        series = ({"job.name": "a", "status": "success"}, {"job.name": "b", "status": "success"})
        for round_ in range(3):
            for index, attributes in enumerate(series):
                if round_ == 1 and index == 1:
                    continue  # a series without values in one round (delta: no point)
                values = [(round_ * 7 + i * 13 + index) % 29 / 311 + 1e-9 * i for i in range(9)]
                values += [0.0, DURATION_BUCKETS[round_], 0.1 / 3]
                for value in values:
                    inline.record(value, attributes, context=_NO_CONTEXT)
                waiting.append((attributes, values))
            recorder.fold()
            for reader in readers:
                data = reader.get_metrics_data()
                if _points(data, "inline") != _points(data, "folded"):
                    return "a self-test's folded points differ from the recorded ones"
    except Exception as exc:  # noqa: BLE001 - any surprise in the SDK's internals: inline
        return f"the self-test failed ({type(exc).__name__}: {exc})"
    finally:
        provider.shutdown()
    return None


def _drain(waiting: list[Batch]) -> list[Batch]:
    taken = waiting[:]
    waiting.clear()
    return taken


def _points(data: Any, name: str) -> list[tuple[Hashable, ...]]:
    """(attributes, count, sum, buckets, min, max) of each point of metric `name`."""
    points: list[tuple[Hashable, ...]] = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    points.extend(_point_tuple(point) for point in metric.data.data_points)
    return sorted(points, key=repr)


def _point_tuple(point: Any) -> tuple[Hashable, ...]:
    return (
        tuple(sorted(point.attributes.items())),
        point.count,
        point.sum,
        tuple(point.bucket_counts),
        point.min,
        point.max,
    )


try:  # the SDK's private parts the fold uses, looked up once
    from opentelemetry.sdk.metrics._internal import _view_instrument_match as _vim
    from opentelemetry.sdk.metrics._internal.aggregation import (
        _ExplicitBucketHistogramAggregation as _EXPLICIT,
    )
    from opentelemetry.sdk.metrics._internal.measurement import Measurement as _Measurement

    _hash_attributes = getattr(_vim, "_hash_attributes", None)
except ImportError:  # pragma: no cover - then batching_refusal refuses too
    _EXPLICIT = _Measurement = _hash_attributes = None  # type: ignore[assignment,misc]


def _aggregation_key(attributes: dict[str, str]) -> Hashable:
    """The key a view's storage files the aggregation of `attributes` under (1.30's
    frozenset of items, or the hashed form of later versions)."""
    if _hash_attributes is not None:
        return _hash_attributes(attributes)  # type: ignore[no-any-return]
    return frozenset(attributes.items())
