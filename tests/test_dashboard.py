"""Static checks of the Grafana dashboard (collector-config/grafana/dashboards/jobpulse.json).

No Grafana runs here: the JSON model is checked for what Grafana would get wrong silently
(overlapping panels, a datasource that is not the provisioned one, a variable Grafana does not
replace), and every PromQL expression, with the variables filled in as tests/dashboard_queries.py
does, is parsed by ``promtool check rules``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dashboard_queries import (
    ALLOWED_VARIABLES,
    DEFAULT_PATH,
    DEFAULT_VALUES,
    DashboardError,
    all_panels,
    dashboard_expressions,
    load_dashboard,
    substitute,
    variable_query_expression,
    variable_tokens,
)
from tests.prometheus_server import run_promtool

ROOT = Path(__file__).resolve().parent.parent
DATASOURCES_PATH = ROOT / "collector-config/grafana/provisioning/datasources/prometheus.yml"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
GRID_COLUMNS = 24
MULTI_VALUE_VARIABLES = ("instance", "job_name")
METRIC_PREFIX = "icy_backend_"
# Every selector of a job metric carries these matchers, verbatim.
SCOPE_MATCHERS = ('via="$via"', 'job="$job"', 'instance=~"$instance"')
JOB_NAME_MATCHER = 'job_name=~"$job_name"'
# The metrics without a job_name label.
UNSCOPED_BY_JOB = {"icy_backend_background_jobs_pending"}
_SELECTOR = re.compile(r"\b(?P<metric>icy_backend_\w+)\s*(?:\{(?P<matchers>[^}]*)\})?")
_COMPARISON = re.compile(r"(?:[<>]=?|!=)\s*-?[0-9]")

Panel = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def _panels_with_targets(dashboard: Mapping[str, Any]) -> list[Panel]:
    return [panel for panel in all_panels(dashboard) if panel.get("targets")]


def _expressions(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) with the variables still in: panel targets and variable queries."""
    found = [
        (panel["title"], target["expr"])
        for panel in _panels_with_targets(dashboard)
        for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"${variable['name']}", variable["definition"]))
            found.append((f"${variable['name']}", variable["query"]))
    return found


# -- layout ------------------------------------------------------------------------------


def overlap_problems(panels: Iterable[Panel]) -> list[str]:
    """Panels that overlap or stick out of the 24-column grid."""
    problems: list[str] = []
    placed: list[tuple[str, int, int, int, int]] = []
    for panel in panels:
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        title = str(panel.get("title", panel["id"]))
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > GRID_COLUMNS:
            problems.append(f"{title!r} is outside the grid: {grid}")
        for other, ox, oy, ow, oh in placed:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                problems.append(f"{title!r} overlaps {other!r}")
        placed.append((title, x, y, w, h))
    return problems


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "jobpulse-jobs"
    assert dashboard["title"] == "jobpulse: background jobs"
    assert "jobpulse" in dashboard["tags"]
    assert dashboard["refresh"] == "30s"
    assert dashboard["time"] == {"from": "now-6h", "to": "now"}
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["id"] is None  # provisioned dashboards get their id from Grafana


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), sorted(ids)


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    assert overlap_problems(all_panels(dashboard)) == []


def test_overlap_problems_reports_overlap_and_overflow() -> None:
    panels: list[Panel] = [
        {"id": 1, "title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}},
        {"id": 2, "title": "b", "gridPos": {"x": 11, "y": 7, "w": 12, "h": 8}},
        {"id": 3, "title": "c", "gridPos": {"x": 20, "y": 20, "w": 8, "h": 8}},
        {"id": 4, "title": "d", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 7}},
    ]
    assert overlap_problems(panels) == [
        "'b' overlaps 'a'",
        "'c' is outside the grid: {'x': 20, 'y': 20, 'w': 8, 'h': 8}",
    ]


def test_every_panel_is_described(dashboard: dict[str, Any]) -> None:
    undescribed = [
        panel["title"]
        for panel in all_panels(dashboard)
        if panel["type"] != "row" and not panel.get("description", "").strip()
    ]
    assert undescribed == []


def test_panels_have_units_and_legends(dashboard: dict[str, Any]) -> None:
    problems: list[str] = []
    for panel in _panels_with_targets(dashboard):
        if panel["type"] in ("timeseries", "stat", "bargauge") and not panel["fieldConfig"][
            "defaults"
        ].get("unit"):
            problems.append(f"{panel['title']!r} has no unit")
        if panel["type"] in ("timeseries", "bargauge", "state-timeline"):
            problems.extend(
                f"{panel['title']!r} target {target['refId']} has no {{{{label}}}} legend"
                for target in panel["targets"]
                if "{{" not in target.get("legendFormat", "")
            )
    assert problems == []


# -- datasource and variables ------------------------------------------------------------


def test_panels_use_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load(DATASOURCES_PATH.read_text(encoding="utf-8"))["datasources"]
    assert [(source["type"], source["uid"]) for source in provisioned] == [
        (DATASOURCE["type"], DATASOURCE["uid"])
    ]
    wrong = [
        panel["title"]
        for panel in _panels_with_targets(dashboard)
        if panel.get("datasource") != DATASOURCE
        or any(target.get("datasource") != DATASOURCE for target in panel["targets"])
    ]
    wrong += [
        f"${variable['name']}"
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query" and variable["datasource"] != DATASOURCE
    ]
    assert wrong == []


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert list(variables) == ["via", "job", "instance", "job_name"]
    via = variables["via"]
    assert (via["type"], via["query"], via["multi"]) == ("custom", "direct,collector", False)
    assert via["current"]["value"] == "direct"
    job = variables["job"]
    assert (job["type"], job["multi"], job["includeAll"]) == ("query", False, False)
    assert job["definition"] == (
        'label_values(icy_backend_background_job_runs_total{via="$via"}, job)'
    )
    for name in MULTI_VALUE_VARIABLES:
        variable = variables[name]
        assert (variable["type"], variable["multi"], variable["includeAll"]) == (
            "query",
            True,
            True,
        ), name
        assert variable["allValue"] == ".*", name
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["definition"] == variable["query"], variable["name"]


def test_expressions_use_only_the_allowed_variables(dashboard: dict[str, Any]) -> None:
    allowed = {f"${name}" for name in ALLOWED_VARIABLES}
    unknown = [
        (where, token)
        for where, expression in _expressions(dashboard)
        for token in variable_tokens(expression)
        if token not in allowed
    ]
    assert unknown == []


def multi_value_problems(expressions: Iterable[tuple[str, str]]) -> list[str]:
    """Uses of a multi-value variable other than ``label=~"$name"``: with ``=`` Grafana's
    ``a|b`` (or All's ``.*``) would be matched literally."""
    problems: list[str] = []
    for where, expression in expressions:
        for name in MULTI_VALUE_VARIABLES:
            uses = len(re.findall(rf"\${name}\b", expression))
            regex_uses = len(re.findall(rf'=~\s*"\${name}"', expression))
            if uses != regex_uses:
                problems.append(f"{where}: ${name} used without =~ in {expression!r}")
    return problems


def test_multi_value_variables_are_matched_as_regexes(dashboard: dict[str, Any]) -> None:
    assert multi_value_problems(_expressions(dashboard)) == []


def test_multi_value_problems_reports_an_equality_match() -> None:
    assert multi_value_problems([("p", 'up{instance="$instance", job_name=~"$job_name"}')]) == [
        'p: $instance used without =~ in \'up{instance="$instance", job_name=~"$job_name"}\''
    ]


def scope_problems(expressions: Iterable[tuple[str, str]]) -> list[str]:
    """Selectors of job metrics that lack the dashboard's filters (`SCOPE_MATCHERS`, and
    `JOB_NAME_MATCHER` for the metrics with a job_name label)."""
    problems: list[str] = []
    for where, expression in expressions:
        for match in _SELECTOR.finditer(expression):
            metric = match["metric"]
            matchers = {part.strip() for part in (match["matchers"] or "").split(",")}
            required = set(SCOPE_MATCHERS)
            if metric not in UNSCOPED_BY_JOB:
                required.add(JOB_NAME_MATCHER)
            missing = sorted(required - matchers)
            if missing:
                problems.append(f"{where}: {metric} lacks {', '.join(missing)}")
    return problems


def test_panel_expressions_filter_on_every_variable(dashboard: dict[str, Any]) -> None:
    panel_expressions = [
        (panel["title"], target["expr"])
        for panel in _panels_with_targets(dashboard)
        for target in panel["targets"]
    ]
    assert scope_problems(panel_expressions) == []


def test_scope_problems_reports_a_missing_filter() -> None:
    expressions = [
        ("a", 'rate(icy_backend_background_job_runs_total{via="$via", job="$job"}[5m])'),
        ("b", 'icy_backend_background_jobs_pending{via="$via", job="$job", instance=~"$instance"}'),
    ]
    assert scope_problems(expressions) == [
        'a: icy_backend_background_job_runs_total lacks instance=~"$instance", '
        'job_name=~"$job_name"'
    ]


def test_panels_do_not_hide_healthy_jobs(dashboard: dict[str, Any]) -> None:
    """A comparison such as ``> 0`` drops the series of a healthy job: colour comes from
    thresholds instead. (``== 1`` picks each job's current state, which every job has.)"""
    filtered = [
        (panel["title"], target["expr"])
        for panel in _panels_with_targets(dashboard)
        for target in panel["targets"]
        if _COMPARISON.search(target["expr"])
    ]
    assert filtered == []


# -- required panels -----------------------------------------------------------------------


def _metric_uses(dashboard: Mapping[str, Any]) -> str:
    return "\n".join(
        target["expr"] for panel in _panels_with_targets(dashboard) for target in panel["targets"]
    )


@pytest.mark.parametrize(
    "pattern",
    [
        r"icy_backend_background_job_state\{",
        r"rate\(icy_backend_background_job_runs_total\{",
        r"histogram_quantile\(0\.5, sum by \(le, job_name\) "
        r"\(rate\(icy_backend_background_job_duration_seconds_bucket\{",
        r"histogram_quantile\(0\.95, sum by \(le, job_name\) "
        r"\(rate\(icy_backend_background_job_duration_seconds_bucket\{",
        r"icy_backend_background_jobs_active\{",
        r"icy_backend_background_jobs_stalled\{",
        r"icy_backend_background_jobs_pending\{",
        r"time\(\) - icy_backend_background_job_last_success_timestamp_seconds\{",
        r"icy_backend_background_job_missed_runs_total\{",
        r"icy_backend_background_job_skipped_runs_total\{",
        r"icy_backend_job_timeouts_total\{",
        r"icy_backend_background_job_consecutive_failures\{",
    ],
)
def test_required_panel_is_present(dashboard: dict[str, Any], pattern: str) -> None:
    assert re.search(pattern, _metric_uses(dashboard)), pattern


# -- dashboard_queries ---------------------------------------------------------------------


def test_dashboard_expressions_cover_panels_and_variables(dashboard: dict[str, Any]) -> None:
    expressions = dashboard_expressions()
    wheres = [where for where, _ in expressions]
    assert len(wheres) == len(set(wheres)), wheres
    targets = sum(len(panel["targets"]) for panel in _panels_with_targets(dashboard))
    assert len(expressions) == targets + 3  # $job, $instance, $job_name
    assert expressions[0] == (
        "$job",
        'count by (job) (icy_backend_background_job_runs_total{via="direct"})',
    )
    assert all("$" not in expression for _, expression in expressions)
    by_where = dict(expressions)
    assert by_where["Run rate by status"] == (
        "sum by (job_name, status) (rate(icy_backend_background_job_runs_total"
        '{via="direct", job="icy-backend", instance=~".*", job_name=~".*"}[1m]))'
    )
    assert (
        'via="collector"'
        in dict(dashboard_expressions(DEFAULT_PATH, {**DEFAULT_VALUES, "via": "collector"}))[
            "Run rate by status"
        ]
    )


def test_substitute_replaces_only_known_variables() -> None:
    values = {"job": "a", "job_name": "b.*", "__range": "1h"}
    assert substitute('x{job="$job", job_name=~"$job_name"}[$__range]', values) == (
        'x{job="a", job_name=~"b.*"}[1h]'
    )
    for text in ("${job}", "[[job]]", "$unknown", "a $ b", "$instance", "${job:csv}"):
        with pytest.raises(DashboardError):
            substitute(text, values)


def test_variable_query_expression() -> None:
    assert variable_query_expression('label_values(up{job="x", a=~"b"}, instance)') == (
        'count by (instance) (up{job="x", a=~"b"})'
    )
    assert variable_query_expression("sum(up)") == "sum(up)"
    with pytest.raises(DashboardError):
        variable_query_expression("label_values(instance)")


# -- PromQL syntax -------------------------------------------------------------------------


def promtool_problems(expressions: Sequence[tuple[str, str]], directory: Path) -> list[str]:
    """``promtool check rules`` over every expression as a recording rule, each in a group
    named after its panel, so that promtool's message names the panel. Empty: all parse."""
    groups = [
        {"name": f"{index}: {where}", "rules": [{"record": "dashboard:expression", "expr": expr}]}
        for index, (where, expr) in enumerate(expressions)
    ]
    rules = directory / "dashboard-rules.yml"
    rules.write_text(json.dumps({"groups": groups}, indent=2), encoding="utf-8")  # JSON is YAML
    result = run_promtool("check", "rules", str(rules))
    if result.returncode == 0:
        return []
    return [line for line in (result.stdout + result.stderr).splitlines() if "group" in line] or [
        f"promtool exited {result.returncode}: {result.stdout}{result.stderr}"
    ]


def test_expressions_are_valid_promql(tmp_path: Path) -> None:
    assert promtool_problems(dashboard_expressions(), tmp_path) == []


def test_promtool_problems_names_the_panel(tmp_path: Path) -> None:
    expressions = [
        ("Fine", "sum(up)"),
        ("Broken panel", "sum by (job_name (rate(up[1m]))"),
    ]
    problems = promtool_problems(expressions, tmp_path)
    assert len(problems) == 1, problems
    assert '"1: Broken panel"' in problems[0]
