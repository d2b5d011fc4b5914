"""`jobpulse.setup()` exporting over OTLP to a real receiver, and to a dead collector.

The receivers (tests/otlp_receiver.py) are real OTLP/gRPC and OTLP/HTTP servers on
127.0.0.1; what they get is what a collector would get. The dead collector is a closed
port: every export fails, and the jobs must neither notice nor wait for it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint
from opentelemetry.proto.trace.v1.trace_pb2 import Status

import jobpulse
import jobpulse._setup
from tests.otlp_receiver import OtlpReceiver, Points, ReceivedSpan, grpc_receiver, http_receiver

ROOT = Path(__file__).resolve().parent.parent

UNSET = Status.StatusCode.STATUS_CODE_UNSET
OK = Status.StatusCode.STATUS_CODE_OK
ERROR = Status.StatusCode.STATUS_CODE_ERROR

RECEIVERS: dict[str, Callable[[], AbstractContextManager[OtlpReceiver]]] = {
    "grpc": grpc_receiver,
    "http/protobuf": http_receiver,
}

OK_SUCCESS = (("job.name", "ok_job"), ("status", "success"))
BAD_FAILED = (("job.name", "bad_job"), ("status", "failed"))


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests configure OTLP themselves: no OTEL_* variable of the caller's applies."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _run_jobs(monitor: jobpulse.JobMonitor) -> None:
    with monitor.run("ok_job"):
        pass
    with pytest.raises(ValueError, match="boom: 42"), monitor.run("bad_job"):
        raise ValueError("boom: 42")


def _runs_reported(points: Points) -> bool:
    runs = points.get("ns.background_job.runs", {})
    return runs.get(OK_SUCCESS) == 1 and runs.get(BAD_FAILED) == 1


def _histogram(points: Points, key: tuple[tuple[str, object], ...]) -> HistogramDataPoint:
    point = points["ns.background_job.duration"][key]
    assert isinstance(point, HistogramDataPoint)
    return point


@pytest.mark.usefixtures("otel_globals")
@pytest.mark.parametrize("protocol", list(RECEIVERS))
def test_spans_and_metrics_reach_the_collector(protocol: str) -> None:
    with RECEIVERS[protocol]() as receiver:
        monitor = jobpulse.setup(
            service_name="otlp-test",
            namespace="ns",
            prometheus=False,
            otlp_endpoint=receiver.endpoint,
            otlp_protocol=protocol,
            otlp_headers={"X-Api-Key": "secret-key"},
            metric_export_interval=0.2,
        )
        _run_jobs(monitor)
        # A periodic export (the final one, at shutdown, is tested below).
        points = receiver.store.wait_for_points(_runs_reported)
        monitor.shutdown()  # flushes the spans: the batch delay (5 s) has not passed
        spans = receiver.store.wait_for_spans(
            lambda spans: {"ok_job", "bad_job"} <= {span.name for span in spans}
        )
        headers = receiver.store.headers()
        metric_resources = [resource for resource, _ in receiver.store.metrics()]

    by_name: dict[str, ReceivedSpan] = {span.name: span for span in spans}
    assert len(spans) == 2
    ok, bad = by_name["ok_job"], by_name["bad_job"]
    assert ok.attributes["job.name"] == "ok_job"
    assert ok.status_code in (UNSET, OK)
    assert not any(name == "exception" for name, _ in ok.events)
    assert bad.attributes["job.name"] == "bad_job"
    assert bad.attributes["error.type"] == "ValueError"
    assert isinstance(bad.attributes["job.error.category"], str)
    assert bad.status_code == ERROR
    assert "boom: 42" in bad.status_message
    exceptions = [attributes for name, attributes in bad.events if name == "exception"]
    assert len(exceptions) == 1
    assert exceptions[0]["exception.type"] == "ValueError"
    assert exceptions[0]["exception.message"] == "boom: 42"
    assert {span.scope for span in spans} == {"jobpulse"}

    resources = [span.resource for span in spans] + metric_resources
    assert all(resource["service.name"] == "otlp-test" for resource in resources)
    instance_ids = {resource.get("service.instance.id") for resource in resources}
    assert len(instance_ids) == 1
    assert isinstance(next(iter(instance_ids)), str)
    assert next(iter(instance_ids))

    assert {
        "ns.background_job.duration",
        "ns.background_job.runs",
        "ns.background_jobs.active",
        "ns.background_jobs.stalled",
        "ns.background_job.last_success_timestamp",
    } <= set(points)
    assert all(name.startswith("ns.") for name in points)
    assert _histogram(points, OK_SUCCESS).count == 1
    assert _histogram(points, BAD_FAILED).count == 1
    assert set(points["ns.background_job.duration"]) == {OK_SUCCESS, BAD_FAILED}
    assert points["ns.background_job.runs"] == {
        OK_SUCCESS: 1,
        BAD_FAILED: 1,
        (("job.name", "ok_job"), ("status", "failed")): 0,
        (("job.name", "bad_job"), ("status", "success")): 0,
    }
    assert points["ns.background_jobs.active"] == {
        (("job.name", "ok_job"),): 0,
        (("job.name", "bad_job"),): 0,
    }
    last_success = points["ns.background_job.last_success_timestamp"]
    assert set(last_success) == {(("job.name", "ok_job"),)}
    assert abs(float(last_success[(("job.name", "ok_job"),)]) - time.time()) < 60

    # Header names are case-insensitive; gRPC takes only lower-case metadata keys.
    assert headers
    assert all(request.get("x-api-key") == "secret-key" for request in headers)


@pytest.mark.usefixtures("otel_globals")
def test_final_export_at_shutdown_carries_the_run_counts() -> None:
    with grpc_receiver() as receiver:
        monitor = jobpulse.setup(
            "otlp-test", namespace="ns", prometheus=False, otlp_endpoint=receiver.endpoint
        )  # the default interval (60 s): only the export at shutdown happens
        _run_jobs(monitor)
        monitor.shutdown()
        points = receiver.store.points()
    assert _histogram(points, OK_SUCCESS).count == 1  # the synchronous instrument arrives
    assert points.get("ns.background_job.runs") == {
        OK_SUCCESS: 1,
        BAD_FAILED: 1,
        (("job.name", "ok_job"), ("status", "failed")): 0,
        (("job.name", "bad_job"), ("status", "success")): 0,
    }


@pytest.mark.usefixtures("otel_globals")
@pytest.mark.parametrize("protocol", list(RECEIVERS))
def test_endpoint_from_the_environment(monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    with RECEIVERS[protocol]() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monitor = jobpulse.setup("otlp-env", prometheus=False)
        with monitor.run("env_job"):
            pass
        monitor.shutdown()
        spans = receiver.store.wait_for_spans(lambda spans: len(spans) >= 1)
        points = receiver.store.wait_for_points(lambda points: bool(points))
    assert [span.name for span in spans] == ["env_job"]
    assert spans[0].resource["service.name"] == "otlp-env"
    assert "background_job.duration" in points


@pytest.mark.usefixtures("otel_globals")
def test_a_per_signal_endpoint_turns_on_that_signal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_metric_exporter(*args: object) -> None:
        raise AssertionError("a metric exporter (to localhost:4317) was built")

    monkeypatch.setattr(jobpulse._setup, "_otlp_metric_exporter", no_metric_exporter)
    with grpc_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monitor = jobpulse.setup("otlp-traces-only", prometheus=False)
        with monitor.run("traced_job"):
            pass
        monitor.shutdown()
        spans = receiver.store.wait_for_spans(lambda spans: len(spans) >= 1)
        assert receiver.store.points() == {}
    assert [span.name for span in spans] == ["traced_job"]


class _LogSignal(logging.Handler):
    """Sets `seen` once a record at `level` or above is logged."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.set()


def _join_shutdown_threads(timeout: float) -> None:
    # What the bounded shutdown left running: finish it here, not in a later test.
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name == "jobpulse-telemetry-shutdown":
            thread.join(max(0.0, deadline - time.monotonic()))


@pytest.mark.slow
@pytest.mark.usefixtures("otel_globals")
def test_dead_collector_does_not_slow_jobs(closed_port: int) -> None:
    exporter_logger = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")
    failing = _LogSignal(logging.WARNING)
    exporter_logger.addHandler(failing)
    try:
        monitor = jobpulse.setup(
            "otlp-dead",
            prometheus=False,
            otlp_endpoint=f"http://127.0.0.1:{closed_port}",
            metric_export_interval=0.05,
            shutdown_timeout=0.5,
        )
        with monitor.run("noop"):
            pass  # something to export
        # Run the jobs while the metric exporter is failing and retrying (export timeout 2 s).
        assert failing.seen.wait(10.0), "the exporter never tried the dead collector"
        slowest = 0.0
        for _ in range(200):
            started = time.perf_counter()
            with monitor.run("noop"):
                pass
            slowest = max(slowest, time.perf_counter() - started)
        started = time.perf_counter()
        monitor.shutdown()
        shutdown_seconds = time.perf_counter() - started
    finally:
        exporter_logger.removeHandler(failing)
        _join_shutdown_threads(15.0)
    status = monitor.status("noop")
    assert status is not None
    assert status.success_count == 201
    # A run that waited for an export would take its 2 s timeout; these are bounds with a
    # wide margin for a loaded machine, not a measure of speed.
    assert slowest < 0.5
    assert shutdown_seconds < 0.5 + 1.0


_EXIT_SCRIPT = """
import sys, time
import jobpulse

monitor = jobpulse.setup(
    "otlp-exit",
    prometheus=False,
    otlp_endpoint=sys.argv[1],
    export_timeout=10.0,
    metric_export_interval=0.1,
)
for _ in range(50):
    with monitor.run("noop"):
        pass
print("ready", time.monotonic(), flush=True)
if sys.argv[2] == "shutdown":
    monitor.shutdown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["atexit", "shutdown"])
def test_process_exits_promptly_with_a_dead_collector(closed_port: int, ending: str) -> None:
    # export_timeout=10 makes the exporters as patient as the SDK's default: only the
    # bounded shutdown (shutdown_timeout, 2 s by default) can make the exit prompt.
    # Measured by hand with shutdown_timeout=30: the exit takes about 15 s.
    environment = {name: value for name, value in os.environ.items() if "OTEL_" not in name}
    with subprocess.Popen(
        [sys.executable, "-c", _EXIT_SCRIPT, f"http://127.0.0.1:{closed_port}", ending],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        marker = process.stdout.readline()
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        exited = time.monotonic()
    assert marker.startswith("ready "), stderr
    # The child's monotonic clock is the system's: the same one this process reads.
    exit_seconds = exited - float(marker.split()[1])
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "did not shut down within 2.0 s" in stderr  # the collector really was dead
    assert exit_seconds < 3.0


@pytest.mark.slow
def test_dead_collector_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/dead_collector.py", "--runs", "200", "--pairs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # A loaded test machine may miss a target; the benchmark itself must run and report.
    assert result.returncode in (0, 1), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["case", "us/run", "x", "live"]
    assert any(line.startswith("no-op job, dead collector") for line in lines)
    assert "target: dead collector <= 1.1x live" in result.stdout
    assert "target: shutdown <= 3.0 s" in result.stdout
