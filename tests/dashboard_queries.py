"""The PromQL expressions of the Grafana dashboard, with its template variables filled in.

::

    for where, promql in dashboard_expressions(values={**DEFAULT_VALUES, "via": "collector"}):
        prometheus.query(promql)

Shared by the dashboard's static checks (tests/test_dashboard.py) and any test that runs
the expressions against a live Prometheus. Substitution is plain text replacement of the
tokens in `ALLOWED_VARIABLES`; a ``$`` token outside that set is an error (`DashboardError`),
because Grafana would send it to Prometheus unreplaced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ALLOWED_VARIABLES",
    "DEFAULT_PATH",
    "DEFAULT_VALUES",
    "DashboardError",
    "all_panels",
    "dashboard_expressions",
    "load_dashboard",
    "substitute",
    "variable_query_expression",
    "variable_tokens",
]

DEFAULT_PATH = (
    Path(__file__).resolve().parent.parent
    / "collector-config"
    / "grafana"
    / "dashboards"
    / "jobpulse.json"
)

#: The dashboard's own variables and the Grafana built-ins its expressions may use.
ALLOWED_VARIABLES = frozenset(
    {"via", "job", "instance", "job_name", "__rate_interval", "__interval", "__range"}
)

#: What the demo scraped directly by Prometheus needs: every instance and job selected.
DEFAULT_VALUES: Mapping[str, str] = {
    "via": "direct",
    "job": "icy-backend",
    "instance": ".*",
    "job_name": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}

# `$name`, `${name}`, `${name:format}` and `[[name]]`: every syntax Grafana substitutes.
_TOKEN = re.compile(r"\$\{[^}]*\}|\$(?P<plain>\w*)|\[\[[^\]]*\]\]")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?P<selector>.+),\s*(?P<label>\w+)\s*\)\s*$", re.DOTALL
)


class DashboardError(ValueError):
    """The dashboard uses a variable syntax or name that the substitution does not know."""


def load_dashboard(path: Path = DEFAULT_PATH) -> dict[str, Any]:
    """The dashboard JSON model at `path`."""
    dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variable_tokens(text: str) -> list[str]:
    """Every variable reference in `text`, as written (``$via``, ``${job}``, ``[[x]]``)."""
    return [match.group(0) for match in _TOKEN.finditer(text)]


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with every ``$name`` replaced by ``values[name]``.

    Raises `DashboardError` for a ``${...}`` or ``[[...]]`` reference, a lone ``$``, a name
    outside `ALLOWED_VARIABLES`, or a name `values` lacks.
    """

    def replace(match: re.Match[str]) -> str:
        name = match["plain"]
        if not name:
            raise DashboardError(
                f"{match.group(0)!r}: only $name references are allowed, in {text!r}"
            )
        if name not in ALLOWED_VARIABLES:
            raise DashboardError(f"unknown variable ${name} in {text!r}")
        if name not in values:
            raise DashboardError(f"no value given for ${name}")
        return values[name]

    return _TOKEN.sub(replace, text)


def variable_query_expression(query: str) -> str:
    """The PromQL a Prometheus template-variable query runs: ``label_values(sel, label)``
    becomes ``count by (label) (sel)``; any other query (``query_result(...)`` aside, which
    the dashboard does not use) is returned unchanged. The 1-argument ``label_values(label)``
    has no selector and raises `DashboardError`."""
    match = _LABEL_VALUES.match(query)
    if match:
        return f"count by ({match['label']}) ({match['selector'].strip()})"
    if query.strip().startswith("label_values("):
        raise DashboardError(f"label_values without a selector: {query!r}")
    return query


def _variable_query(variable: Mapping[str, Any]) -> str | None:
    query = variable.get("query")
    if isinstance(query, Mapping):
        query = query.get("query")
    if not isinstance(query, str) or not query.strip():
        return None
    return query


def dashboard_expressions(
    path: Path = DEFAULT_PATH, values: Mapping[str, str] = DEFAULT_VALUES
) -> list[tuple[str, str]]:
    """``(where, expression)`` for every PromQL expression of the dashboard at `path`, with
    the variables replaced by `values` (see `substitute`).

    `where` is the panel title (``"Title [B]"``, with the target's refId, in a panel with
    several targets) or, for a query template variable, ``"$name"``; variables come first, in
    the dashboard's order, then panels. Targets that are hidden or have no expression are left
    out. Raises `DashboardError` as `substitute` does.
    """
    dashboard = load_dashboard(path)
    found: list[tuple[str, str]] = []
    for variable in dashboard.get("templating", {}).get("list", []):
        query = _variable_query(variable)
        if variable.get("type") == "query" and query is not None:
            found.append(
                (f"${variable['name']}", substitute(variable_query_expression(query), values))
            )
    for panel in all_panels(dashboard):
        targets = [
            target
            for target in panel.get("targets", [])
            if target.get("expr", "").strip() and not target.get("hide", False)
        ]
        for index, target in enumerate(targets):
            where = panel.get("title", f"panel {panel.get('id')}")
            if len(targets) > 1:
                where = f"{where} [{target.get('refId', index)}]"
            found.append((where, substitute(target["expr"], values)))
    return found
