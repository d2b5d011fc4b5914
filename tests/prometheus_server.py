"""A real Prometheus server for tests: it scrapes the given targets and answers PromQL.

::

    with running_prometheus(["127.0.0.1:8000"], tmp_path) as prometheus:
        prometheus.wait_for('up{job="jobpulse"}', lambda result: value_of(result) == 1)

The binary is found on PATH (`require_binary`): without it a test skips on a laptop and
fails in CI (``JOBPULSE_REQUIRE_SERVERS=1``). Prometheus scrapes on its own schedule, so
assertions on what it stored go through `PrometheusServer.wait_for`, which re-queries until
the answer is the expected one or a deadline passes. The first scrape comes about 5 s after
the server is ready (Prometheus hands discovered targets to its scrapers every 5 s), then
one every second.

A test that needs a configuration of its own (several scrape jobs, static labels, rule files)
builds the whole mapping, starting from `one_second_global()`, and runs
``running_prometheus_with_config(config, tmp_path)``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REQUIRE_SERVERS

__all__ = [
    "Predicate",
    "PrometheusServer",
    "Sample",
    "free_port",
    "one_second_global",
    "require_binary",
    "run_promtool",
    "running_prometheus",
    "running_prometheus_with_config",
    "stop_process",
    "value_of",
]

#: One element of a PromQL answer: ``{"metric": {label: value}, "value": [time, "1"]}``.
Sample = dict[str, Any]
Predicate = Callable[[list[Sample]], bool]

SCRAPE_INTERVAL_MILLIS = 1000
SCRAPE_TIMEOUT_MILLIS = 800
READY_TIMEOUT_SECONDS = 20.0
WAIT_TIMEOUT_SECONDS = 20.0
POLL_INTERVAL_SECONDS = 0.25
STOP_TIMEOUT_SECONDS = 10.0
PROMTOOL_TIMEOUT_SECONDS = 120.0


def require_binary(name: str) -> str:
    """The path of executable `name` on PATH. Missing: the test skips, or fails when
    ``JOBPULSE_REQUIRE_SERVERS=1`` (CI installs it, so there a missing binary is a bug)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name!r} is not on PATH (Debian: apt-get install {name})"
        if REQUIRE_SERVERS:
            pytest.fail(f"{message}; JOBPULSE_REQUIRE_SERVERS=1 requires it", pytrace=False)
        pytest.skip(message)
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` in `cwd` and return what it did (a failed check is a result,
    not an exception); skips or fails as `require_binary` when promtool is missing."""
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
        check=False,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def value_of(result: list[Sample]) -> float | None:
    """The value of a one-sample answer; None for an empty one. More samples: an error."""
    if not result:
        return None
    if len(result) > 1:
        raise AssertionError(f"expected at most one sample, got {len(result)}: {result}")
    return float(result[0]["value"][1])


class PrometheusServer:
    """A running Prometheus at `url`, queried through its HTTP API. Not thread-safe."""

    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path
        self._client = httpx.Client(base_url=url, timeout=5.0)

    def close(self) -> None:
        self._client.close()

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET an HTTP API path (``/api/v1/rules``, ``/api/v1/alerts``...) and return its
        ``data``; raises AssertionError when Prometheus answers an error."""
        return self._get(path, params)["data"]

    def _get(self, path: str, params: dict[str, str] | None) -> dict[str, Any]:
        response = self._client.get(path, params=params)
        body: dict[str, Any] = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(
                f"Prometheus {path} {params or ''} answered {response.status_code}: "
                f"{body.get('errorType')}: {body.get('error')}"
            )
        return body

    def query(self, promql: str) -> list[Sample]:
        """Evaluate `promql` now (an instant query). A scalar or string answer is returned as
        one sample without labels. Raises AssertionError for a query Prometheus rejects."""
        return self.query_with_warnings(promql)[0]

    def query_with_warnings(self, promql: str) -> tuple[list[Sample], list[str]]:
        """`query`, plus the warnings Prometheus sent with the answer (none: an empty list)."""
        body = self._get("/api/v1/query", {"query": promql})
        data = body["data"]
        warnings: list[str] = body.get("warnings") or []
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}], warnings
        result: list[Sample] = data["result"]
        return result, warnings

    def series(self, selector: str) -> list[dict[str, str]]:
        """The label sets of the stored series that `selector` (``name{label="value"}``)
        matches, over all the data Prometheus holds."""
        found: list[dict[str, str]] = self.api("/api/v1/series", {"match[]": selector})
        return found

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded recording and alerting rule, with its group's file added as
        ``"file"``: name, query, health, lastError, labels (alerts: state, alerts)..."""
        groups = self.api("/api/v1/rules")["groups"]
        return [{**rule, "file": group["file"]} for group in groups for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts: labels, annotations, state, activeAt."""
        active: list[dict[str, Any]] = self.api("/api/v1/alerts")["alerts"]
        return active

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        active: list[dict[str, Any]] = self.api("/api/v1/targets", {"state": "active"})[
            "activeTargets"
        ]
        return active

    def wait_for(
        self,
        promql: str,
        predicate: Predicate,
        timeout: float = WAIT_TIMEOUT_SECONDS,
    ) -> list[Sample]:
        """Re-run `promql` every 0.25 s until `predicate(result)` is true; return that result.

        Fails after `timeout` seconds, showing the last result and the targets' scrape state.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_SECONDS)
        scrapes = [
            (target["scrapeUrl"], target["health"], target["lastError"])
            for target in self.targets()
        ]
        raise AssertionError(
            f"after {timeout:g} s, {promql!r} still does not satisfy the predicate;\n"
            f"last result: {json.dumps(result)}\ntargets (url, health, last error): {scrapes}"
        )


def one_second_global() -> dict[str, str]:
    """The ``global`` section of the servers started here: a scrape and a rule evaluation
    every second, a scrape timing out after 0.8 s."""
    # Prometheus durations take whole units: milliseconds.
    return {
        "scrape_interval": f"{SCRAPE_INTERVAL_MILLIS}ms",
        "scrape_timeout": f"{SCRAPE_TIMEOUT_MILLIS}ms",
        "evaluation_interval": f"{SCRAPE_INTERVAL_MILLIS}ms",
    }


def _write_config(directory: Path, config: Mapping[str, Any]) -> Path:
    # JSON is YAML: no YAML library needed.
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))
    return path


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-4000:]


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM, then SIGKILL if `process` has not exited within `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> bool:
    """True once /-/ready answers 200; False if the process exited (e.g. the port was
    taken). Fails the test at the deadline."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with httpx.Client(base_url=url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if client.get("/-/ready").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    stop_process(process)
    pytest.fail(
        f"Prometheus was not ready within {READY_TIMEOUT_SECONDS:g} s; its log:\n" + _tail(log_path)
    )


@contextmanager
def running_prometheus(
    targets: Sequence[str],
    directory: Path,
    *,
    job_name: str = "jobpulse",
    rule_files: Sequence[Path] = (),
) -> Iterator[PrometheusServer]:
    """Run Prometheus on 127.0.0.1 scraping `targets` ("host:port", path /metrics) every
    second, with its configuration, data and log in `directory`; stop it on exit.

    `rule_files` are recording/alerting rule files, evaluated every second. Blocks until
    the server is ready (at most 20 s); skips or fails when the binary is missing.
    """
    config = {
        "global": one_second_global(),
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job_name, "static_configs": [{"targets": list(targets)}]}],
    }
    with running_prometheus_with_config(config, directory) as server:
        yield server


@contextmanager
def running_prometheus_with_config(
    config: Mapping[str, Any], directory: Path
) -> Iterator[PrometheusServer]:
    """Run Prometheus on 127.0.0.1 with the configuration `config` (the mapping that
    prometheus.yml holds; paths in it absolute), its configuration file, data and log in
    `directory`; stop it on exit.

    Blocks until the server is ready (at most 20 s); fails when Prometheus rejects the
    configuration, skips or fails when the binary is missing.
    """
    binary = require_binary("prometheus")
    config_path = _write_config(directory, config)
    log_path = directory / "prometheus.log"
    for _attempt in range(3):  # another process may take the free port before Prometheus
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if not _wait_ready(process, url, log_path):
                if "address already in use" in log_path.read_text(errors="replace"):
                    continue
                pytest.fail(
                    f"Prometheus exited at start ({process.returncode}); its log:\n"
                    + _tail(log_path)
                )
            server = PrometheusServer(url, log_path)
            try:
                yield server
            finally:
                server.close()
            return
        finally:
            stop_process(process)
    pytest.fail("Prometheus found its port taken three times; its log:\n" + _tail(log_path))
