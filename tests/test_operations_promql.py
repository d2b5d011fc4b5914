"""Every PromQL expression of the operations kit (collector-config/), run by a real Prometheus
that scrapes the icy-backend demo and an app with faults made to order.

Prometheus is configured from the shipped prometheus.yml and loads the shipped alerts.yml.
It scrapes two processes under the scrape job ``icy-backend`` (``via="direct"``):

- the demo (examples/icy_backend), its jobs running every second, half of the runs failing
  and every third run of its stalling job hanging: the dashboard's data;
- tests/e2e_app.py with the demo's metric namespace, where the faults each alert is about
  are made on request: a critical and a non-critical job failing 4 times in a row, a job
  whose one success is older than its 2 s success window, a critical and a non-critical job
  that never run on their ``@every 1s`` schedule, and a run that stalls.

Then: each dashboard and rule expression evaluates without error or warning and has data
where the tables below say it should; each metric selector in them matches stored series;
Prometheus evaluates every rule without error; the alerts go pending for the jobs they are
about (and only those), and JobMetricsEndpointDown for an app that stops.

The apps and Prometheus are started once for the module. The last test stops the e2e app:
the tests run in file order.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml

from tests.dashboard_queries import DEFAULT_PATH as DASHBOARD_PATH
from tests.dashboard_queries import dashboard_expressions
from tests.demo_process import AppProcess, Demo, start_demo
from tests.e2e_app import READY_PREFIX, STALLING_JOB
from tests.prometheus_server import (
    PrometheusServer,
    one_second_global,
    require_binary,
    running_prometheus_with_config,
    stop_process,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR_CONFIG = ROOT / "collector-config"
PROMETHEUS_YML = COLLECTOR_CONFIG / "prometheus.yml"
#: The scrape job of prometheus.yml that reads the app's /metrics (label via="direct").
SCRAPE_JOB = "icy-backend"
NAMESPACE = "icy_backend"
DEADLINE_SECONDS = 60.0
POLL_SECONDS = 0.5
E2E_COMMAND = (sys.executable, "tests/e2e_app.py", "0", "--namespace", NAMESPACE)
E2E_READY = re.compile("^" + re.escape(READY_PREFIX) + r"(\S+)", re.MULTILINE)

#: Jobs every second, half of the runs failing, every third run of
#: pending_btc_transaction_processing hanging past its stall_after (which also makes
#: APScheduler skip a tick); any free port.
DEMO_SETTINGS = {
    "HOST": "127.0.0.1",
    "PORT": "0",
    "INDEX_INTERVAL": "1",
    "DEMO_FAILURE_RATE": "0.5",
    "DEMO_STALL_EVERY": "3",
    "DEMO_SEED": "11",
    "DEMO_CONSOLE_SPANS": "0",
}

# The e2e app's jobs, one per fault.
CRITICAL_FAILING_JOB = "e2e_critical_failing"
FAILING_JOB = "e2e_failing"  # not critical: must not raise CriticalJobFailing
FAILURES_IN_A_ROW = 4
WINDOW_JOB = "e2e_window_job"
WINDOW_SECONDS = 2
MISSED_JOB = "e2e_missed"
CRITICAL_MISSED_JOB = "e2e_missed_critical"
SCHEDULE = "@every 1s"

#: The dashboard's template variables as the test sets them: every instance and job, and
#: Grafana's built-in intervals for a 1 s scrape ($__rate_interval: more than 4 scrapes).
DASHBOARD_VALUES = {
    "via": "direct",
    "job": SCRAPE_JOB,
    "instance": ".*",
    "job_name": ".*",
    "__rate_interval": "5s",
    "__interval": "1s",
    "__range": "60s",
}

#: Whether each rule (by alert or record name; all rules of a name alike) has data here. A
#: rule without an entry fails the test: decide what the faults above make of it.
RULE_HAS_DATA = {
    "JobStalled": True,  # e2e_stuck, and now and then the demo's stalling job
    "CriticalJobFailing": True,  # e2e_critical_failing
    "JobMissedRuns": True,  # e2e_missed_critical (critical) and e2e_missed (warning)
    "JobNoRecentSuccess": True,  # e2e_window_job, through its 2 s window
    "JobFailureRatioHigh": True,  # both failing e2e jobs, and the demo's jobs (50% fail)
    "JobMetricsEndpointDown": False,  # both apps answer (the last test stops one)
    "OtelCollectorDown": False,  # no collector job here
    "jobpulse:success_window_seconds": True,  # vector(N)
}

#: Whether each dashboard expression (by the name tests.dashboard_queries gives it) has data
#: here. An expression without an entry fails the test.
DASHBOARD_HAS_DATA = {
    "$job": True,
    "$instance": True,
    "$job_name": True,
    "Jobs failing": True,  # each stat ends in `or vector(0)`
    "Jobs stalled": True,
    "Jobs missed": True,
    "Jobs running": True,
    "Jobs OK": True,
    "Critical jobs not OK": True,
    "Job state over time": True,
    "Current state per job": True,
    "Run rate by status": True,
    "Failure ratio": True,
    "Run duration p50 and p95 [A]": True,
    "Run duration p50 and p95 [B]": True,
    "Consecutive failures": True,
    "Active runs": True,
    "Stalled runs": True,
    "Time since last success": True,
    "Pending work by kind": True,
    "Missed runs in range": True,
    "Skipped runs in range by reason": True,  # the demo skips ticks while a run hangs
    "Timeouts in range": True,
    "Missed, skipped and timed-out runs per second [A]": True,
    "Missed, skipped and timed-out runs per second [B]": True,
    "Missed, skipped and timed-out runs per second [C]": True,
}

#: The alerts the faults raise: labels each active alert must carry (a subset of its labels).
EXPECTED_ALERTS: tuple[dict[str, str], ...] = (
    {"alertname": "JobStalled", "job_name": STALLING_JOB},
    {"alertname": "CriticalJobFailing", "job_name": CRITICAL_FAILING_JOB},
    {"alertname": "JobFailureRatioHigh", "job_name": CRITICAL_FAILING_JOB},
    {"alertname": "JobFailureRatioHigh", "job_name": FAILING_JOB},
    {"alertname": "JobMissedRuns", "job_name": CRITICAL_MISSED_JOB, "severity": "critical"},
    {"alertname": "JobMissedRuns", "job_name": MISSED_JOB, "severity": "warning"},
    {"alertname": "JobNoRecentSuccess", "job_name": WINDOW_JOB},
)

#: Metric selectors that match no series here, and why. Any other selector must match one.
NO_SERIES_HERE = {
    # OtelCollectorDown: the collector's scrape jobs are dropped (no collector binary here).
    'up{via=~"collector.*"}': "the collector's scrape jobs are not configured in this test",
}


@dataclass(frozen=True)
class Expression:
    """A PromQL expression of the kit: `key` (its table entry), `source` (where it is)."""

    key: str
    source: str
    promql: str

    def __str__(self) -> str:
        return f"{self.source}: {self.promql.strip()}"


class E2eApp(AppProcess):
    """tests/e2e_app.py running in a process of its own."""

    def post(
        self, path: str, params: Mapping[str, str] | None = None, expected_status: int = 200
    ) -> dict[str, Any]:
        response = httpx.post(self.base_url + path, params=params, timeout=10.0)
        assert response.status_code == expected_status, f"POST {path}: {response.text}"
        body: dict[str, Any] = response.json()
        return body

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Kit:
    """What the module's tests share: Prometheus, the two apps, the rule files it loads (the
    shipped ones, then the test's own)."""

    prometheus: PrometheusServer
    demo: Demo
    app: E2eApp
    shipped_rule_files: tuple[Path, ...]
    test_rule_file: Path

    @property
    def rule_files(self) -> tuple[Path, ...]:
        return (*self.shipped_rule_files, self.test_rule_file)


def _window_rules(directory: Path) -> Path:
    """A rule file of the test's own, as alerts.yml tells users to write one: the success
    window of e2e_window_job for JobNoRecentSuccess."""
    rules = {
        "groups": [
            {
                "name": "e2e-success-windows",
                "rules": [
                    {
                        "record": "jobpulse:success_window_seconds",
                        "expr": f"vector({WINDOW_SECONDS})",
                        "labels": {"job_name": WINDOW_JOB},
                    }
                ],
            }
        ]
    }
    path = directory / "e2e-windows.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _shipped_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    return config


def _shipped_rule_files() -> tuple[Path, ...]:
    """The rule files prometheus.yml loads (paths relative to its directory)."""
    return tuple(PROMETHEUS_YML.parent / name for name in _shipped_config()["rule_files"])


def _prometheus_config(targets: Sequence[str], rule_files: Sequence[Path]) -> dict[str, Any]:
    """The shipped prometheus.yml, made to scrape `targets` as its app job every second and
    to load `rule_files`."""
    shipped = _shipped_config()
    config = dict(shipped)
    config["global"] = {**shipped.get("global", {}), **one_second_global()}
    config["rule_files"] = [str(path) for path in rule_files]
    config.pop("alerting", None)  # no Alertmanager here; Prometheus's alert API is enough
    # Only the app's job is kept: the collector's jobs (exporter and self-telemetry) would
    # scrape an OpenTelemetry Collector, and there is no collector binary here.
    app_jobs = [job for job in shipped["scrape_configs"] if job["job_name"] == SCRAPE_JOB]
    assert len(app_jobs) == 1, f"{PROMETHEUS_YML}: expected one scrape job {SCRAPE_JOB!r}"
    app_job = dict(app_jobs[0])
    for key in ("scrape_interval", "scrape_timeout"):
        app_job.pop(key, None)  # the global 1 s applies
    static_configs = app_job["static_configs"]
    assert len(static_configs) == 1, f"{PROMETHEUS_YML}: {SCRAPE_JOB} has one static config"
    app_job["static_configs"] = [{**static_configs[0], "targets": list(targets)}]
    config["scrape_configs"] = [app_job]
    return config


def _wait(check: Callable[[], str | None], what: str, timeout: float = DEADLINE_SECONDS) -> None:
    """Call `check` until it returns None (done); at the deadline fail with what it last
    returned (what is still missing)."""
    deadline = time.monotonic() + timeout
    while (missing := check()) is not None:
        if time.monotonic() >= deadline:
            pytest.fail(f"after {timeout:g} s, {what}:\n{missing}", pytrace=False)
        time.sleep(POLL_SECONDS)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    require_binary("prometheus")  # before starting the apps it would be useless without
    directory = tmp_path_factory.mktemp("operations")
    app = E2eApp.launch(E2E_COMMAND, directory, "e2e_app")  # starts while the demo does
    demo: Demo | None = None
    try:
        demo = start_demo(directory, DEMO_SETTINGS)
        app.wait_ready(E2E_READY, "the e2e app")
        for name, settings in (
            (CRITICAL_FAILING_JOB, {"critical": "1"}),
            (FAILING_JOB, {"critical": "0"}),
            (WINDOW_JOB, {"critical": "0"}),
            (MISSED_JOB, {"critical": "0", "schedule": SCHEDULE}),
            (CRITICAL_MISSED_JOB, {"critical": "1", "schedule": SCHEDULE}),
        ):
            app.post(f"/register/{name}", settings)
        app.post(f"/run/{WINDOW_JOB}")
        app.post(f"/stall/{STALLING_JOB}", expected_status=202)
        shipped_rule_files, test_rule_file = _shipped_rule_files(), _window_rules(directory)
        config = _prometheus_config(
            [demo.address, app.address], (*shipped_rule_files, test_rule_file)
        )
        (directory / "prometheus").mkdir()
        with running_prometheus_with_config(config, directory / "prometheus") as prometheus:
            # The failures come once Prometheus has stored the runs counters at 0: increase()
            # and rate() see a counter's rise only from a sample before it.
            failing = f'{{job_name=~"{CRITICAL_FAILING_JOB}|{FAILING_JOB}"}}'
            prometheus.wait_for(
                f"{NAMESPACE}_background_job_runs_total{failing} == 0",
                lambda result: len(result) == 4,
                timeout=DEADLINE_SECONDS,
            )
            # The non-critical job fails first: a scrape that shows the critical job's
            # failures shows the other's too.
            for name in (FAILING_JOB, CRITICAL_FAILING_JOB):
                for _ in range(FAILURES_IN_A_ROW):
                    assert app.post(f"/run/{name}", {"fail": "1"})["status"] == "failed"
            yield Kit(prometheus, demo, app, shipped_rule_files, test_rule_file)
    finally:
        try:
            if app.process.poll() is None and app.base_url:
                httpx.post(f"{app.base_url}/release/{STALLING_JOB}", timeout=10.0)
        finally:
            app.stop()
            if demo is not None:
                demo.kill()
    # Whatever jobpulse's guard swallowed, it logged with a traceback.
    for name, path in (("e2e app", app.stderr_path), ("demo", directory / "demo.err")):
        stderr = path.read_text(errors="replace")
        assert "Traceback" not in stderr, f"{name}:\n{stderr}"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _rules_of(paths: Sequence[Path]) -> list[Expression]:
    expressions = []
    for path in paths:
        shown = _shown(path)
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                kind = "alert" if "alert" in rule else "record"
                labels = ",".join(f"{k}={v}" for k, v in sorted(rule.get("labels", {}).items()))
                source = f"{shown}, group {group['name']}, {kind} {rule[kind]} {{{labels}}}"
                expressions.append(Expression(rule[kind], source, rule["expr"]))
    return expressions


def _dashboard() -> list[Expression]:
    shown = _shown(DASHBOARD_PATH)
    return [
        Expression(name, f"{shown}, {name}", promql)
        for name, promql in dashboard_expressions(DASHBOARD_PATH, DASHBOARD_VALUES)
    ]


def _selectors(expression: Expression) -> list[str]:
    """Each vector selector in `expression` as a series selector, ``name{label="value"}``."""
    found: list[str] = []
    promql = expression.promql

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert not node.matchers.or_matchers, promql  # not in Prometheus 2.x
            matchers = ",".join(
                f"{m.name}{_match_op(m.op)}{json.dumps(m.value, ensure_ascii=False)}"
                for m in node.matchers.matchers
            )
            found.append(f"{node.name or ''}{{{matchers}}}" if matchers else str(node.name))
        return True

    try:
        parsed = promql_parser.parse(promql)
    except ValueError as exc:
        pytest.fail(f"{expression}\ndoes not parse: {exc}", pytrace=False)
    promql_parser.walk(parsed, visit)
    return found


# MatchOp is not hashable: pairs, not a dict.
_MATCH_OPS = (
    (promql_parser.MatchOp.Equal, "="),
    (promql_parser.MatchOp.NotEqual, "!="),
    (promql_parser.MatchOp.Re, "=~"),
    (promql_parser.MatchOp.NotRe, "!~"),
)


def _match_op(op: promql_parser.MatchOp) -> str:
    return next(sign for known, sign in _MATCH_OPS if known == op)


def _check_tables(expressions: Sequence[Expression], table: Mapping[str, bool], name: str) -> None:
    keys = {expression.key for expression in expressions}
    unlisted = sorted(keys - table.keys())
    stale = sorted(table.keys() - keys)
    assert not unlisted, (
        f"{name} has no entry for {unlisted}: say whether each has data in this test"
    )
    assert not stale, f"{name} lists {stale}, which no expression has any more"


def _has_data_check(
    prometheus: PrometheusServer, expressions: Sequence[Expression], table: Mapping[str, bool]
) -> None:
    """Every expression answers without error or warning; those the table expects data from
    answer something (at some point: rates need two scrapes), the others nothing (always)."""
    waiting = [expression for expression in expressions if table[expression.key]]

    def check() -> str | None:
        nonlocal waiting
        still: list[Expression] = []
        for expression in expressions:
            try:
                result, warnings = prometheus.query_with_warnings(expression.promql)
            except AssertionError as exc:
                pytest.fail(f"{expression}\nfails: {exc}", pytrace=False)
            assert not warnings, f"{expression}\nwarns: {warnings}"
            if not table[expression.key]:
                assert not result, f"{expression}\nshould answer nothing here, got {result}"
            elif not result and expression in waiting:
                still.append(expression)
        waiting = still
        return "\n".join(map(str, waiting)) or None

    _wait(check, "these expressions still answer nothing")


def test_rule_expressions_evaluate_with_data(kit: Kit) -> None:
    expressions = _rules_of(kit.rule_files)
    _check_tables(expressions, RULE_HAS_DATA, "RULE_HAS_DATA")
    _has_data_check(kit.prometheus, expressions, RULE_HAS_DATA)


def test_dashboard_expressions_evaluate_with_data(kit: Kit) -> None:
    expressions = _dashboard()
    assert expressions, f"{DASHBOARD_PATH} has no expression"
    _check_tables(expressions, DASHBOARD_HAS_DATA, "DASHBOARD_HAS_DATA")
    _has_data_check(kit.prometheus, expressions, DASHBOARD_HAS_DATA)


def test_every_selector_matches_series(kit: Kit) -> None:
    # Catches a wrong metric name or label value even in an expression with nothing to say.
    sources: dict[str, list[str]] = {}
    for expression in (*_rules_of(kit.rule_files), *_dashboard()):
        for selector in _selectors(expression):
            sources.setdefault(selector, []).append(expression.source)
    assert NO_SERIES_HERE.keys() <= sources.keys(), "NO_SERIES_HERE lists unused selectors"
    waiting = {selector for selector in sources if selector not in NO_SERIES_HERE}

    def check() -> str | None:
        for selector in sorted(waiting):
            if kit.prometheus.series(selector):
                waiting.discard(selector)
        return (
            "\n".join(f"{selector} in {sources[selector]}" for selector in sorted(waiting)) or None
        )

    _wait(check, "these selectors match no series")
    for selector in NO_SERIES_HERE:
        assert not kit.prometheus.series(selector), f"{selector} matches series now"


def test_prometheus_evaluates_every_rule_without_error(kit: Kit) -> None:
    # Rules by file and name (Prometheus shows each query re-formatted), counted: one name
    # may have several rules.
    expected = Counter(
        (str(path), expression.key) for path in kit.rule_files for expression in _rules_of([path])
    )

    def check() -> str | None:
        rules = kit.prometheus.rules()
        loaded = Counter((rule["file"], rule["name"]) for rule in rules)
        assert loaded == expected, f"Prometheus loaded {loaded}, not {expected}"
        unknown = [rule["name"] for rule in rules if rule["health"] == "unknown"]
        return f"not evaluated yet: {unknown}" if unknown else None

    _wait(check, "Prometheus has not evaluated every rule")
    failing = [
        (rule["file"], rule["name"], rule["health"], rule.get("lastError"), rule["query"])
        for rule in kit.prometheus.rules()
        if rule["health"] != "ok" or rule.get("lastError")
    ]
    assert not failing, failing


def _active(prometheus: PrometheusServer, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        alert
        for alert in prometheus.alerts()
        if alert["state"] in ("pending", "firing")
        and all(alert["labels"].get(name) == value for name, value in labels.items())
    ]


def test_alerts_go_pending_for_the_faults_and_only_them(kit: Kit) -> None:
    # Every alert waits `for:` minutes before it fires; pending is the state an alert is in
    # from the first evaluation its expression is true, which is what this test waits for.
    prometheus = kit.prometheus

    def check() -> str | None:
        missing = [labels for labels in EXPECTED_ALERTS if not _active(prometheus, labels)]
        return "\n".join(map(str, missing)) or None

    _wait(check, "these alerts are not pending or firing")

    # The non-critical job failed as often as the critical one, and before it: the rule
    # evaluation that made CriticalJobFailing pending for the critical job saw both.
    failures = f'{NAMESPACE}_background_job_consecutive_failures{{job_name="{FAILING_JOB}"}}'
    assert prometheus.query(f"{failures} == {FAILURES_IN_A_ROW}"), "the premise fails"
    silent = {"alertname": "CriticalJobFailing", "job_name": FAILING_JOB}
    assert not _active(prometheus, silent), f"CriticalJobFailing for the non-critical {FAILING_JOB}"
    selector = ",".join(f'{name}="{value}"' for name, value in silent.items())
    history = prometheus.query(f"count_over_time(ALERTS{{{selector}}}[10m])")
    assert not history, f"CriticalJobFailing was active for the non-critical {FAILING_JOB}"
    for alertname in ("JobMetricsEndpointDown", "OtelCollectorDown"):
        active = _active(prometheus, {"alertname": alertname})
        assert not active, f"{alertname} is active while both apps are up: {active}"


def test_metrics_endpoint_down_goes_pending_for_a_stopped_app(kit: Kit) -> None:
    # Stops the e2e app: the module's last test.
    active = _active(kit.prometheus, {"alertname": "JobMetricsEndpointDown"})
    assert not active, f"JobMetricsEndpointDown is active while both apps are up: {active}"
    kit.app.stop()
    down = {"alertname": "JobMetricsEndpointDown", "instance": kit.app.address}

    def check() -> str | None:
        return None if _active(kit.prometheus, down) else str(kit.prometheus.alerts())

    _wait(check, f"JobMetricsEndpointDown is not pending for {kit.app.address}")
    demo_down = {"alertname": "JobMetricsEndpointDown", "instance": kit.demo.address}
    assert not _active(kit.prometheus, demo_down), "the demo still answers"
