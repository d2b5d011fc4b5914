"""The duration histogram folded in batches exports what inline `record` calls export.

Every comparison feeds the same runs to two monitors, one folding batches (the default
with the SDK) and one forced to record run by run as before, each on a meter provider of
its own with the same readers, and compares what the readers (and Prometheus and OTLP
encodings) receive.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import metrics
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricReader,
)
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.trace import TracerProvider

from jobpulse import JobMonitor, _duration
from jobpulse._duration import FOLD_AT, DurationRecorder, batching_refusal
from tests.conftest import prometheus_reader

DURATION = "background_job.duration"
EPOCH = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
DELTA: dict[type, AggregationTemporality] = {SdkHistogram: AggregationTemporality.DELTA}


def cumulative() -> list[MetricReader]:
    return [InMemoryMetricReader()]


def delta() -> list[MetricReader]:
    return [InMemoryMetricReader(preferred_temporality=DELTA)]


def both() -> list[MetricReader]:
    return [InMemoryMetricReader(), InMemoryMetricReader(preferred_temporality=DELTA)]


READERS = {"cumulative": cumulative, "delta": delta, "cumulative and delta": both}


@dataclass
class Side:
    """A monitor with a meter provider and readers of its own."""

    monitor: JobMonitor
    readers: list[MetricReader]
    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    clock_ns: list[int] = field(default_factory=lambda: [0])

    def points(self) -> list[list[tuple[Any, ...]]]:
        """Each reader's duration points after a collection, as comparable tuples."""
        return [histogram_points(reader) for reader in self.readers]  # type: ignore[arg-type]

    def close(self) -> None:
        self.monitor.shutdown()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def histogram_points(reader: InMemoryMetricReader) -> list[tuple[Any, ...]]:
    data = reader.get_metrics_data()
    points: list[tuple[Any, ...]] = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name != DURATION:
                    continue
                for point in metric.data.data_points:
                    points.append(point_tuple(point))
    return sorted(points, key=repr)


def point_tuple(point: Any) -> tuple[Any, ...]:
    """Everything of a histogram point but its timestamps and exemplars."""
    attributes = tuple(sorted(point.attributes.items()))
    if hasattr(point, "bucket_counts"):
        return (
            attributes,
            point.count,
            point.sum.hex() if isinstance(point.sum, float) else point.sum,
            tuple(point.bucket_counts),
            tuple(point.explicit_bounds),
            point.min,
            point.max,
        )
    return (  # an exponential histogram (a View's aggregation)
        attributes,
        point.count,
        point.sum.hex() if isinstance(point.sum, float) else point.sum,
        point.scale,
        point.zero_count,
        point.positive.offset,
        tuple(point.positive.bucket_counts),
        point.min,
        point.max,
    )


class Pair:
    """A folding monitor and an inline one, fed the same runs."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        readers: Callable[[], list[MetricReader]],
        views: tuple[View, ...] = (),
    ) -> None:
        self.folding = self._side(readers, views)
        assert self.folding.monitor._processor._batched
        with monkeypatch.context() as patch:
            patch.setattr(_duration, "batching_refusal", lambda histogram: "inline, for a test")
            self.inline = self._side(readers, views)
        assert not self.inline.monitor._processor._batched

    @staticmethod
    def _side(readers: Callable[[], list[MetricReader]], views: tuple[View, ...]) -> Side:
        made = readers()
        meter_provider = MeterProvider(
            metric_readers=made, views=list(views), shutdown_on_exit=False
        )
        tracer_provider = TracerProvider(shutdown_on_exit=False)
        monitor = JobMonitor(tracer_provider, meter_provider)
        return Side(monitor, made, meter_provider, tracer_provider)

    def run(self, name: str, duration_us: int, failed: bool = False) -> None:
        """One finished run of `name`, recorded by both monitors."""
        for side in (self.folding, self.inline):
            start = EPOCH + timedelta(microseconds=side.clock_ns[0])
            side.clock_ns[0] += duration_us + 1
            error = RuntimeError("boom") if failed else None
            side.monitor.record_run(
                name, start=start, end=start + timedelta(microseconds=duration_us), error=error
            )

    def assert_same(self) -> list[list[tuple[Any, ...]]]:
        folded, inline = self.folding.points(), self.inline.points()
        assert folded == inline
        return folded

    def close(self) -> None:
        self.folding.close()
        self.inline.close()


@pytest.fixture
def pair_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Pair]]:
    made: list[Pair] = []

    def make(
        readers: Callable[[], list[MetricReader]] = both, views: tuple[View, ...] = ()
    ) -> Pair:
        pair = Pair(monkeypatch, readers, views)
        made.append(pair)
        return pair

    yield make
    for pair in made:
        pair.close()


@pytest.mark.parametrize("readers", READERS.values(), ids=READERS.keys())
def test_a_mix_of_runs_exports_the_points_inline_recording_does(
    pair_of: Callable[..., Pair], readers: Callable[[], list[MetricReader]]
) -> None:
    pair = pair_of(readers)
    rng = random.Random(17)
    for round_ in range(6):
        for _ in range(rng.randrange(0, 300)):
            name = rng.choice(("a", "b", "c"))
            kind = rng.random()
            if kind < 0.8:  # fast successes: folded
                pair.run(name, rng.randrange(0, 99_999))
            elif kind < 0.9:  # slow successes: recorded inline, between folded ones
                pair.run(name, rng.randrange(100_000, 5_000_000))
            else:
                pair.run(name, rng.randrange(0, 5_000_000), failed=True)
        if round_ == 3:
            continue  # two rounds' runs in one collection
        points = pair.assert_same()
        assert any(points), "the runs reached the readers"


def test_sums_are_the_same_bits_not_merely_close(pair_of: Callable[..., Pair]) -> None:
    # Durations whose float sum depends on the order of the additions: a partial sum
    # added at once would differ in the last bits.
    pair = pair_of(cumulative)
    for duration_us in (1, 99_999, 3, 77_777, 1, 12_345, 5, 98_765) * 50:
        pair.run("order", duration_us)
    points = pair.assert_same()
    (point,) = points[0]
    assert point[1] == 400
    partial_sum = sum((1, 99_999, 3, 77_777, 1, 12_345, 5, 98_765)) * 50 / 1e6
    assert float.fromhex(point[2]) == pytest.approx(partial_sum)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    runs=st.lists(
        st.tuples(st.sampled_from("xy"), st.integers(0, 400_000), st.booleans()),
        max_size=120,
    ),
    collect_every=st.integers(1, 50),
    readers=st.sampled_from(list(READERS)),
)
def test_any_runs_and_collections_give_the_same_points(
    runs: list[tuple[str, int, bool]], collect_every: int, readers: str
) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        pair = Pair(monkeypatch, READERS[readers])
    try:
        for index, (name, duration_us, failed) in enumerate(runs):
            pair.run(name, duration_us, failed and duration_us % 3 == 0)
            if index % collect_every == 0:
                pair.assert_same()
        pair.assert_same()
    finally:
        pair.close()


VIEWS = {
    "other buckets": View(
        instrument_name=DURATION,
        aggregation=ExplicitBucketHistogramAggregation(boundaries=(0.001, 0.01, 0.5)),
    ),
    "exponential": View(
        instrument_name=DURATION, aggregation=ExponentialBucketHistogramAggregation()
    ),
    "attribute keys": View(instrument_name=DURATION, attribute_keys={"job.name"}),
    "no min and max": View(
        instrument_name=DURATION,
        aggregation=ExplicitBucketHistogramAggregation(record_min_max=False),
    ),
}


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS.keys())
def test_a_view_on_the_histogram_is_respected(pair_of: Callable[..., Pair], view: View) -> None:
    pair = pair_of(both, (view,))
    for round_ in range(3):
        for index in range(40):
            pair.run("viewed", (index * 7919 + round_) % 150_000, failed=index % 11 == 0)
        assert any(pair.assert_same())


def test_runs_past_fold_at_are_folded_by_the_job_thread(pair_of: Callable[..., Pair]) -> None:
    pair = pair_of(both)
    registry = pair.folding.monitor._registry
    for index in range(FOLD_AT * 2 + 5):
        pair.run(f"job{index % 3}", index % 50_000)
        assert registry._kept < FOLD_AT  # bounded without a collection
    pair.assert_same()


def test_real_runs_of_decorated_jobs_on_threads_all_reach_the_histogram() -> None:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    monitor = JobMonitor(TracerProvider(shutdown_on_exit=False), meter_provider)
    assert monitor._processor._batched
    job = monitor.job("threaded")(lambda: None)
    collected: list[int] = []
    done = threading.Event()

    def collect() -> None:  # a reader collecting while the runs go on
        while not done.is_set():
            collected.append(len(histogram_points(reader)))

    collector = threading.Thread(target=collect)
    collector.start()
    workers = [threading.Thread(target=lambda: [job() for _ in range(1500)]) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    collector.join()
    ((_, count, _, buckets, _, low, high),) = histogram_points(reader)
    assert count == sum(buckets) == 8 * 1500
    assert 0 <= low <= high
    assert collected, "the reader collected during the runs"
    monitor.shutdown()
    meter_provider.shutdown()


def test_failed_and_slow_runs_keep_their_exemplars(pair_of: Callable[..., Pair]) -> None:
    pair = pair_of(cumulative)
    for side in (pair.folding, pair.inline):
        job = side.monitor.job("exemplary")(lambda fail: _maybe_fail(fail))
        for index in range(30):
            with contextlib.suppress(RuntimeError):
                job(index % 10 == 0)
        with side.monitor.run("exemplary"):
            side.clock_ns[0] += 1
            threading.Event().wait(0.11)  # a slow run: kept as an exemplar
    outcomes = []
    for side in (pair.folding, pair.inline):
        data = side.readers[0].get_metrics_data()  # type: ignore[attr-defined]
        exemplars = {}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == DURATION:
                        for point in metric.data.data_points:
                            status = point.attributes["status"]
                            exemplars[status] = sorted(
                                e.value >= 0.1 for e in point.exemplars if e.span_id
                            )
        outcomes.append(exemplars)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["failed"], "failed runs have exemplars"
    assert True in outcomes[0]["success"], "the slow run has an exemplar"


def _maybe_fail(fail: bool) -> None:
    if fail:
        raise RuntimeError("failed on purpose")


def test_prometheus_and_otlp_receive_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    encoder = pytest.importorskip(
        "opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder"
    )
    prometheus_readers: list[Any] = []
    otlp_readers: list[InMemoryMetricReader] = []

    def readers() -> list[MetricReader]:
        prometheus, _ = prometheus_reader()
        prometheus_readers.append(prometheus)
        otlp = InMemoryMetricReader(preferred_temporality=DELTA)
        otlp_readers.append(otlp)
        return [prometheus, otlp]

    pair = Pair(monkeypatch, readers)
    try:
        for round_ in range(3):
            for index in range(200):
                pair.run(f"p{index % 4}", (index * 104_729 + round_) % 130_000, index % 17 == 0)
            # Each reader's own text (its collector: with the exporter of `make test-lowest`
            # both readers write to the global registry).
            texts = [
                b"\n".join(
                    line
                    for line in prometheus_client.generate_latest(reader._collector).splitlines()
                    if b"background_job_duration" in line
                )
                for reader in prometheus_readers
            ]
            assert texts[0] == texts[1]
            assert b"background_job_duration_seconds_bucket" in texts[0]
            encoded = []
            for reader in otlp_readers:
                request = encoder.encode_metrics(reader.get_metrics_data())
                points = []
                for resource in request.resource_metrics:
                    for scope in resource.scope_metrics:
                        for metric in scope.metrics:
                            if metric.name == DURATION:
                                for point in metric.histogram.data_points:
                                    point.ClearField("start_time_unix_nano")
                                    point.ClearField("time_unix_nano")
                                    point.ClearField("exemplars")
                                    points.append(point.SerializeToString())
                encoded.append(sorted(points))
            assert encoded[0] == encoded[1]
            assert encoded[0]
    finally:
        pair.close()


# -- when batching is refused ----------------------------------------------------------


def test_a_meter_not_the_sdks_is_recorded_inline_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="jobpulse")
    monitor = JobMonitor(TracerProvider(shutdown_on_exit=False), NoOpMeterProvider())
    try:
        assert not monitor._processor._batched
        lines = [r.getMessage() for r in caplog.records if "run by run" in r.getMessage()]
        assert len(lines) == 1
        assert "not the OpenTelemetry SDK's" in lines[0]
        monitor.job("proxied")(lambda: None)()
        assert monitor.status("proxied").success_count == 1  # type: ignore[union-attr]
    finally:
        monitor.shutdown()


@pytest.mark.usefixtures("otel_globals")
def test_a_proxy_meter_is_recorded_inline_and_reaches_the_provider_set_later() -> None:
    # No MeterProvider set yet: the monitor's meter is the API's proxy.
    monitor = JobMonitor(TracerProvider(shutdown_on_exit=False))
    try:
        assert not monitor._processor._batched
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        monitor.job("proxied")(lambda: None)()
        ((attributes, count, *_),) = histogram_points(reader)
        assert (dict(attributes), count) == ({"job.name": "proxied", "status": "success"}, 1)
    finally:
        monitor.shutdown()


def test_an_sdk_version_outside_the_tested_range_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import opentelemetry.sdk.version

    histogram = MeterProvider(shutdown_on_exit=False).get_meter("t").create_histogram("h")
    for version in ("1.29.0", "1.99.0", "2.0.0", "nonsense"):
        monkeypatch.setattr(opentelemetry.sdk.version, "__version__", version)
        assert "outside the versions tested" in (batching_refusal(histogram) or "")


def test_an_exemplar_filter_that_keeps_spanless_exemplars_is_refused() -> None:
    from opentelemetry.sdk.metrics import AlwaysOnExemplarFilter

    provider = MeterProvider(exemplar_filter=AlwaysOnExemplarFilter(), shutdown_on_exit=False)
    histogram = provider.get_meter("t").create_histogram("h")
    assert "exemplar filter AlwaysOnExemplarFilter" in (batching_refusal(histogram) or "")


def test_a_failing_self_test_refuses_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong(aggregation: Any, values: Any, start: int) -> None:
        aggregation._sum += 1.0  # not what `aggregate` does

    monkeypatch.setattr(_duration, "_aggregate", wrong)
    assert _duration._self_test() == "a self-test's folded points differ from the recorded ones"

    def broken(aggregation: Any, values: Any, start: int) -> None:
        raise AttributeError("_value")

    monkeypatch.setattr(_duration, "_aggregate", broken)
    assert "self-test failed (AttributeError" in (_duration._self_test() or "")


def test_the_self_test_runs_once_and_its_verdict_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def self_test() -> str:
        calls.append(1)
        return "no, for a test"

    monkeypatch.setattr(_duration, "_self_test_result", [])
    monkeypatch.setattr(_duration, "_self_test", self_test)
    histogram = MeterProvider(shutdown_on_exit=False).get_meter("t").create_histogram("h")
    assert batching_refusal(histogram) == "no, for a test"
    assert batching_refusal(histogram) == "no, for a test"
    assert calls == [1]


def test_a_disabled_meter_drops_folded_runs_as_record_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    histogram = provider.get_meter("t").create_histogram(DURATION)
    if not hasattr(histogram, "_is_enabled"):
        pytest.skip("this opentelemetry-sdk has no meter configurator: nothing to disable")
    waiting = [({"job.name": "off", "status": "success"}, [0.5, 0.25])]
    recorder = DurationRecorder(histogram, lambda: [waiting.pop()] if waiting else [])
    monkeypatch.setattr(histogram, "_is_enabled", lambda: False)
    recorder.fold()
    monkeypatch.undo()
    assert not waiting
    assert histogram_points(reader) == []
    histogram.record(0.5, {"job.name": "on", "status": "success"})
    assert [p[1] for p in histogram_points(reader)] == [1]  # the same reader sees a record
