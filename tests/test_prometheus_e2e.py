"""End to end: the app in tests/e2e_app.py, served by uvicorn in a process of its own, is
scraped every second by a real Prometheus; what jobpulse exports is checked through
Prometheus's HTTP API, as a dashboard or an alert rule would read it.

The app and Prometheus are started once for the module; each test drives jobs (or pending
kinds) of its own, so the tests do not depend on one another's order.
"""

from __future__ import annotations

import math
import queue
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.e2e_app import READY_PREFIX, STALLING_JOB
from tests.prometheus_server import (
    Predicate,
    PrometheusServer,
    Sample,
    running_prometheus,
    stop_process,
    value_of,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
APP_READY_TIMEOUT_SECONDS = 20.0
APP_STOP_TIMEOUT_SECONDS = 10.0
SCRAPE_JOB = "jobpulse"

# prometheus_client's OpenMetrics parser has no annotations.
parse_openmetrics: Callable[[str], Iterable[Metric]] = (
    openmetrics_parser.text_string_to_metric_families
)

# Every label of every jobpulse series, by metric name: job and instance come from the
# scrape, the others from jobpulse. Anything more (otel_scope_name, a resource attribute,
# exported_job) would be noise on every series.
SCRAPE_LABELS = {"__name__", "job", "instance"}
EXPECTED_LABELS = {
    "e2e_background_job_duration_seconds_bucket": {"job_name", "status", "le"},
    "e2e_background_job_duration_seconds_count": {"job_name", "status"},
    "e2e_background_job_duration_seconds_sum": {"job_name", "status"},
    "e2e_background_job_runs_total": {"job_name", "status"},
    "e2e_background_jobs_active": {"job_name"},
    "e2e_background_jobs_stalled": {"job_name"},
    "e2e_job_timeouts_total": {"job_name"},
    "e2e_background_job_missed_runs_total": {"job_name"},
    "e2e_background_job_last_success_timestamp_seconds": {"job_name"},
    "e2e_background_jobs_pending": {"kind"},
    "e2e_background_job_state": {"job_name", "state", "critical"},
    "e2e_background_job_consecutive_failures": {"job_name"},
}


@dataclass
class App:
    """The running e2e app: its address ("127.0.0.1:port"), a client for it, its stderr."""

    address: str
    client: httpx.Client
    log_path: Path

    def post(self, path: str, expected_status: int = 200) -> dict[str, object]:
        response = self.client.post(path)
        assert response.status_code == expected_status, response.text
        body: dict[str, object] = response.json()
        return body


def _forward_lines(stream: Iterator[str], lines: queue.Queue[str]) -> None:
    # Drains the app's stdout to its end, so that the app never blocks on a full pipe.
    for line in stream:
        lines.put(line)


def _wait_ready_line(
    process: subprocess.Popen[str], lines: queue.Queue[str], log_path: Path
) -> str:
    """The URL from the app's ready line; fails the test if the app exits or stays silent."""
    deadline = time.monotonic() + APP_READY_TIMEOUT_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line.startswith(READY_PREFIX):
            return line.removeprefix(READY_PREFIX).strip()
    pytest.fail(
        f"the e2e app did not print its ready line within {APP_READY_TIMEOUT_SECONDS:g} s "
        f"(exit code {process.poll()}); its stderr:\n" + log_path.read_text(errors="replace")
    )


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    log_path = tmp_path_factory.mktemp("e2e_app") / "stderr.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "e2e_app.py"), "0"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=_forward_lines, args=(process.stdout, lines), name="e2e-app-stdout", daemon=True
    )
    reader.start()
    try:
        url = _wait_ready_line(process, lines, log_path)
        with httpx.Client(base_url=url, timeout=5.0) as client:
            yield App(url.removeprefix("http://"), client, log_path)
    finally:
        stop_process(process, APP_STOP_TIMEOUT_SECONDS)
        reader.join(APP_STOP_TIMEOUT_SECONDS)  # the pipe's end came with the process's
        process.stdout.close()
    # What jobpulse's guard swallowed in the app, it logged with a traceback.
    stderr = log_path.read_text(errors="replace")
    assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def prometheus(app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with running_prometheus(
        [app.address], tmp_path_factory.mktemp("prometheus"), job_name=SCRAPE_JOB
    ) as server:
        yield server


def _path(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _label(name: str) -> str:
    """`name` as a PromQL string literal."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _by(label: str, result: list[Sample]) -> dict[str, float]:
    """Sample values keyed by one label's value."""
    return {sample["metric"][label]: float(sample["value"][1]) for sample in result}


def _equals(expected: float) -> Predicate:
    return lambda result: value_of(result) == expected


def test_target_is_up(app: App, prometheus: PrometheusServer) -> None:
    up = prometheus.wait_for(f'up{{job="{SCRAPE_JOB}"}}', _equals(1.0))

    assert up[0]["metric"]["instance"] == app.address
    (target,) = prometheus.targets()
    assert (target["health"], target["lastError"]) == ("up", "")


def test_runs_and_durations_by_outcome(app: App, prometheus: PrometheusServer) -> None:
    job = "e2e_work"
    before = time.time()
    for _ in range(3):
        assert app.post(f"/run/{job}")["status"] == "success"
    for _ in range(2):
        assert app.post(f"/run/{job}?fail=1")["status"] == "failed"
    after = time.time()

    selector = f'{{job_name="{job}"}}'
    runs = prometheus.wait_for(
        "e2e_background_job_runs_total" + selector,
        lambda result: _by("status", result) == {"success": 3.0, "failed": 2.0},
    )
    # One scrape carries every series, and no more runs follow: plain queries from here.
    assert {sample["metric"]["instance"] for sample in runs} == {app.address}
    counts = prometheus.query("e2e_background_job_duration_seconds_count" + selector)
    assert _by("status", counts) == {"success": 3.0, "failed": 2.0}
    sums = _by("status", prometheus.query("e2e_background_job_duration_seconds_sum" + selector))
    assert sums.keys() == {"success", "failed"}
    assert all(0.0 <= seconds < 5.0 for seconds in sums.values()), sums

    buckets = prometheus.query(f'e2e_background_job_duration_seconds_bucket{{job_name="{job}"}}')
    for status, count in (("success", 3.0), ("failed", 2.0)):
        by_bound = {
            float(sample["metric"]["le"]): float(sample["value"][1])
            for sample in buckets
            if sample["metric"]["status"] == status
        }
        assert len(by_bound) == 20  # jobpulse's 19 bounds and +Inf
        assert by_bound[math.inf] == count
        cumulative = [by_bound[bound] for bound in sorted(by_bound)]
        assert cumulative == sorted(cumulative)

    for name in ("e2e_background_jobs_active", "e2e_background_jobs_stalled"):
        assert value_of(prometheus.query(name + selector)) == 0.0, name
    for name in ("e2e_job_timeouts_total", "e2e_background_job_missed_runs_total"):
        assert value_of(prometheus.query(name + selector)) == 0.0, name

    last_success = value_of(
        prometheus.query("e2e_background_job_last_success_timestamp_seconds" + selector)
    )
    assert last_success is not None
    assert before <= last_success <= after


def test_stalled_run_shows_in_prometheus_and_health(app: App, prometheus: PrometheusServer) -> None:
    selector = f'{{job_name="{STALLING_JOB}"}}'
    assert app.post(f"/stall/{STALLING_JOB}", 202)["status"] == "running"
    try:
        prometheus.wait_for("e2e_background_jobs_active" + selector, _equals(1.0))
        # stall_after is 1 s: the watchdog flags the run, the next scrape carries it.
        prometheus.wait_for("e2e_background_jobs_stalled" + selector, _equals(1.0))

        health = app.client.get("/api/v1/health/jobs")
        assert health.status_code == 503, health.text
        document = health.json()
        assert document["status"] == "unhealthy"
        stalled_job = document["jobs"][STALLING_JOB]
        assert (stalled_job["status"], stalled_job["active_runs"], stalled_job["stalled_runs"]) == (
            "stalled",
            1,
            1,
        )
        one_job = app.client.get(f"/api/v1/health/jobs/{STALLING_JOB}")
        assert one_job.status_code == 503, one_job.text
        assert one_job.json()["job"]["status"] == "stalled"
    finally:
        released = app.client.post(f"/release/{STALLING_JOB}")
    assert released.status_code == 200, released.text

    prometheus.wait_for(
        "e2e_background_job_runs_total" + selector,
        lambda result: _by("status", result) == {"success": 1.0, "failed": 0.0},
    )
    assert value_of(prometheus.query("e2e_background_jobs_stalled" + selector)) == 0.0
    assert value_of(prometheus.query("e2e_background_jobs_active" + selector)) == 0.0
    durations = prometheus.query(
        f'e2e_background_job_duration_seconds_sum{{job_name="{STALLING_JOB}",status="success"}}'
    )
    stalled_seconds = value_of(durations)
    assert stalled_seconds is not None
    assert stalled_seconds >= 1.0
    one_job = app.client.get(f"/api/v1/health/jobs/{STALLING_JOB}")
    assert one_job.status_code == 200, one_job.text
    assert one_job.json()["job"]["status"] == "success"


def test_pending_by_kind(app: App, prometheus: PrometheusServer) -> None:
    app.post("/pending/e2e_emails?count=7")
    app.post("/pending/e2e_reports?count=0")
    query = 'e2e_background_jobs_pending{kind=~"e2e_emails|e2e_reports"}'
    prometheus.wait_for(
        query, lambda result: _by("kind", result) == {"e2e_emails": 7.0, "e2e_reports": 0.0}
    )

    app.post("/pending/e2e_emails?count=2")
    prometheus.wait_for(
        query, lambda result: _by("kind", result) == {"e2e_emails": 2.0, "e2e_reports": 0.0}
    )


def test_series_carry_only_their_own_labels(app: App, prometheus: PrometheusServer) -> None:
    # Quotes, a backslash and non-ASCII text survive both exposition formats unchanged.
    job = 'e2e report "Q3" \\ café'
    app.post(f"/run/{_path(job)}")
    app.post("/pending/e2e_labels?count=1")
    prometheus.wait_for(
        f"e2e_background_job_runs_total{{job_name={_label(job)}}}",
        lambda result: _by("status", result) == {"success": 1.0, "failed": 0.0},
    )
    prometheus.wait_for('e2e_background_jobs_pending{kind="e2e_labels"}', _equals(1.0))

    series = prometheus.query(f'{{__name__=~"e2e_.+", job="{SCRAPE_JOB}"}}')
    labels_by_name: dict[str, set[frozenset[str]]] = {}
    for sample in series:
        labels_by_name.setdefault(sample["metric"]["__name__"], set()).add(
            frozenset(sample["metric"])
        )
    expected = {
        name: {frozenset(SCRAPE_LABELS | labels)} for name, labels in EXPECTED_LABELS.items()
    }
    assert labels_by_name == expected


def test_resource_is_in_target_info(prometheus: PrometheusServer) -> None:
    info = prometheus.wait_for(f'target_info{{job="{SCRAPE_JOB}"}}', _equals(1.0))

    labels = info[0]["metric"]
    assert labels["service_name"] == "e2e"
    assert labels["service_instance_id"]
    assert labels["telemetry_sdk_language"] == "python"


def test_prometheus_negotiates_openmetrics(prometheus: PrometheusServer) -> None:
    # Metadata shows which format Prometheus parsed: only OpenMetrics has units, names a
    # counter without its _total suffix and knows the info type.
    prometheus.wait_for(f'up{{job="{SCRAPE_JOB}"}}', _equals(1.0))
    metadata = prometheus.api(
        "/api/v1/targets/metadata", {"match_target": f'{{job="{SCRAPE_JOB}"}}'}
    )
    by_metric = {entry["metric"]: (entry["type"], entry["unit"]) for entry in metadata}
    assert by_metric["e2e_background_job_duration_seconds"] == ("histogram", "seconds")
    assert by_metric["e2e_background_job_runs"] == ("counter", "")
    assert by_metric["e2e_background_job_last_success_timestamp_seconds"] == ("gauge", "seconds")
    assert by_metric["target"] == ("info", "")


def test_metrics_endpoint_serves_both_formats(app: App) -> None:
    app.post("/run/e2e_formats")

    openmetrics = app.client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.status_code == 200
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(openmetrics.text)}
    assert families["e2e_background_job_runs"].type == "counter"
    assert families["e2e_background_job_duration_seconds"].type == "histogram"
    assert families["e2e_background_job_duration_seconds"].unit == "seconds"
    assert families["target"].type == "info"
    runs = {
        (sample.name, sample.labels["status"]): sample.value
        for sample in families["e2e_background_job_runs"].samples
        if sample.labels["job_name"] == "e2e_formats"
    }
    assert runs == {
        ("e2e_background_job_runs_total", "success"): 1.0,
        ("e2e_background_job_runs_total", "failed"): 0.0,
    }

    text = app.client.get("/metrics")
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    text_families = {family.name: family for family in parse_text(text.text)}
    assert text_families.keys() >= {
        "e2e_background_job_runs",
        "e2e_background_job_duration_seconds",
        "e2e_background_jobs_stalled",
    }
