"""collector-config/prometheus.yml and alerts.yml: promtool accepts them, the rule unit tests
in alerts.test.yml pass, and every alert carries what an on-call engineer needs (a `for:`, a
severity, a summary, a runbook section that exists) and has unit tests of its own."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from examples.icy_backend.jobs import JOB_NAMES

from tests.prometheus_server import run_promtool

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "collector-config"
ALERTS = CONFIG_DIR / "alerts.yml"
ALERT_TESTS = CONFIG_DIR / "alerts.test.yml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
RUNBOOK_BASE = "https://github.com/jobpulse/jobpulse/blob/main/docs/operations.md#"
SEVERITIES = {"critical", "warning"}
WINDOW_GROUP = "jobpulse-success-windows"
WINDOW_RECORD = "jobpulse:success_window_seconds"
# A Prometheus duration that is not zero: "1m", "90s", "1h30m" (promtool checks the syntax).
_NONZERO_DURATION = re.compile(r"^(?=.*[1-9])(\d+(ms|[smhdwy]))+$")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _assert_succeeds(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = _load(ALERTS)["groups"]
    return groups


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"] if "alert" in rule]


def _alert_names() -> set[str]:
    return {rule["alert"] for rule in _alert_rules()}


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lowercase, punctuation dropped, each
    space a hyphen."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


def markdown_headings(text: str) -> list[str]:
    """The ATX headings of a Markdown document, outside fenced code blocks."""
    return _HEADING.findall(_FENCED_BLOCK.sub("", text))


def test_github_slug() -> None:
    assert github_slug("Health endpoint answers 503") == "health-endpoint-answers-503"
    assert github_slug("Job stalled") == "job-stalled"
    assert github_slug("What's `up`?") == "whats-up"


def test_markdown_headings_skip_code_blocks() -> None:
    text = "# Title\n\n```bash\n# a shell comment\n```\n\n### Job stalled ###\n"
    assert markdown_headings(text) == ["Title", "Job stalled"]


def test_prometheus_config_is_valid() -> None:
    # Also checks the rule files the configuration names (alerts.yml).
    _assert_succeeds(run_promtool("check", "config", "prometheus.yml", cwd=CONFIG_DIR))


def test_alert_rules_are_valid() -> None:
    _assert_succeeds(run_promtool("check", "rules", "alerts.yml", cwd=CONFIG_DIR))


def test_alert_rule_unit_tests_pass() -> None:
    _assert_succeeds(run_promtool("test", "rules", "alerts.test.yml", cwd=CONFIG_DIR))


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    text = ALERTS.read_text()
    correct = "(icy_backend_background_jobs_stalled) > 0"
    assert correct in text
    broken = tmp_path / "alerts.yml"
    broken.write_text(text.replace(correct, "(icy_backend_background_jobs_stalled > 0", 1))

    result = run_promtool("check", "rules", str(broken), cwd=tmp_path)

    assert result.returncode != 0, result.stdout
    assert "parse error" in result.stdout + result.stderr


def test_rule_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    text = ALERTS.read_text()
    threshold = "(icy_backend_background_job_consecutive_failures) >= 3"
    assert threshold in text
    (tmp_path / "alerts.yml").write_text(text.replace(threshold, threshold[:-1] + "2", 1))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")

    result = run_promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)

    assert result.returncode != 0, result.stdout
    assert "CriticalJobFailing" in result.stdout + result.stderr


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_alert_has_what_on_call_needs(rule: dict[str, Any]) -> None:
    assert _NONZERO_DURATION.match(str(rule.get("for", ""))), "needs a for: longer than 0"
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations: dict[str, str] = rule.get("annotations", {})
    assert annotations.get("description")
    summary = annotations.get("summary", "")
    assert "{{ $labels.instance }}" in summary
    if "job_name" in rule["expr"]:
        assert "{{ $labels.job_name }}" in summary
    assert annotations.get("runbook_url", "").startswith(RUNBOOK_BASE)


def test_job_alerts_keep_job_instance_and_job_name() -> None:
    for rule in _alert_rules():
        for grouping in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in grouping.split(",")}
            assert labels in ({"job", "instance", "job_name"}, {"job_name"}), rule["alert"]


def test_runbook_anchors_are_headings_in_operations_doc() -> None:
    assert OPERATIONS_DOC.exists(), f"{OPERATIONS_DOC.relative_to(ROOT)} is missing"
    slugs = {github_slug(heading) for heading in markdown_headings(OPERATIONS_DOC.read_text())}
    anchors = {
        rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_BASE) for rule in _alert_rules()
    }
    assert anchors - slugs == set(), f"runbook anchors without a heading; headings: {sorted(slugs)}"


def test_success_windows_cover_the_demo_jobs() -> None:
    (group,) = [group for group in _groups() if group["name"] == WINDOW_GROUP]
    windows = {
        rule["labels"]["job_name"] for rule in group["rules"] if rule["record"] == WINDOW_RECORD
    }
    assert windows == set(JOB_NAMES)


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    tests = _load(ALERT_TESTS)
    assert tests["rule_files"] == ["alerts.yml"]
    assert (
        tests["evaluation_interval"]
        == _load(CONFIG_DIR / "prometheus.yml")["global"]["evaluation_interval"]
    )
    firing: set[str] = set()
    silent: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = _alert_names()
    assert names - firing == set(), "alerts without a case where they fire"
    assert names - silent == set(), "alerts without a case where they stay silent"
    assert (firing | silent) - names == set(), "unit tests for alerts that do not exist"
