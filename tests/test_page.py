"""The status page in process: what the table and a job's page show, sorting and filters, the
fragment the script swaps in, escaping, who may see error texts, the answers' headers, and
the templates in the wheel. tests/test_page_browser.py loads it in Chromium."""

from __future__ import annotations

import asyncio
import importlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from jobpulse import JobMonitor, JobState, RunRecord, set_metadata
from jobpulse._auth import Access
from jobpulse._model import JobStatus
from jobpulse._monitor import RunInProgress
from jobpulse._page import (
    Query,
    SparkCache,
    chart,
    duration_text,
    page_routes,
    rate_text,
    render_table,
    sort_jobs,
    span_text,
    sparkline,
)
from jobpulse.testing import FakeClock
from tests.conftest import REQUIRE_SERVERS, InternalErrors, MakeMonitor, in_own_context, succeed

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parent.parent


def client_for(app: Starlette) -> httpx.Client:
    """A sync client calling the ASGI app in process (httpx's ASGI transport is async)."""

    class Transport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            async def send() -> httpx.Response:
                response = await httpx.ASGITransport(app=app).handle_async_request(request)
                content = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
                return httpx.Response(
                    response.status_code, headers=response.headers, content=content
                )

            return asyncio.run(send())

    return httpx.Client(transport=Transport(), base_url="http://testserver")


def page_client(
    monitor: JobMonitor, *, auth: Any = None, detail: bool = True, prefix: str = ""
) -> httpx.Client:
    routes = page_routes(monitor, Access(auth), detail=detail)
    app = Starlette(routes=[Mount(prefix, routes=routes)] if prefix else routes)
    return client_for(app)


@pytest.fixture
def client(monitor: JobMonitor) -> Iterator[httpx.Client]:
    with page_client(monitor) as client:
        yield client


class Page(HTMLParser):
    """What a test reads of a page: the table's rows (their attributes and the text of each
    cell), the links, the elements' ids, and the text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[dict[str, Any]] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.texts: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "a" and found.get("href") is not None:
            self.links.append(str(found["href"]))
        if tag == "tr" and "data-name" in found:
            self.rows.append({"attrs": found, "cells": []})
        elif tag == "td" and self.rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.texts).split())

    def names(self) -> list[str]:
        return [str(row["cells"][1]).removesuffix(" critical") for row in self.rows]

    def row(self, name: str) -> list[str]:
        (row,) = [row for row in self.rows if row["cells"][1].removesuffix(" critical") == name]
        return list(row["cells"])


def fail(monitor: JobMonitor, name: str, error: Exception) -> None:
    with pytest.raises(type(error)), monitor.run(name):
        raise error


def run_for(monitor: JobMonitor, clock: FakeClock, name: str, seconds: float) -> None:
    with monitor.run(name):
        clock.advance(seconds)


# -- the text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.0000004, "0 µs"),
        (0.00042, "420 µs"),
        (0.0042, "4.2 ms"),
        (0.0096, "10 ms"),
        (0.85, "850 ms"),
        (0.9996, "1.00 s"),
        (2.345, "2.35 s"),
        (12.34, "12.3 s"),
        (59.96, "1 min 00 s"),
        (245.0, "4 min 05 s"),
        (3 * 3600 + 20 * 60, "3 h 20 min"),
        (3 * 86400, "3.0 d"),
    ],
)
def test_durations_read_as_an_operator_says_them(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0 s"),
        (12.9, "12 s"),
        (300, "5 min"),
        (3600, "1 h"),
        (3 * 3600 + 20 * 60, "3 h 20 min"),
        (2 * 86400, "2 d"),
        (2 * 86400 + 4 * 3600, "2 d 4 h"),
    ],
)
def test_lengths_of_time_are_rough(seconds: float, text: str) -> None:
    assert span_text(seconds) == text


def test_rates_are_percentages() -> None:
    assert rate_text(None) == "—"
    assert rate_text(2 / 3) == "66.7%"
    assert rate_text(1.0) == "100.0%"


# -- the table -------------------------------------------------------------------------


def test_the_table_shows_every_job_with_its_figures(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    monitor.register("indexer", critical=True, schedule="@every 10m")
    for seconds in (1.0, 2.0, 3.0):
        run_for(monitor, clock, "indexer", seconds)
        clock.advance(60)
    fail(monitor, "mailer", ConnectionError("connection refused"))
    monitor.register("nightly", schedule="0 3 * * *")
    clock.advance(120)

    response = client.get("/jobs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = Page(response.text)
    assert page.names() == ["mailer", "nightly", "indexer"]  # the worst first
    state, name, last, next_run, p50, p95, rate, spark, since = page.row("indexer")
    assert (state, name) == ("success", "indexer critical")
    assert last == "3 min ago"  # the last run started at 2:03; it is 5:06
    assert next_run == "in 7 min"  # @every 10m from that start
    status = monitor.status("indexer")
    assert status is not None
    assert (p50, p95) == (
        duration_text(status.p50_duration_seconds),  # within 5% of 2 s and 3 s
        duration_text(status.p95_duration_seconds),
    )
    assert rate == "100.0%"
    assert since == "3 min"
    assert spark == "last 3 runs: 3 succeeded, 0 failed; longest 3.00 s"
    assert page.row("mailer")[0] == "failed"
    assert page.row("mailer")[6] == "0.0%"
    assert page.row("mailer")[8] == "never"
    assert page.row("nightly")[2:4] == ["never", "in 2 h 54 min"]
    assert page.row("nightly")[7] == "no runs"
    assert "degraded (206 at the health endpoint)" in page.text
    assert "1 failed" in page.text
    assert "3 of 3 jobs shown" in page.text
    assert "this process" in page.text
    (row,) = [row for row in page.rows if row["attrs"]["data-name"] == "indexer"]
    assert row["attrs"] == {"data-name": "indexer", "data-state": "success", "data-critical": "1"}
    assert "jobs/indexer" in page.links


def test_a_missed_and_a_stalled_job_are_named_and_late(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    monitor.set_next_run("billing", T0 + timedelta(seconds=10), grace=5)
    monitor.register("hung", stall_after=30)
    with in_own_context(monitor.run("hung")):
        clock.advance(40)
        page = Page(client.get("/jobs").text)
    assert page.names() == ["hung", "billing"]
    assert page.row("hung")[0] == "stalled"
    assert page.row("billing")[0] == "missed"
    assert "unhealthy (503 at the health endpoint)" in page.text
    tags = [attrs for tag, attrs in page.tags if tag == "span" and attrs.get("title")]
    assert {"class": "state s-stalled", "title": "1 run past the stall threshold of 30.0 s"} in tags


def test_sorting_by_each_column_and_back(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    for name, seconds in (("b_slow", 5.0), ("a_quick", 0.5), ("c_middle", 2.0)):
        run_for(monitor, clock, name, seconds)
    monitor.register("d_never")
    assert Page(client.get("/jobs?sort=name").text).names() == [
        "a_quick",
        "b_slow",
        "c_middle",
        "d_never",
    ]
    assert Page(client.get("/jobs?sort=name&dir=desc").text).names() == [
        "d_never",
        "c_middle",
        "b_slow",
        "a_quick",
    ]
    # Longest first; a job without a value is last either way.
    assert Page(client.get("/jobs?sort=p50").text).names() == [
        "b_slow",
        "c_middle",
        "a_quick",
        "d_never",
    ]
    assert Page(client.get("/jobs?sort=p95&dir=asc").text).names() == [
        "a_quick",
        "c_middle",
        "b_slow",
        "d_never",
    ]
    assert Page(client.get("/jobs?sort=last_run").text).names()[0] == "c_middle"
    page = Page(client.get("/jobs?sort=p50").text)
    head = [attrs for tag, attrs in page.tags if tag == "th"]
    assert {"scope": "col", "class": "c-p50", "aria-sort": "descending"} in head
    assert "?sort=p50&dir=asc" in page.links  # the sorted column turns around
    assert "?sort=name" in page.links  # another starts in its own direction
    assert "?sort=p95" in page.links
    assert "?" in page.links  # the default order
    # What the page does not know is ignored.
    assert Page(client.get("/jobs?sort=nope&dir=sideways&state=odd").text).names() == (
        Page(client.get("/jobs").text).names()
    )


def test_sort_keys_put_what_has_no_value_last(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.set_next_run("soon", T0 + timedelta(minutes=5))
    monitor.set_next_run("later", T0 + timedelta(minutes=50))
    monitor.register("unscheduled")
    run_for(monitor, clock, "unscheduled", 1)
    statuses = list(monitor.statuses().values())
    for sort, direction, names in (
        ("next_run", "asc", ["soon", "later", "unscheduled"]),
        ("next_run", "desc", ["later", "soon", "unscheduled"]),
        ("success_rate", "asc", ["unscheduled", "later", "soon"]),
        ("since_success", "desc", ["unscheduled", "later", "soon"]),
        ("state", "asc", ["later", "soon", "unscheduled"]),
    ):
        query = Query("", "", False, sort, direction)
        assert [s.job_name for s in sort_jobs(statuses, query, clock.now())] == names, sort


def test_filters_by_state_critical_and_name(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    monitor.register("Billing_Export", critical=True)
    fail(monitor, "Billing_Export", ValueError("bad"))
    fail(monitor, "mail_digest", ValueError("bad"))
    succeed(monitor, "billing_cleanup")
    monitor.set_next_run("reports", T0 + timedelta(seconds=1), grace=1)
    clock.advance(5)
    assert Page(client.get("/jobs?state=failed").text).names() == [
        "Billing_Export",
        "mail_digest",
    ]
    assert Page(client.get("/jobs?state=problems").text).names() == [
        "Billing_Export",
        "mail_digest",
        "reports",
    ]
    assert Page(client.get("/jobs?critical=1").text).names() == ["Billing_Export"]
    page = Page(client.get("/jobs", params={"q": " BILLING "}).text)
    assert page.names() == ["Billing_Export", "billing_cleanup"]
    assert "2 of 4 jobs shown" in page.text
    nothing = Page(client.get("/jobs?q=nothing").text)
    assert nothing.rows == []
    assert "No job matches." in nothing.text
    # The form keeps what was asked, the header's links too.
    response = client.get("/jobs?q=bill&state=problems&critical=1&sort=name")
    assert 'value="bill"' in response.text
    assert '<option value="problems" selected>' in response.text
    assert 'name="critical" value="1" checked' in response.text
    assert "?q=bill&state=problems&critical=1&sort=name&dir=desc" in Page(response.text).links
    # The summary's counts link to their state alone, in the same order.
    assert "?state=failed&sort=name" in Page(response.text).links


def test_the_query_is_bounded_and_forgiving() -> None:
    query = Query.parse({"q": "x" * 500, "state": "<b>", "critical": "yes", "dir": "up"})
    assert query == Query("x" * 200, "", False, "state", "asc")
    assert Query.parse({"sort": "p95"}).dir == "desc"
    assert Query.parse({}).href() == "?"


def test_the_fragment_is_what_the_script_swaps_in(
    monitor: JobMonitor, client: httpx.Client
) -> None:
    succeed(monitor, "a")
    fragment = client.get("/jobs?fragment=1&state=success")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert "<script" not in fragment.text
    page = Page(fragment.text)
    assert {"summary", "count", "jobs-head", "rows", "shown"} <= page.ids
    swapped = [attrs["id"] for tag, attrs in page.tags if "data-swap" in attrs]
    assert swapped == ["summary", "count", "jobs-head", "rows"]
    assert page.names() == ["a"]
    # The whole page holds each of them, and the table's rows are the very same.
    whole = Page(client.get("/jobs?state=success").text)
    assert {"summary", "count", "jobs-head", "rows", "filters", "refreshed"} <= whole.ids
    assert whole.rows == page.rows


def test_a_refresh_of_unchanged_jobs_reads_no_history(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c"):
        succeed(monitor, name)
    monitor.register("never_ran")
    read: list[str] = []
    history = monitor.history

    def counted(name: str, limit: int | None = None) -> list[RunRecord]:
        read.append(name)
        return history(name, limit)

    monkeypatch.setattr(monitor, "history", counted)
    sparks = SparkCache()
    query = Query.parse({})
    render_table(monitor, query, "jobs/", sparks, nonce="n", fragment=True)
    assert sorted(read) == ["a", "b", "c"]  # a job that never ran has no history to read
    read.clear()
    render_table(monitor, query, "jobs/", sparks, nonce="n", fragment=True)
    assert read == []
    succeed(monitor, "b")
    monitor.unregister("c")
    render_table(monitor, query, "jobs/", sparks, nonce="n", fragment=True)
    assert read == ["b"]
    assert set(sparks._built) == {"a", "b", "never_ran"}


def test_sparklines_draw_the_latest_runs_oldest_left() -> None:
    assert sparkline([]) is None
    runs = [
        RunRecord(T0 + timedelta(minutes=3), 1.0, JobState.SUCCESS, None),
        RunRecord(T0 + timedelta(minutes=2), 4.0, JobState.FAILED, "timeout"),
        RunRecord(T0 + timedelta(minutes=1), 2.0, JobState.SUCCESS, None),
        RunRecord(T0, 0.0, JobState.SUCCESS, None),
    ]
    spark = sparkline(runs)
    assert spark is not None
    # Oldest first: 0 s (the 2 px floor), 2 s, then the failure of 4 s, then 1 s.
    assert spark.ok_path == "M1.5 20v-2m4 2v-10m8 10v-5"
    assert spark.failed_path == "M9.5 20v-20"
    assert spark.width == 16
    assert spark.label == "last 4 runs: 3 succeeded, 1 failed; longest 4.00 s"
    zero = sparkline([RunRecord(T0, 0.0, JobState.SUCCESS, None)])
    assert zero is not None
    assert zero.ok_path == "M1.5 20v-20"


# -- a job's page ----------------------------------------------------------------------


def test_a_job_page_shows_its_figures_runs_settings_and_error(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    monitor.register(
        "indexer",
        critical=True,
        schedule="@every 10m",
        timeout=60,
        stall_after=120,
        failure_threshold=2,
    )
    run_for(monitor, clock, "indexer", 2.0)
    clock.advance(600)
    with pytest.raises(ConnectionError), monitor.run("indexer"):  # noqa: PT012 - a run
        set_metadata(rows=12, source="<b>feed</b>")
        clock.advance(0.5)
        raise ConnectionError("connection refused by https://user:hunter2@db.example/x")
    response = client.get("/jobs/indexer")
    assert response.status_code == 200
    page = Page(response.text)
    text = page.text
    assert "failed indexer critical" in text
    assert "The last run failed (threshold 2)" in text
    assert "would make the service degraded" in text
    for figure in (
        "Success rate, 24 h 50.0%",
        "Runs 1 succeeded, 1 failed",
        "Failures in a row 1 (threshold 2)",
        "Schedule @every 10m",
        "Timezone UTC",
        "Grace 1 min 00 s",
        "Stall threshold 2 min 00 s",
        "Timeout 1 min 00 s",
        "Failure threshold 2",
        "Critical yes",
        "Category: network",
    ):
        assert figure in text, figure
    assert "connection refused by https://user:***@db.example/x" in text
    assert "hunter2" not in response.text
    assert "rows 12" in text
    assert "source <b>feed</b>" in text  # as text: escaped in the HTML
    assert "&lt;b&gt;feed&lt;/b&gt;" in response.text
    assert "this process" in text
    assert "No store: this page shows what this process saw." in text
    # The latest runs, newest first, and the chart's marks of them.
    assert "2026-01-01 00:10:02 UTC 500 ms failed network" in text
    assert "2026-01-01 00:00:00 UTC 2.00 s success" in text
    assert "2 runs in the last 24 hours, 1 failed" in text
    assert page.links[:1] == ["../jobs"]
    assert {"job", "refreshed"} <= page.ids


def test_a_job_that_never_failed_or_failed_before_its_last_success(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    succeed(monitor, "fine")
    assert "No run has failed." in Page(client.get("/jobs/fine").text).text
    fail(monitor, "recovered", ValueError("once"))
    succeed(monitor, "recovered")
    text = Page(client.get("/jobs/recovered").text).text
    assert "None since the last success" in text
    monitor.register("never")
    text = Page(client.get("/jobs/never").text).text
    assert "It never ran" in text
    assert "no finished run in the last 24 hours" in text
    assert "No finished run in the last 24 hours." in text


def test_an_unknown_job_is_a_404_page_that_does_not_refresh(client: httpx.Client) -> None:
    response = client.get("/jobs/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = Page(response.text)
    assert "No job named nope" in page.text
    assert page.links[:2] == ["../jobs", "../jobs"]
    assert '<html lang="en" data-refresh="0">' in response.text


def test_a_job_page_links_back_however_deep_its_name_goes(monitor: JobMonitor) -> None:
    succeed(monitor, "reports/daily/email")
    with page_client(monitor, prefix="/ops") as client:
        table = Page(client.get("/ops/jobs").text)
        assert "jobs/reports%2Fdaily%2Femail" in table.links  # one segment below /jobs/
        encoded = client.get("/ops/jobs/reports%2Fdaily%2Femail")
        assert encoded.status_code == 200
        assert Page(encoded.text).links[0] == "../jobs"
        typed = client.get("/ops/jobs/reports/daily/email")
        assert typed.status_code == 200
        assert Page(typed.text).links[0] == "../../../jobs"
        # /jobs/ is the table too; its links are then relative to /jobs/.
        slashed = client.get("/ops/jobs/")
        assert slashed.status_code == 200
        assert "reports%2Fdaily%2Femail" in Page(slashed.text).links


def test_without_raw_path_the_name_says_how_deep(monitor: JobMonitor) -> None:
    from jobpulse._page import _depth

    scope = {"type": "http", "path": "/jobs/a/b", "headers": []}
    assert _depth(Request(scope), "a/b") == 1


def test_the_chart_marks_runs_missed_slots_and_runs_in_progress(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("job", stall_after=60)
    status = monitor.status("job")
    assert status is not None
    now = T0 + timedelta(hours=30)
    history = [
        RunRecord(now - timedelta(hours=1), 0.01, JobState.SUCCESS, None),
        RunRecord(now - timedelta(hours=2), 300.0, JobState.FAILED, "timeout"),
        RunRecord(now - timedelta(hours=3), 12.0, JobState.FAILED, "lost"),
        RunRecord(now - timedelta(hours=4), 1.0, JobState.FAILED, "network"),
    ]
    missed = JobStatus(**{**status.__dict__, "last_missed_run_time": now - timedelta(hours=12)})
    in_progress = [
        RunInProgress(now - timedelta(minutes=10), True, ""),
        RunInProgress(now - timedelta(seconds=30), False, ""),
        RunInProgress(now - timedelta(seconds=20), False, ""),
    ]
    drawn = chart(history, in_progress, missed, now)
    assert [point.kind for point in drawn.points] == ["success", "timeout", "lost", "failed"]
    # A log scale (the durations span more than a factor of 20), one tick a decade.
    assert [tick.label for tick in drawn.y_ticks] == [
        "10 ms",
        "100 ms",
        "1.00 s",
        "10.0 s",
        "1 min 40 s",
        "16 min 40 s",
    ]
    ys = [float(point.y) for point in drawn.points]
    assert ys[1] < ys[2] < ys[3] < ys[0]  # longer is higher
    xs = [float(point.x) for point in drawn.points]
    assert xs[0] > xs[1] > xs[2] > xs[3]  # later is further right
    assert drawn.missed is not None
    assert drawn.missed.label == "missed slot 2026-01-01 18:00:00 UTC"
    assert float(drawn.missed.position) == pytest.approx((64 + 788) / 2)
    assert [(bar.kind, bar.label) for bar in drawn.bars] == [
        ("stalled", "stalled 10 min (+1 more)"),
        ("running", "running 30 s"),
    ]
    assert "past its stall threshold of 1 min 00 s" in drawn.bars[0].title
    assert drawn.label == "4 runs in the last 24 hours, 3 failed; 3 in progress"
    assert [tick.label for tick in drawn.x_ticks] == [
        "09:00",
        "12:00",
        "15:00",
        "18:00",
        "21:00",
        "00:00",
        "03:00",
    ]
    # Close durations: linear from zero.
    close = RunRecord(now - timedelta(hours=5), 0.6, JobState.SUCCESS, None)
    linear = chart([history[3], close], [], status, now)
    assert [tick.label for tick in linear.y_ticks] == ["0", "500 ms", "1.00 s"]
    assert linear.missed is None
    # A missed slot older than the day is not drawn.
    old = JobStatus(**{**status.__dict__, "last_missed_run_time": now - timedelta(hours=25)})
    assert chart([], [], old, now).missed is None


def test_a_stalled_run_is_drawn_from_its_start(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    monitor.register("hung", stall_after=30)
    with in_own_context(monitor.run("hung")):
        clock.advance(45)
        response = client.get("/jobs/hung")
    assert 'class="b-stalled"' in response.text
    text = Page(response.text).text
    assert "stalled 45 s" in text
    assert "the runs in progress, from their start" in text
    assert "runs it now (1)" in text
    assert "In progress 1 (1 stalled)" in text


# -- escaping and detail ---------------------------------------------------------------

XSS_NAME = '<script>alert("name")</script>" onmouseover="alert(1)'
XSS_ERROR = "<img src=x onerror=alert('error')>"


def test_names_errors_and_metadata_are_escaped(monitor: JobMonitor, client: httpx.Client) -> None:
    with pytest.raises(ValueError, match="img"), monitor.run(XSS_NAME):  # noqa: PT012 - a run
        set_metadata(note="<iframe src=javascript:alert(3)>")
        raise ValueError(XSS_ERROR)
    table = client.get("/jobs").text
    job = client.get("/jobs/" + XSS_NAME.replace("/", "%2F")).text
    for html in (table, job):
        assert "<script>alert" not in html
        assert '" onmouseover="' not in html
        assert "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;&#34; onmouseover=&#34;" in html
    assert Page(table).names() == [XSS_NAME]
    assert "<img src=x" not in job
    assert "<iframe" not in job
    assert XSS_ERROR in Page(job).text
    assert "<iframe src=javascript:alert(3)>" in Page(job).text
    # The only scripts are the page's own.
    assert len(re.findall("<script", job)) == 1


def test_without_detail_and_auth_no_error_text_or_metadata(monitor: JobMonitor) -> None:
    with pytest.raises(ValueError, match="sauce"), monitor.run("job"):  # noqa: PT012 - a run
        set_metadata(customer="acme")
        raise ValueError("the secret sauce")
    with page_client(monitor, detail=False) as client:
        text = Page(client.get("/jobs/job").text).text
    assert "the secret sauce" not in text
    assert "acme" not in text
    assert "Metadata" not in text
    assert "Category: unknown" in text
    assert "Error texts are shown only when the page is protected" in text


def test_a_token_protects_the_pages_and_shows_the_detail(monitor: JobMonitor) -> None:
    fail(monitor, "job", ValueError("the secret sauce"))
    with page_client(monitor, auth="s3cret", detail=False) as client:
        for path in ("/jobs", "/jobs/job", "/jobs/nope", "/jobs?fragment=1"):
            refused = client.get(path)
            assert refused.status_code == 401
            assert refused.json() == {"error": "unauthorized"}
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/jobs", auth=("anyone", "wrong")).status_code == 401
        page = client.get("/jobs/job", auth=("anyone", "s3cret"))
        assert page.status_code == 200
        assert "the secret sauce" in page.text
        bearer = client.get("/jobs", headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 200


def test_a_callable_decides_and_one_that_raises_is_a_bare_500(
    monitor: JobMonitor, internal_errors: InternalErrors
) -> None:
    def staff_only(request: Request) -> bool:
        if request.headers.get("x-user") == "crash":
            raise RuntimeError("the auth callable's bug")
        return request.headers.get("x-user") == "staff"

    with page_client(monitor, auth=staff_only) as client:
        assert client.get("/jobs").status_code == 401
        assert client.get("/jobs", headers={"x-user": "staff"}).status_code == 200
        crashed = client.get("/jobs", headers={"x-user": "crash"})
    assert crashed.status_code == 500
    assert crashed.json() == {"error": "internal error"}
    assert [where for where, _ in internal_errors.take()] == ["auth callable"]


# -- the answers -----------------------------------------------------------------------


def test_only_the_pages_own_style_and_script_run(monitor: JobMonitor, client: httpx.Client) -> None:
    succeed(monitor, "job")
    for path in ("/jobs", "/jobs/job", "/jobs?fragment=1", "/jobs/nope"):
        response = client.get(path)
        policy = response.headers["content-security-policy"]
        (nonce,) = re.findall(r"script-src 'nonce-([\w-]+)'", policy)
        assert f"style-src 'nonce-{nonce}'" in policy
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert re.findall(r"<(?:script|style)( [^>]*)?>", response.text) == (
            [] if "fragment" in path else [f' nonce="{nonce}"'] * 2
        )
        assert " style=" not in response.text  # an inline style attribute would be refused
    policies = {client.get("/jobs").headers["content-security-policy"] for _ in range(2)}
    assert len(policies) == 2  # a nonce of its own each time


def test_a_large_page_is_gzipped_when_the_browser_asks(
    monitor: JobMonitor, client: httpx.Client
) -> None:
    for index in range(40):
        succeed(monitor, f"job_{index:02d}")
    zipped = client.get("/jobs", headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert len(Page(zipped.text).rows) == 40  # httpx decompresses
    plain = client.get("/jobs", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    small = client.get("/jobs?fragment=1&q=none", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers


def test_head_and_other_methods(monitor: JobMonitor, client: httpx.Client) -> None:
    succeed(monitor, "job")
    head = client.head("/jobs")
    assert (head.status_code, head.content) == (200, b"")
    for path in ("/jobs", "/jobs/job"):
        refused = client.post(path)
        assert refused.status_code == 405
        assert refused.json() == {"error": "method not allowed"}
        assert refused.headers["allow"] == "GET, HEAD"


def test_a_failure_inside_jobpulse_is_a_bare_500(
    monitor: JobMonitor,
    client: httpx.Client,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(monitor, "health", broken)
    monkeypatch.setattr(monitor, "status", broken)
    for path in ("/jobs", "/jobs/job"):
        response = client.get(path)
        assert response.status_code == 500
        assert response.json() == {"error": "internal error"}
    assert [where for where, _ in internal_errors.take()] == ["status page", "status page"]


def test_without_jinja2_or_starlette_the_import_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for missing in ("jinja2", "starlette.routing"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, missing, None)
            patch.delitem(sys.modules, "jobpulse._page")
            with pytest.raises(ImportError, match=r"pip install 'jobpulse\[page\]'"):
                importlib.import_module("jobpulse._page")
    importlib.import_module("jobpulse._page")


# -- the fleet -------------------------------------------------------------------------


def test_with_a_store_the_page_shows_the_fleet_and_who_ran_a_job(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    worker, other, web = fleet(), fleet(), fleet()
    worker.register("slow", stall_after=30)
    succeed(other, "slow")
    assert other.flush()
    with worker.run("slow"):
        assert worker.flush()
        assert web.flush()
        with page_client(web) as client:
            table = Page(client.get("/jobs").text)
            job = Page(client.get("/jobs/slow").text)
    assert table.names() == ["slow"]
    assert table.row("slow")[0] == "running"
    assert "the fleet: 3 of 3 instances alive" in table.text
    assert worker._store is not None
    assert other._store is not None
    worker_id = worker._store.publisher.instance.id
    other_id = other._store.publisher.instance.id
    rows = {row.split(" ")[0]: row for row in _instance_rows(job)}
    assert set(rows) == {worker_id, other_id}
    assert "runs it now (1)" in rows[worker_id]
    assert "started the latest run" in rows[other_id]
    assert "3 instances write to it" in job.text


def _instance_rows(page: Page) -> list[str]:
    text = page.text
    start = text.index("What it did") + len("What it did")
    end = text.index("The store knows")
    rows = text[start:end].strip()
    return [part.strip() for part in re.split(r"(?=\b[0-9a-f]{32}\b)", rows) if part.strip()]


# -- packaging -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_wheel_ships_the_templates(tmp_path: Path) -> None:
    # Built as pip builds it for a user: hatchling in an isolated environment, from pip's
    # cache or the index.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if "satisfies the requirement hatchling" in built.stderr and not REQUIRE_SERVERS:
        pytest.skip("pip cannot get hatchling (no index, nothing cached)")
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("jobpulse-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    templates = ROOT / "src" / "jobpulse" / "templates"
    shipped = {f"jobpulse/templates/{path.name}" for path in templates.iterdir()}
    assert {"jobpulse/templates/page.css", "jobpulse/templates/page.js"} < shipped
    assert shipped <= names


def test_the_scope_says_whose_view_it_is() -> None:
    from jobpulse._page import _scope_text

    assert _scope_text({"scope": "process"}) == "this process"
    assert _scope_text({"scope": "process", "store": "unavailable"}) == (
        "this process only: the store cannot be read"
    )
    fleet = {"scope": "fleet", "store": "degraded", "instances": [{"alive": True}]}
    assert _scope_text(fleet) == (
        "the fleet: 1 of 1 instance alive; this process's latest changes are not written yet"
    )


def test_a_job_page_says_what_is_skipped_missed_and_automatic(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    monitor.register("nightly", stall_after="auto")
    monitor.record_skipped("nightly", reason="overlap")
    for minutes in (1, 2):
        monitor.record_missed(
            "nightly", scheduled_at=T0 + timedelta(minutes=minutes), reason="misfire"
        )
    clock.advance(600)
    text = Page(client.get("/jobs/nightly").text).text
    assert "Skipped 1" in text
    assert "Missed slots 2" in text
    assert "Stall threshold 5 min 00 s (auto)" in text
    assert "the last missed slot (2 missed in all; earlier slots are counted, not kept)" in text


def test_an_instance_gone_from_the_store_is_still_named(
    fleet: MakeMonitor, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, web = fleet(), fleet()
    succeed(worker, "job")
    assert worker.flush()
    assert web.flush()
    monkeypatch.setattr(web, "instances", list)  # as if the store had forgotten them all
    with page_client(web) as client:
        rows = _instance_rows(Page(client.get("/jobs/job").text))
    assert worker._store is not None
    (row,) = rows
    assert row == f"{worker._store.publisher.instance.id} ? 0 ? no ? started the latest run"


def test_routes_serve_the_page_with_their_auth_and_detail(monitor: JobMonitor) -> None:
    from fastapi import FastAPI

    from jobpulse.fastapi import router
    from jobpulse.starlette import routes

    fail(monitor, "job", ValueError("the secret sauce"))
    open_app = Starlette(routes=[Mount("/ops", routes=routes(monitor, status_page=True))])
    with client_for(open_app) as client:
        page = client.get("/ops/jobs/job")
        assert page.status_code == 200
        assert "the secret sauce" in page.text
        assert "jobs/job" in Page(client.get("/ops/jobs").text).links
    hidden = Starlette(routes=routes(monitor, detail=False, status_page=True, metrics=False))
    with client_for(hidden) as client:
        assert "the secret sauce" not in client.get("/jobs/job").text
    api = FastAPI()
    api.include_router(
        router(monitor, auth="t0ken", metrics=False, status_page=True), prefix="/ops"
    )
    with client_for(api) as client:
        assert client.get("/ops/jobs").status_code == 401
        page = client.get("/ops/jobs/job", headers={"Authorization": "Bearer t0ken"})
        assert page.status_code == 200
        assert "the secret sauce" in page.text  # protected: the detail is shown
        assert Page(page.text).links[0] == "../jobs"
    assert not [path for path in api.openapi()["paths"] if path.startswith("/ops/jobs")]
