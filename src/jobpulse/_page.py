"""The status page (extra ``page``): ``routes(monitor, status_page=True)``.

- ``GET /jobs``: a table of every job of the view (the fleet's with a store): its state as
  colour and word, critical mark, last run, next expected run, duration p50/p95, success
  rate over 24 h, a sparkline of its last runs and the time since its last success. Query
  parameters, all optional and forgiving (a value the page does not know is ignored):
  ``q`` (a part of the name, any case), ``state`` (a state, or ``problems``: failed,
  stalled or missed), ``critical=1``, ``sort`` (`SORT_KEYS`) and ``dir`` (``asc`` or
  ``desc``). ``fragment=1`` answers only what the page's script swaps in every
  `REFRESH_SECONDS`: the summary and the table, rendered by the same templates.
- ``GET /jobs/{name}``: one job: its figures, its runs of the last 24 hours as a chart
  (duration against time, outcome as colour, the last missed slot and the runs in progress
  marked), its last error, its settings, the instances that ran it and its latest runs; 404
  for an unknown job. ``fragment=1`` as above.

Server-rendered from the Jinja2 templates in ``jobpulse/templates`` with autoescaping on (job
names, errors and metadata are user input). The style sheet and the script are inline, under
a ``Content-Security-Policy`` that allows only them (by a nonce per answer): no build step, no
CDN, nothing fetched but the page itself. The table works without JavaScript (sorting and
filtering are links and a GET form); the script filters as one types, and refreshes the table
without reloading the page while the tab is visible.

Error texts and metadata are shown only with `detail` or when `access` protects the page. The
rendering runs on a worker thread, not on the event loop.
"""

from __future__ import annotations

import gzip
import math
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

try:
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute, Route
    from starlette.types import Receive, Scope, Send
except ImportError:
    raise ImportError("the status page needs Starlette: pip install 'jobpulse[page]'") from None
try:
    import jinja2
    from markupsafe import Markup
except ImportError:
    raise ImportError("the status page needs Jinja2: pip install 'jobpulse[page]'") from None

from jobpulse._auth import Access
from jobpulse._health import evaluate
from jobpulse._http import answer_method_not_allowed, internal_error
from jobpulse._model import JobState, JobStatus, RunRecord, from_ns, rfc3339
from jobpulse._monitor import JobMonitor, RunInProgress
from jobpulse._shared import LOST, TIMEOUT

__all__ = [
    "REFRESH_SECONDS",
    "SORT_KEYS",
    "SPARKLINE_RUNS",
    "page_routes",
]

#: How often the page's script fetches the table again (while the tab is visible).
REFRESH_SECONDS = 5.0
#: How many of a job's latest runs its sparkline shows.
SPARKLINE_RUNS = 30
#: How many of a job's latest runs its page lists (the chart shows all of the last 24 h).
LATEST_RUNS = 20
#: What ``?sort=`` takes, with the direction each starts in.
SORT_KEYS: Mapping[str, str] = {
    "state": "asc",  # the worst first: stalled, failed, missed, running, pending, success
    "name": "asc",
    "last_run": "desc",
    "next_run": "asc",
    "p50": "desc",
    "p95": "desc",
    "success_rate": "asc",
    "since_success": "desc",
}
_DEFAULT_SORT = "state"
_MAX_SEARCH = 200
_PROBLEMS = "problems"
_PROBLEM_STATES = frozenset({"failed", "stalled", "missed"})
# The worst first.
_STATE_RANK = {
    JobState.STALLED: 0,
    JobState.FAILED: 1,
    JobState.MISSED: 2,
    JobState.RUNNING: 3,
    JobState.PENDING: 4,
    JobState.SUCCESS: 5,
}
_STATE_OPTIONS = (
    ("", "all"),
    (_PROBLEMS, "problems"),
    *((state.value, state.value) for state in sorted(_STATE_RANK, key=_STATE_RANK.__getitem__)),
)
_COLUMNS = (
    # key, label, sortable
    ("state", "State", True),
    ("name", "Job", True),
    ("last_run", "Last run", True),
    ("next_run", "Next run", True),
    ("p50", "p50", True),
    ("p95", "p95", True),
    ("success_rate", "Success 24 h", True),
    ("spark", "Last runs", False),
    ("since_success", "Since success", True),
)
_GZIP_FROM_BYTES = 4096


def _asset(name: str) -> Markup:
    text = resources.files("jobpulse").joinpath("templates").joinpath(name).read_text("utf-8")
    return Markup(text)  # our own file, not user input


_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("jobpulse", "templates"),
    autoescape=True,  # every template: names, errors and metadata are user input
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)
_CSS = _asset("page.css")
_JS = _asset("page.js")


# -- text ------------------------------------------------------------------------------


def duration_text(seconds: float | None) -> str:
    """``850 ms``, ``2.35 s``, ``4 min 05 s``, ``3 h 20 min``; ``—`` for None."""
    if seconds is None:
        return "—"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 0.0095:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 0.9995:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 9.995:
        return f"{seconds:.2f} s"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 48 * 3600:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{seconds / 86400:.1f} d"


def span_text(seconds: float) -> str:
    """A rough length of time: ``12 s``, ``5 min``, ``3 h 20 min``, ``2 d 4 h``."""
    whole = int(max(seconds, 0.0))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(whole // 3600, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def moment_text(moment: datetime) -> str:
    """``2026-01-01 12:00:00 UTC``."""
    return _absolute(rfc3339(moment) or "")


def _absolute(iso: str) -> str:
    # From rfc3339's text: a third of the cost of strftime, once per time shown.
    return f"{iso[:10]} {iso[11:19]} UTC"


def rate_text(rate: float | None) -> str:
    """``98.5%``; ``—`` for None."""
    return "—" if rate is None else f"{rate * 100:.1f}%"


class Moment(NamedTuple):
    """A time as the page shows it: RFC 3339 (for ``<time datetime>``), absolute, and
    relative to now (``5 min ago``, ``in 40 s``)."""

    iso: str
    absolute: str
    relative: str
    past: bool


def _moment(moment: datetime | None, now: datetime) -> Moment | None:
    if moment is None:
        return None
    seconds = (now - moment).total_seconds()
    past = seconds >= 0
    relative = f"{span_text(seconds)} ago" if past else f"in {span_text(-seconds)}"
    iso = rfc3339(moment) or ""
    return Moment(iso, _absolute(iso), relative, past)


# -- the table -------------------------------------------------------------------------


class Query(NamedTuple):
    """The table's filters and order, from the request's query parameters."""

    q: str
    state: str
    critical: bool
    sort: str
    dir: str

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Query:
        search = params.get("q", "").strip()[:_MAX_SEARCH]
        state = params.get("state", "")
        if state not in _PROBLEM_STATES | {_PROBLEMS} and state not in _STATE_VALUES:
            state = ""
        sort = params.get("sort", _DEFAULT_SORT)
        if sort not in SORT_KEYS:
            sort = _DEFAULT_SORT
        direction = params.get("dir", SORT_KEYS[sort])
        if direction not in ("asc", "desc"):
            direction = SORT_KEYS[sort]
        return cls(search, state, params.get("critical") == "1", sort, direction)

    def pairs(self) -> list[tuple[str, str]]:
        """The query parameters that say this query, defaults left out."""
        pairs = [
            ("q", self.q),
            ("state", self.state),
            ("critical", "1" if self.critical else ""),
            ("sort", "" if self.sort == _DEFAULT_SORT else self.sort),
            ("dir", "" if self.dir == SORT_KEYS[self.sort] else self.dir),
        ]
        return [(key, value) for key, value in pairs if value]

    def href(self, **changes: Any) -> str:
        """A relative link (``?...``) to the table with `changes`."""
        return "?" + urlencode(self._replace(**changes).pairs())

    def keeps(self, status: JobStatus) -> bool:
        if self.critical and not status.critical:
            return False
        state = status.state.value
        if self.state and (
            state not in _PROBLEM_STATES if self.state == _PROBLEMS else state != self.state
        ):
            return False
        return not self.q or self.q.lower() in status.job_name.lower()


_STATE_VALUES = frozenset(state.value for state in JobState)


def _sort_value(key: str, status: JobStatus, now: datetime) -> Any:
    """The value `key` sorts by, or None (always last)."""
    if key == "name":
        return status.job_name
    if key == "state":
        return (_STATE_RANK[status.state], not status.critical)
    if key == "last_run":
        return status.last_run_time
    if key == "next_run":
        return status.next_run_time
    if key == "p50":
        return status.p50_duration_seconds
    if key == "p95":
        return status.p95_duration_seconds
    if key == "success_rate":
        return status.success_rate
    # since_success
    last = status.last_success_time
    return None if last is None else (now - last).total_seconds()


def sort_jobs(statuses: Iterable[JobStatus], query: Query, now: datetime) -> list[JobStatus]:
    """`statuses` in `query`'s order; ties and jobs without a value (last) by name."""
    valued: list[tuple[Any, str, JobStatus]] = []
    missing: list[JobStatus] = []
    for status in statuses:
        value = _sort_value(query.sort, status, now)
        if value is None:
            missing.append(status)
        else:
            valued.append((value, status.job_name, status))
    valued.sort(key=lambda item: item[0], reverse=query.dir == "desc")
    # Stable: equal values keep the order of the names (the view's is sorted).
    return [item[2] for item in valued] + missing


class Sparkline(NamedTuple):
    """The last runs of a job as bars (height: duration against the longest of them)."""

    ok_path: str
    failed_path: str
    label: str
    width: int


_SPARK_BAR = 4  # px per run, of which 3 drawn
_SPARK_HEIGHT = 20


def sparkline(history: Sequence[RunRecord]) -> Sparkline | None:
    """`history` (newest first) drawn oldest left; None without runs. Each outcome's bars
    are one path of 3 px wide strokes, each move relative to the last (a few bytes a run:
    1,000 rows of them are in the page)."""
    if not history:
        return None
    runs = history[::-1]
    longest = max(run.duration_seconds for run in runs)
    paths: dict[bool, list[str]] = {True: [], False: []}
    # Where each path's pen is: (x, y) after its last bar.
    pens: dict[bool, tuple[float, float]] = {True: (0.0, 0.0), False: (0.0, 0.0)}
    failures = 0
    for index, run in enumerate(runs):
        succeeded = run.outcome is JobState.SUCCESS
        failures += not succeeded
        share = run.duration_seconds / longest if longest > 0 else 1.0
        height = max(2, round(share * _SPARK_HEIGHT))
        x = index * _SPARK_BAR + 1.5
        pen_x, pen_y = pens[succeeded]
        path = paths[succeeded]
        if path:
            path.append(f"m{x - pen_x:g} {_SPARK_HEIGHT - pen_y:g}v-{height}")
        else:
            path.append(f"M{x:g} {_SPARK_HEIGHT}v-{height}")
        pens[succeeded] = (x, _SPARK_HEIGHT - height)
    label = (
        f"last {len(runs)} runs: {len(runs) - failures} succeeded, {failures} failed; "
        f"longest {duration_text(longest)}"
    )
    return Sparkline("".join(paths[True]), "".join(paths[False]), label, len(runs) * _SPARK_BAR)


class Row(NamedTuple):
    """One job as the table shows it."""

    name: str
    search: str
    href: str
    state: str
    state_title: str
    critical: bool
    last_run: Moment | None
    last_title: str
    next_run: Moment | None
    p50: str
    p95: str
    rate: str
    rate_title: str
    spark: Sparkline | None
    since_success: str
    since_title: str


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def _state_title(status: JobStatus) -> str:
    """What the state means for this job, or "" when the word says it all."""
    state = status.state
    if state is JobState.FAILED:
        failures = status.consecutive_failures
        last = "the last run" if failures == 1 else f"the last {failures} runs"
        return f"{last} failed (threshold {status.failure_threshold})"
    if state is JobState.STALLED:
        stall = duration_text(status.stall_after_seconds)
        return f"{_runs(status.stalled_runs)} past the stall threshold of {stall}"
    if state is JobState.RUNNING:
        return f"{_runs(status.active_runs)} in progress"
    if state is JobState.MISSED:
        return f"missed its expected run ({status.missed_count} missed in all)"
    return ""  # pending and success say it all


def table_row(status: JobStatus, spark: Sparkline | None, now: datetime, prefix: str) -> Row:
    name = status.job_name
    last = _moment(status.last_run_time, now)
    last_title = ""
    if last is not None:
        last_title = f"started {last.absolute}, took {duration_text(status.last_duration_seconds)}"
    success = status.last_success_time
    if success is not None:
        since, since_title = span_text((now - success).total_seconds()), moment_text(success)
    else:
        since, since_title = ("never" if status.run_count else "—"), ""
    runs = status.history_runs
    return Row(
        name=name,
        search=name.lower(),
        href=prefix + quote(name, safe=""),
        state=status.state.value,
        state_title=_state_title(status),
        critical=status.critical,
        last_run=last,
        last_title=last_title,
        next_run=_moment(status.next_run_time, now),
        p50=duration_text(status.p50_duration_seconds),
        p95=duration_text(status.p95_duration_seconds),
        rate=rate_text(status.success_rate),
        rate_title=f"{_runs(runs)} in the last 24 h",
        spark=spark,
        since_success=since,
        since_title=since_title,
    )


class Column(NamedTuple):
    key: str
    label: str
    href: str | None
    aria_sort: str | None
    arrow: str


def columns(query: Query) -> list[Column]:
    result = []
    for key, label, sortable in _COLUMNS:
        if not sortable:
            result.append(Column(key, label, None, None, ""))
            continue
        if key == query.sort:
            flipped = "desc" if query.dir == "asc" else "asc"
            aria = "ascending" if query.dir == "asc" else "descending"
            arrow = " ▲" if query.dir == "asc" else " ▼"
            result.append(Column(key, label, query.href(sort=key, dir=flipped), aria, arrow))
        else:
            result.append(Column(key, label, query.href(sort=key, dir=SORT_KEYS[key]), None, ""))
    return result


def _scope_text(view: Mapping[str, Any]) -> str:
    if view.get("scope") != "fleet":
        if view.get("store") == "unavailable":
            return "this process only: the store cannot be read"
        return "this process"
    instances = view.get("instances", [])
    alive = sum(1 for instance in instances if instance.get("alive"))
    plural = "" if len(instances) == 1 else "s"
    text = f"the fleet: {alive} of {len(instances)} instance{plural} alive"
    if view.get("store") == "degraded":
        text += "; this process's latest changes are not written yet"
    return text


class SparkCache:
    """Each job's sparkline, kept while its status is the very object it was built for
    (the views keep a job's status until it changes): a refresh of 1,000 unchanged jobs
    reads no history. Thread-safe enough: a lost race builds one twice."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[JobStatus, Sparkline | None]] = {}

    def get(self, monitor: JobMonitor, status: JobStatus) -> Sparkline | None:
        name = status.job_name
        kept = self._built.get(name)
        if kept is not None and kept[0] is status:
            return kept[1]
        spark = sparkline(monitor.history(name, SPARKLINE_RUNS)) if status.run_count else None
        self._built[name] = (status, spark)
        return spark

    def forget_others(self, names: Mapping[str, object]) -> None:
        if len(self._built) > len(names):
            self._built = {name: kept for name, kept in self._built.items() if name in names}


def table_context(
    monitor: JobMonitor, query: Query, prefix: str, sparks: SparkCache
) -> dict[str, Any]:
    """What ``jobs.html`` and ``_table.html`` need."""
    report = monitor.health()
    now = report.timestamp
    statuses = report.jobs
    kept = sort_jobs((status for status in statuses.values() if query.keeps(status)), query, now)
    rows = [table_row(status, sparks.get(monitor, status), now, prefix) for status in kept]
    sparks.forget_others(statuses)
    summary = report.summary
    counts = [
        ("stalled", summary.stalled_jobs),
        ("failed", summary.unhealthy_jobs),
        ("missed", summary.missed_jobs),
        ("running", summary.running_jobs),
        ("pending", summary.pending_jobs),
        ("success", summary.healthy_jobs),
    ]
    return {
        "query": query,
        "rows": rows,
        "columns": columns(query),
        "total": summary.total_jobs,
        "health": report.status.value,
        "http_status": report.http_status,
        "counts": [
            (state, count, query.href(state=state, q="", critical=False)) for state, count in counts
        ],
        "scope": _scope_text(report.view),
        "now": _moment(now, now),
        "state_options": _STATE_OPTIONS,
        "home": "?",
    }


# -- one job ---------------------------------------------------------------------------

_CHART_WIDTH = 800
_CHART_HEIGHT = 260
_PLOT_LEFT, _PLOT_RIGHT, _PLOT_TOP, _PLOT_BOTTOM = 64, 788, 32, 232
_LANE = 10  # the band above the plot where runs in progress are drawn


class Point(NamedTuple):
    x: str
    y: str
    kind: str  # success, failed, timeout, lost
    title: str


class Bar(NamedTuple):
    x: str
    width: str
    y: str
    kind: str  # running, stalled
    title: str
    label: str
    label_x: str


class Tick(NamedTuple):
    position: str
    label: str


class Chart(NamedTuple):
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    points: list[Point]
    bars: list[Bar]
    missed: Tick | None
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    label: str


def _duration_scale(
    durations: Sequence[float],
) -> tuple[Callable[[float], float], list[Tick]]:
    """y of a duration, and the y axis's ticks: a log scale when the durations span more
    than a factor of 20 (a hang among quick runs), else linear from zero."""
    top, bottom = _PLOT_TOP, _PLOT_BOTTOM
    longest = max(durations, default=1.0) or 1.0
    shortest = max(min(durations, default=longest), 1e-6)
    if longest / shortest > 20:
        low = math.floor(math.log10(shortest))
        high = math.ceil(math.log10(longest))

        def y(seconds: float) -> float:
            share = (math.log10(max(seconds, 1e-6)) - low) / (high - low)
            return bottom - min(max(share, 0.0), 1.0) * (bottom - top)

        ticks = [
            Tick(f"{y(10.0**power):.1f}", duration_text(10.0**power))
            for power in range(low, high + 1)
        ]
        return y, ticks

    def linear(seconds: float) -> float:
        return bottom - min(seconds / longest, 1.0) * (bottom - top)

    ticks = [
        Tick(f"{linear(value):.1f}", duration_text(value)) for value in (0.0, longest / 2, longest)
    ]
    ticks[0] = Tick(ticks[0].position, "0")
    return linear, ticks


def chart(
    history: Sequence[RunRecord],
    in_progress: Sequence[RunInProgress],
    status: JobStatus,
    now: datetime,
) -> Chart:
    """The job's runs of the last 24 hours: duration against start time."""
    now_s = now.timestamp()
    start_s = now_s - 24 * 3600
    left, right = _PLOT_LEFT, _PLOT_RIGHT

    def x(moment: datetime) -> float:
        share = (moment.timestamp() - start_s) / (now_s - start_s)
        return left + min(max(share, 0.0), 1.0) * (right - left)

    y, y_ticks = _duration_scale([run.duration_seconds for run in history])
    points = []
    for finished in history:
        started, seconds, category = (
            finished.started_at,
            finished.duration_seconds,
            finished.error_category,
        )
        if finished.outcome is JobState.SUCCESS:
            kind = "success"
        elif category in (TIMEOUT, LOST):
            kind = str(category)
        else:
            kind = "failed"
        outcome = finished.outcome.value + (f" ({category})" if category else "")
        title = f"{moment_text(started)} · {duration_text(seconds)} · {outcome}"
        points.append(Point(f"{x(started):.1f}", f"{y(seconds):.1f}", kind, title))
    bars = []
    # The oldest two: a lane each in the band above the plot.
    for lane, going in enumerate(in_progress[:2]):
        begin = min(x(going.started_at), right - 3.0)
        running_for = (now - going.started_at).total_seconds()
        kind = "stalled" if going.stalled else "running"
        title = f"in progress since {moment_text(going.started_at)} ({span_text(running_for)})"
        if going.stalled:
            title += f", past its stall threshold of {duration_text(status.stall_after_seconds)}"
        label = f"{kind} {span_text(running_for)}"
        if lane == 0 and len(in_progress) > 2:
            label += f" (+{len(in_progress) - 2} more)"
        bars.append(
            Bar(
                f"{begin:.1f}",
                f"{right - begin:.1f}",
                str(4 + lane * _LANE),
                kind,
                title,
                label,
                f"{begin - 4:.1f}",
            )
        )
    missed = None
    last_missed = status.last_missed_run_time
    if last_missed is not None and (now - last_missed).total_seconds() <= 24 * 3600:
        missed = Tick(f"{x(last_missed):.1f}", f"missed slot {moment_text(last_missed)}")
    x_ticks = []
    # Every 3 hours, none within an hour and a half of either end (under "UTC" or "now").
    first = math.ceil((start_s + 5400) / (3 * 3600)) * 3 * 3600
    for tick_s in range(int(first), int(now_s) - 5400, 3 * 3600):
        moment = datetime.fromtimestamp(tick_s, tz=timezone.utc)
        x_ticks.append(Tick(f"{x(moment):.1f}", moment.strftime("%H:%M")))
    failures = sum(point.kind != "success" for point in points)
    label = (
        f"{len(points)} runs in the last 24 hours, {failures} failed"
        f"{'; ' + str(len(in_progress)) + ' in progress' if in_progress else ''}"
    )
    return Chart(
        _CHART_WIDTH,
        _CHART_HEIGHT,
        left,
        right,
        _PLOT_TOP,
        _PLOT_BOTTOM,
        points,
        bars,
        missed,
        x_ticks,
        y_ticks,
        label,
    )


def _last(moment: datetime | None) -> str:
    return "" if moment is None else f"last {moment_text(moment)}"


class Figure(NamedTuple):
    label: str
    text: str
    title: str = ""


def _figures(status: JobStatus, now: datetime) -> list[Figure]:
    def when(moment: datetime | None, none: str = "never") -> tuple[str, str]:
        shown = _moment(moment, now)
        return (none, "") if shown is None else (shown.relative, shown.absolute)

    figures = [
        Figure("Last run", *when(status.last_run_time)),
        Figure("Last duration", duration_text(status.last_duration_seconds), ""),
        Figure("Next expected run", *when(status.next_run_time, "—")),
        Figure("Last success", *when(status.last_success_time)),
        Figure(
            "Success rate, 24 h",
            rate_text(status.success_rate),
            f"{status.history_runs} runs held"
            + (f", {status.history_dropped} more left out" if status.history_dropped else ""),
        ),
        Figure(
            "Duration p50 / p95 / p99",
            " / ".join(
                duration_text(value)
                for value in (
                    status.p50_duration_seconds,
                    status.p95_duration_seconds,
                    status.p99_duration_seconds,
                )
            ),
            "of the runs of the last 24 hours",
        ),
        Figure(
            "Duration min / avg / max",
            " / ".join(
                duration_text(value)
                for value in (
                    status.min_duration_seconds,
                    status.average_duration_seconds,
                    status.max_duration_seconds,
                )
            ),
            "of every run counted",
        ),
        Figure("Runs", f"{status.success_count} succeeded, {status.failure_count} failed", ""),
        Figure(
            "Failures in a row",
            f"{status.consecutive_failures} (threshold {status.failure_threshold})",
            "",
        ),
        Figure("In progress", f"{status.active_runs} ({status.stalled_runs} stalled)", ""),
        Figure("Timeouts", str(status.timeout_count), ""),
        Figure(
            "Missed slots",
            str(status.missed_count),
            _last(status.last_missed_run_time),
        ),
    ]
    if status.skipped_count:
        figures.append(
            Figure("Skipped", str(status.skipped_count), f"last: {status.last_skip_reason}")
        )
    return figures


def _settings(status: JobStatus) -> list[Figure]:
    stall = duration_text(status.stall_after_seconds)
    if status.stall_after_auto:
        stall += " (auto)"
    return [
        Figure("Schedule", status.schedule or "none", ""),
        Figure("Timezone", status.timezone or ("UTC" if status.schedule else "—"), ""),
        Figure("Grace", duration_text(status.grace_seconds), "how late a scheduled run may start"),
        Figure("Stall threshold", stall, "a run still going after this is stalled"),
        Figure(
            "Timeout", duration_text(status.timeout_seconds) if status.timeout_seconds else "none"
        ),
        Figure("Failure threshold", str(status.failure_threshold), "failures in a row"),
        Figure(
            "Critical",
            "yes" if status.critical else "no",
            "its failures and missed runs make the service unhealthy" if status.critical else "",
        ),
    ]


class InstanceRow(NamedTuple):
    id: str
    host: str
    pid: int
    service: str
    version: str
    alive: bool
    last_seen: str = ""
    role: str = ""


def _instances(
    monitor: JobMonitor, runner: str, in_progress: Sequence[RunInProgress], now: datetime
) -> tuple[list[InstanceRow], str]:
    """The instances that ran the job, and a note on what is known of them."""
    roles: dict[str, list[str]] = {}
    if runner:
        roles.setdefault(runner, []).append("started the latest run")
    running: dict[str, int] = {}
    for run in in_progress:
        running[run.instance] = running.get(run.instance, 0) + 1
    for where, count in running.items():
        roles.setdefault(where, []).append(f"runs it now ({count})")
    if monitor._store is None:
        (here,) = monitor.instances()
        role = "; ".join(roles.get("", [])) or "holds this view"
        row = InstanceRow("this process", here.host, here.pid, here.service, here.version, True)
        return [row._replace(last_seen="now", role=role)], (
            "No store: this page shows what this process saw."
        )
    known = {instance.id: instance for instance in monitor.instances()}
    rows = []
    for where, role_list in roles.items():
        role = "; ".join(role_list)
        instance = known.get(where)
        if instance is None:  # gone from the store since
            rows.append(InstanceRow(where, "?", 0, "?", "", False, "?", role))
            continue
        seen = _moment(from_ns(instance.last_seen_ns), now)
        rows.append(
            InstanceRow(
                instance.id,
                instance.host,
                instance.pid,
                instance.service,
                instance.version,
                instance.alive,
                "" if seen is None else seen.relative,
                role,
            )
        )
    plural = "" if len(known) == 1 else "s"
    note = (
        "The store knows the instance that started the latest run and those running the job "
        f"now; {len(known)} instance{plural} write to it."
    )
    return rows, note


def job_context(
    monitor: JobMonitor, name: str, show_detail: bool, back: str
) -> dict[str, Any] | None:
    """What ``job.html`` and ``_job.html`` need; None for an unknown job."""
    status = monitor.status(name)
    if status is None:
        return None
    now = from_ns(monitor._clock.time_ns())
    history = monitor.history(name)
    runner, in_progress = monitor._runs_in_progress(name)
    instances, instances_note = _instances(monitor, runner, in_progress, now)
    latest = [
        (
            _moment(run.started_at, now),
            duration_text(run.duration_seconds),
            run.outcome.value,
            run.error_category or "",
        )
        for run in history[:LATEST_RUNS]
    ]
    marks = ["finished runs of the last 24 hours (success or failed, with its category)"]
    if status.last_missed_run_time is not None:
        mark = "the last missed slot"
        if status.missed_count > 1:
            mark += f" ({status.missed_count} missed in all; earlier slots are counted, not kept)"
        marks.append(mark)
    if in_progress:
        marks.append("the runs in progress, from their start (a stalled one in orange)")
    sentence = _state_title(status) or (
        "the last run succeeded" if status.state is JobState.SUCCESS else "it never ran"
    )
    sentence = sentence[0].upper() + sentence[1:]
    return {
        "status": status,
        "name": name,
        "state": status.state.value,
        "state_title": sentence,
        "health": evaluate({name: status}).value,
        "figures": _figures(status, now),
        "settings": _settings(status),
        "chart": chart(history, in_progress, status, now),
        "marks": marks,
        "show_detail": show_detail,
        "last_error": status.last_error if show_detail else None,
        "last_error_category": status.last_error_category,
        "metadata": sorted(status.metadata.items()) if show_detail else [],
        "instances": instances,
        "instances_note": instances_note,
        "latest": latest,
        "now": _moment(now, now),
        "home": back,
    }


# -- rendering -------------------------------------------------------------------------


def _render(template: str, context: Mapping[str, Any], nonce: str) -> str:
    values = {
        "nonce": nonce,
        "css": _CSS,
        "js": _JS,
        "refresh_ms": int(REFRESH_SECONDS * 1000),
        **context,
    }
    return _ENVIRONMENT.get_template(template).render(values)


def render_table(
    monitor: JobMonitor,
    query: Query,
    prefix: str,
    sparks: SparkCache,
    *,
    nonce: str,
    fragment: bool,
) -> str:
    """The table page, or with `fragment` what its script swaps in. `prefix` goes before
    each job's quoted name in its link."""
    context = table_context(monitor, query, prefix, sparks)
    return _render("_table.html" if fragment else "jobs.html", context, nonce)


def render_job(
    monitor: JobMonitor,
    name: str,
    back: str,
    show_detail: bool,
    *,
    nonce: str,
    fragment: bool,
) -> tuple[str, int]:
    """The job's page (or its fragment) and 200, or a page saying it is unknown and 404.
    `back` is the link to the table."""
    context = job_context(monitor, name, show_detail, back)
    if context is None:
        missing = {"name": name, "home": back, "refresh_ms": 0}
        return _render("missing.html", missing, nonce), 404
    return _render("_job.html" if fragment else "job.html", context, nonce), 200


# -- the routes ------------------------------------------------------------------------


class _PageRoute(Route):
    """A GET route whose 405 answer is jobpulse's JSON one."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await answer_method_not_allowed(scope, receive, send):
            await super().handle(scope, receive, send)


def _html(request: Request, body: str, status_code: int, nonce: str) -> Response:
    data = body.encode()
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Vary": "Accept-Encoding",
    }
    if len(data) >= _GZIP_FROM_BYTES and "gzip" in request.headers.get("accept-encoding", ""):
        data = gzip.compress(data, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(data, status_code, headers=headers, media_type="text/html; charset=utf-8")


def _depth(request: Request, name: str) -> int:
    """How many segments below ``/jobs/`` the browser's path to this job page goes: a name's
    ``/`` may have come as ``%2F`` (the page's own links) or as ``/``."""
    raw = request.scope.get("raw_path")
    path: str = request.scope["path"]
    if not isinstance(raw, bytes):
        return name.count("/")
    prefix_slashes = path.count("/") - name.count("/")
    return max(raw.split(b"?", 1)[0].count(b"/") - prefix_slashes, 0)


def page_routes(monitor: JobMonitor, access: Access, *, detail: bool) -> list[BaseRoute]:
    """``GET /jobs`` and ``GET /jobs/{name}``, relative to where they are mounted.

    `access` decides who may see the pages (401 otherwise, with the challenge that makes a
    browser ask for the token). Error texts and metadata are shown if `detail` is True or
    `access` protects the pages. Raises `ImportError` without Jinja2 (``jobpulse[page]``).
    """
    show_detail = detail or access.protected
    sparks = SparkCache()

    def table_page(query: Query, prefix: str, fragment: bool, nonce: str) -> str:
        return render_table(monitor, query, prefix, sparks, nonce=nonce, fragment=fragment)

    def job_page(name: str, back: str, fragment: bool, nonce: str) -> tuple[str, int]:
        return render_job(monitor, name, back, show_detail, nonce=nonce, fragment=fragment)

    async def jobs(request: Request) -> Response:
        refused = await access.refuse(request)
        if refused is not None:
            return refused
        return await _table_response(request, "jobs/")

    async def _table_response(request: Request, prefix: str) -> Response:
        nonce = secrets.token_urlsafe(16)
        query = Query.parse(request.query_params)
        fragment = request.query_params.get("fragment") == "1"
        try:
            body = await run_in_threadpool(table_page, query, prefix, fragment, nonce)
        except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
            return internal_error("status page", exc)
        return _html(request, body, 200, nonce)

    async def job(request: Request) -> Response:
        refused = await access.refuse(request)
        if refused is not None:
            return refused
        name: str = request.path_params["name"]
        if not name:  # /jobs/: the table, whose links are then relative to /jobs/
            return await _table_response(request, "")
        nonce = secrets.token_urlsafe(16)
        back = "../" * (_depth(request, name) + 1) + "jobs"
        fragment = request.query_params.get("fragment") == "1"
        try:
            body, code = await run_in_threadpool(job_page, name, back, fragment, nonce)
        except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
            return internal_error("status page", exc)
        return _html(request, body, code, nonce)

    return [
        _PageRoute("/jobs", jobs, methods=["GET"], name="jobpulse_page"),
        _PageRoute("/jobs/{name:path}", job, methods=["GET"], name="jobpulse_page_job"),
    ]
