"""Metric instruments: names in Prometheus (the spec's contract), values, exemplars."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from prometheus_client import CollectorRegistry, generate_latest

from jobpulse import JobMonitor, JobState
from jobpulse._instruments import DURATION_BUCKETS, instrument_names
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory, Otel, in_own_context, prometheus_reader

SPEC_NAMES = {
    "icy_backend_background_job_duration_seconds": "histogram",
    "icy_backend_background_job_runs_total": "counter",
    "icy_backend_background_jobs_active": "gauge",
    "icy_backend_background_jobs_stalled": "gauge",
    "icy_backend_job_timeouts_total": "counter",
}


@pytest.fixture
def prometheus(otel: Otel, clock: FakeClock) -> Iterator[tuple[JobMonitor, CollectorRegistry]]:
    reader, registry = prometheus_reader(disable_target_info=True)
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    monitor = JobMonitor(otel.tracer_provider, meter_provider, namespace="icy_backend", clock=clock)
    yield monitor, registry
    monitor.shutdown()
    meter_provider.shutdown()


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def test_prometheus_exposition_has_the_specs_names_and_labels(
    prometheus: tuple[JobMonitor, CollectorRegistry], clock: FakeClock
) -> None:
    monitor, registry = prometheus

    @monitor.job("btc_transaction_indexing", timeout=600)
    def index(fail: bool) -> None:
        clock.advance(2)
        if fail:
            raise ConnectionError("node down")

    index(False)
    index(False)
    with pytest.raises(ConnectionError):
        index(True)
    monitor.set_pending("btc", 12)

    text = generate_latest(registry).decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for name, kind in SPEC_NAMES.items():
        assert types[name] == kind, name
    assert types["icy_backend_background_job_last_success_timestamp_seconds"] == "gauge"
    assert types["icy_backend_background_jobs_pending"] == "gauge"

    samples = _samples(registry)
    job = 'job_name="btc_transaction_indexing"'
    assert samples[f'icy_backend_background_job_runs_total{{{job},status="success"}}'] == 2
    assert samples[f'icy_backend_background_job_runs_total{{{job},status="failed"}}'] == 1
    assert samples[f"icy_backend_background_jobs_active{{{job}}}"] == 0
    assert samples[f"icy_backend_background_jobs_stalled{{{job}}}"] == 0
    assert samples[f"icy_backend_job_timeouts_total{{{job}}}"] == 0
    assert (
        samples[f'icy_backend_background_job_duration_seconds_count{{{job},status="success"}}'] == 2
    )
    assert (
        samples[f'icy_backend_background_job_duration_seconds_sum{{{job},status="success"}}'] == 4
    )
    assert (
        samples[
            f'icy_backend_background_job_duration_seconds_bucket{{{job},le="2.5",status="failed"}}'
        ]
        == 1
    )
    assert (
        samples[
            f'icy_backend_background_job_duration_seconds_bucket{{{job},le="1.0",status="failed"}}'
        ]
        == 0
    )
    assert samples['icy_backend_background_jobs_pending{kind="btc"}'] == 12
    last_success = samples[f"icy_backend_background_job_last_success_timestamp_seconds{{{job}}}"]
    assert last_success == pytest.approx(clock.now().timestamp() - 2)
    # only the spec's labels: job_name and status (and le, kind, state, critical where they
    # belong); the registry is prometheus_client's global one on an exporter before 0.63b0
    ours = "\n".join(line for line in text.splitlines() if line.startswith("icy_backend_"))
    labels = set(re.findall(r"[{,]([a-z_]+)=", ours))
    assert labels == {"job_name", "status", "le", "kind", "state", "critical"}


def test_active_and_stalled_gauges_while_running(
    prometheus: tuple[JobMonitor, CollectorRegistry], clock: FakeClock
) -> None:
    monitor, registry = prometheus
    monitor.register("swap_request_processing", stall_after=60)
    with (
        in_own_context(monitor.run("swap_request_processing")),
        in_own_context(monitor.run("swap_request_processing")),
    ):
        clock.advance(61)
        samples = _samples(registry)
        job = 'job_name="swap_request_processing"'
        assert samples[f"icy_backend_background_jobs_active{{{job}}}"] == 2
        assert samples[f"icy_backend_background_jobs_stalled{{{job}}}"] == 2


def test_one_histogram_point_per_run(monitor: JobMonitor, otel: Otel, clock: FakeClock) -> None:
    @monitor.job("h")
    def job() -> None:
        clock.advance(0.02)

    for _ in range(5):
        job()
    (point,) = otel.metrics()["background_job.duration"].values()
    assert isinstance(point, HistogramDataPoint)
    assert point.count == 5
    assert point.sum == pytest.approx(0.1)
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS


def test_exemplars_only_for_failed_and_slow_runs(
    monitor: JobMonitor, otel: Otel, clock: FakeClock
) -> None:
    @monitor.job("ex")
    def job(seconds: float, fail: bool = False) -> None:
        clock.advance(seconds)
        if fail:
            raise ValueError("x")

    # The SDK may keep no exemplar for the first point of a series: warm each one up.
    job(0.5)
    job(0.001)  # fast success: recorded without an exemplar
    job(0.6)  # slow success: exemplar
    for seconds in (0.001, 0.002):  # failures, however fast: exemplars
        with pytest.raises(ValueError, match="x"):
            job(seconds, fail=True)
    spans = {span.context.span_id: span for span in otel.spans()}
    points = otel.metrics()["background_job.duration"]
    success = points[(("job.name", "ex"), ("status", "success"))]
    failed = points[(("job.name", "ex"), ("status", "failed"))]
    assert isinstance(success, HistogramDataPoint)
    assert isinstance(failed, HistogramDataPoint)
    success_values = [round(e.value, 3) for e in success.exemplars]
    assert 0.6 in success_values
    assert 0.001 not in success_values
    assert [round(e.value, 3) for e in failed.exemplars] == [0.002]
    for exemplar in [*success.exemplars, *failed.exemplars]:
        assert exemplar.span_id in spans


def test_instrument_names_without_namespace() -> None:
    names = instrument_names()
    assert names["duration"] == "background_job.duration"
    assert names["runs"] == "background_job.runs"
    assert instrument_names("ns")["timeouts"] == "ns.job.timeouts"


def test_unregistered_idle_jobs_have_zero_gauges(make_monitor: MonitorFactory, otel: Otel) -> None:
    monitor = make_monitor()
    monitor.register("idle")
    metrics = otel.metrics()
    assert metrics["background_jobs.active"] == {(("job.name", "idle"),): 0}
    assert metrics["background_job.runs"][(("job.name", "idle"), ("status", "success"))] == 0
    assert "background_job.last_success_timestamp" not in metrics


def test_state_gauge_has_every_state_with_one_current(
    prometheus: tuple[JobMonitor, CollectorRegistry], clock: FakeClock
) -> None:
    monitor, registry = prometheus
    monitor.register("swap_request_processing", critical=True, stall_after=60)
    monitor.register("report")

    def states(job: str, critical: str) -> dict[str, float]:
        samples = _samples(registry)
        return {
            state.value: samples[
                f'icy_backend_background_job_state{{critical="{critical}",'
                f'job_name="{job}",state="{state.value}"}}'
            ]
            for state in JobState
        }

    def current(job: str, critical: str = "true") -> list[str]:
        values = states(job, critical)
        assert sorted(values.values()) == [0, 0, 0, 0, 0, 1], values
        return [state for state, value in values.items() if value == 1]

    assert current("swap_request_processing") == ["pending"]
    assert current("report", critical="false") == ["pending"]
    with monitor.run("swap_request_processing"):
        assert current("swap_request_processing") == ["running"]
        clock.advance(61)
        assert current("swap_request_processing") == ["stalled"]
    assert current("swap_request_processing") == ["success"]


def test_consecutive_failures_gauge_counts_failures_in_a_row(
    prometheus: tuple[JobMonitor, CollectorRegistry],
) -> None:
    monitor, registry = prometheus
    series = 'icy_backend_background_job_consecutive_failures{job_name="index"}'
    monitor.register("index")
    assert _samples(registry)[series] == 0
    for expected in (1, 2, 3):
        with pytest.raises(ValueError, match="boom"), monitor.run("index"):
            raise ValueError("boom")
        assert _samples(registry)[series] == expected
    with monitor.run("index"):
        pass
    assert _samples(registry)[series] == 0
