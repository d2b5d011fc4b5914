"""The status page in a real browser: Debian's headless Chromium driven by Playwright loads
it from a real uvicorn server (127.0.0.1) whose monitor has jobs that succeed, fail, hang and
miss their schedule. What the page shows is checked against the health document; the page
fails a test on any console error or page error. Screenshots go to test-artifacts/.

Playwright's sync API keeps an event loop marked running on the main thread while it is
started, so that ``asyncio.run`` fails there until it stops: the browser lives for this
module only (one browser, one server), and nothing here calls ``asyncio.run``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.routing import Mount

from jobpulse import JobMonitor, set_metadata
from jobpulse._page import duration_text, rate_text
from jobpulse.starlette import HEALTH_PATH, routes
from tests.conftest import REQUIRE_SERVERS, log_signal, succeed
from tests.uvicorn_server import serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "status-page"
#: Long enough for a refresh (every 5 s) on a loaded machine; the tests wait on the page.
REFRESH_WAIT_MS = 20_000
XSS_NAME = '<img src=x onerror="alert(1)">'
XSS_ERROR = "<script>alert('error')</script> failed"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def require_browser() -> None:
    """Chromium and Playwright, or the test skips (fails with ``JOBPULSE_REQUIRE_SERVERS=1``).
    Playwright never downloads a browser here: it drives Debian's."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian: apt-get install chromium)")
    if missing:
        message = "the status page's browser tests need " + " and ".join(missing)
        if REQUIRE_SERVERS:
            pytest.fail(f"{message}; JOBPULSE_REQUIRE_SERVERS=1 requires it", pytrace=False)
        pytest.skip(message)


@dataclass
class Served:
    """The monitor and where its routes are: the health document at `api`, the status page
    at `jobs`."""

    monitor: JobMonitor
    base: str

    @property
    def jobs(self) -> str:
        return self.base + "/jobs"

    def document(self) -> dict[str, Any]:
        response = httpx.get(self.base + HEALTH_PATH, timeout=10)
        document: dict[str, Any] = response.json()
        return document

    def job_document(self, name: str) -> dict[str, Any]:
        response = httpx.get(
            self.base + HEALTH_PATH + "/" + name.replace("/", "%2F"),
            params={"limit": "10000"},
            timeout=10,
        )
        document: dict[str, Any] = response.json()
        return document


@contextmanager
def serve(monitor: JobMonitor) -> Iterator[Served]:
    app = Starlette(routes=[Mount("/ops", routes=routes(monitor, metrics=False, status_page=True))])
    with serving(app, "uvicorn-page-test") as base:
        yield Served(monitor, f"{base}/ops")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """A monitor (the real clock) with a day of runs of a few jobs, one of them failing, one
    hung past its stall threshold, one that missed its expected run and one never run;
    served under /ops by uvicorn with routes(status_page=True)."""
    monitor = JobMonitor(TracerProvider(shutdown_on_exit=False))
    now = datetime.now(timezone.utc)
    day = now - timedelta(hours=23, minutes=50)

    def runs(name: str, minutes: int, seconds: float, fails: Callable[[int], bool]) -> None:
        # A day of them, the last a few minutes ago (a scheduled job's next run is ahead).
        count = 23 * 60 // minutes
        first = now - timedelta(minutes=5 + (count - 1) * minutes)
        for index in range(count):
            start = first + timedelta(minutes=index * minutes)
            error = ConnectionError("connection refused") if fails(index) else None
            spread = seconds * (0.75 + (index * 7 % 10) / 20)
            monitor.record_run(
                name, start=start, end=start + timedelta(seconds=spread), error=error
            )

    monitor.register("btc_transaction_indexing", critical=True, schedule="@every 1h")
    runs("btc_transaction_indexing", 60, 3.5, lambda index: index == 7)
    monitor.register("swap_request_processing", critical=True, failure_threshold=3)
    runs("swap_request_processing", 20, 0.8, lambda index: index % 5 == 0 or index > 64)
    monitor.register("reports/nightly_email", timeout=600)
    runs("reports/nightly_email", 240, 95.0, lambda index: False)
    monitor.register("evm_sync", timeout=30)
    for index in range(30):
        start = day + timedelta(minutes=45 * index)
        if index % 9 == 4:
            monitor.record_run(
                "evm_sync",
                start=start,
                end=start + timedelta(seconds=30),
                error=TimeoutError("timed out"),
                category="timeout",
            )
        else:
            monitor.record_run("evm_sync", start=start, end=start + timedelta(seconds=12))
    monitor.register("cleanup", schedule="@daily")
    release = threading.Event()
    with log_signal("stalled") as stalled, log_signal("missed its scheduled run") as missed:
        monitor.register("hung_worker", stall_after=1)

        def hang() -> None:
            with monitor.run("hung_worker"):
                release.wait(60)

        hung = threading.Thread(target=hang, name="hung-job")
        hung.start()
        monitor.set_next_run("billing_export", now - timedelta(seconds=5), grace=1)
        assert stalled.wait(30)
        assert missed.wait(30)
    try:
        with serve(monitor) as where:
            yield where
    finally:
        release.set()
        hung.join(30)
        monitor.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_browser()
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@dataclass
class Problems:
    """The console errors and page errors of a test's pages, and dialogs (none expected)."""

    seen: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> Page:
        page.on("console", lambda message: self._console(message.type, message.text))
        page.on("pageerror", lambda error: self.seen.append(f"page error: {error}"))
        page.on("dialog", self._dialog)
        return page

    def _console(self, kind: str, text: str) -> None:
        if kind in ("error", "warning"):
            self.seen.append(f"console {kind}: {text}")

    def _dialog(self, dialog: Any) -> None:
        self.seen.append(f"dialog: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def problems() -> Iterator[Problems]:
    found = Problems()
    yield found
    assert found.seen == []


@pytest.fixture
def contexts(browser: Browser, problems: Problems) -> Iterator[Callable[..., Page]]:
    """Pages in fresh browser contexts (options as `Browser.new_context`), watched for
    problems; every context is closed after the test."""
    opened: list[BrowserContext] = []

    def new_page(**options: Any) -> Page:
        context = browser.new_context(**{"viewport": DESKTOP, **options})
        opened.append(context)
        return problems.watch(context.new_page())

    yield new_page
    for context in opened:
        context.close()


@pytest.fixture
def page(contexts: Callable[..., Page]) -> Page:
    return contexts()


_ROWS = """rows => rows.map(row => ({
    name: row.cells[1].querySelector("a").textContent,
    href: row.cells[1].querySelector("a").getAttribute("href"),
    state: row.dataset.state,
    critical: row.dataset.critical === "1",
    shown: !row.hidden,
    cells: Array.from(row.cells, cell => cell.textContent.trim()),
    spark: row.querySelector("svg.spark title")?.textContent ?? null,
}))"""


def table(page: Page) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = page.eval_on_selector_all("#rows tr[data-name]", _ROWS)
    return rows


def shown(page: Page) -> list[str]:
    return [row["name"] for row in table(page) if row["shown"]]


def test_the_table_shows_what_the_health_document_says(served: Served, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(served.jobs)
    document = served.document()
    jobs = document["jobs"]
    rows = {row["name"]: row for row in table(page)}
    assert set(rows) == set(jobs)
    for name, job in jobs.items():
        row = rows[name]
        state, _, last_run, next_run, p50, p95, rate, _, since = row["cells"]
        assert (row["state"], state) == (job["status"], job["status"]), name
        assert row["critical"] is job["critical"], name
        assert ("critical" in row["cells"][1]) is job["critical"], name
        assert (last_run == "never") is (job["last_run_time"] is None), name
        assert (next_run == "—") is (job["next_run_time"] is None), name
        for shown_ms, key in ((p50, "p50_duration_ms"), (p95, "p95_duration_ms")):
            value = job[key]
            assert shown_ms == duration_text(None if value is None else value / 1000), name
        assert rate == rate_text(job["success_rate"]), name
        if job["last_success_time"] is None:
            assert since in ("never", "—"), name
        runs = served.job_document(name)["history"][:30]
        if runs:
            failed = sum(run["outcome"] == "failed" for run in runs)
            assert row["spark"].startswith(
                f"last {len(runs)} runs: {len(runs) - failed} succeeded, {failed} failed"
            ), name
        else:
            assert row["spark"] is None, name
    summary = document["summary"]
    overall = page.locator("#summary .overall .word")
    expect(overall).to_have_text(document["status"])
    for state, key in (
        ("stalled", "stalled_jobs"),
        ("failed", "unhealthy_jobs"),
        ("missed", "missed_jobs"),
        ("pending", "pending_jobs"),
        ("success", "healthy_jobs"),
    ):
        expect(page.locator(f"#summary .counts .s-{state}")).to_have_text(f"{summary[key]} {state}")
    # The worst first: the stalled job, the failed one, the missed one.
    order = [(row["state"], row["name"]) for row in table(page)]
    assert order[:3] == [
        ("stalled", "hung_worker"),
        ("failed", "swap_request_processing"),
        ("missed", "billing_export"),
    ]


def test_filters_apply_as_one_types_and_the_server_agrees(served: Served, page: Page) -> None:
    from playwright.sync_api import Route, expect

    jobs = served.document()["jobs"]
    held: list[Route] = []
    page.goto(served.jobs)
    # Hold the script's requests to the server: what changes first is the page's own doing.
    page.route("**/jobs?*fragment=1*", lambda route: held.append(route))
    page.get_by_label("Name").fill("S")
    expected = sorted(name for name in jobs if "s" in name.lower())
    assert sorted(shown(page)) == expected
    expect(page.locator("#shown")).to_have_text(str(len(expected)))
    page.get_by_label("State").select_option("problems")
    problems = sorted(
        name
        for name, job in jobs.items()
        if "s" in name.lower() and job["status"] in ("failed", "stalled", "missed")
    )
    assert sorted(shown(page)) == problems
    page.get_by_label("critical only").check()
    critical = sorted(name for name in problems if jobs[name]["critical"])
    assert sorted(shown(page)) == critical == ["swap_request_processing"]
    assert page.url.endswith("/ops/jobs?q=S&state=problems&critical=1")
    # Let the server answer: the same rows, now the only ones in the table.
    page.unroute("**/jobs?*fragment=1*")
    for route in held:
        route.continue_()
    expect(page.locator("#rows tr[data-name]")).to_have_count(len(critical))
    # A reload asks the server for the same filter.
    page.reload()
    assert [row["name"] for row in table(page)] == critical
    expect(page.get_by_label("Name")).to_have_value("S")
    # Sorting is a link: by name, then the other way.
    page.get_by_label("critical only").uncheck()
    page.get_by_label("State").select_option("")
    page.get_by_label("Name").fill("")
    expect(page.locator("#rows tr[data-name]")).to_have_count(len(jobs))
    page.get_by_role("link", name="Job", exact=True).click()
    page.wait_for_url("**/ops/jobs?sort=name")
    assert [row["name"] for row in table(page)] == sorted(jobs)
    page.get_by_role("link", name="Job ▲").click()
    page.wait_for_url("**/ops/jobs?sort=name&dir=desc")
    assert [row["name"] for row in table(page)] == sorted(jobs, reverse=True)


def test_a_job_page_shows_its_runs_and_settings(served: Served, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(served.jobs)
    page.get_by_role("link", name="evm_sync", exact=True).click()
    page.wait_for_url("**/ops/jobs/evm_sync")
    document = served.job_document("evm_sync")
    job, history = document["job"], document["history"]
    expect(page.locator("h1 .name")).to_have_text("evm_sync")
    expect(page.locator("h1 .state")).to_have_text(job["status"])
    chart = page.locator("svg.chart")
    expect(chart.locator(".p-success")).to_have_count(
        sum(run["outcome"] == "success" for run in history)
    )
    expect(chart.locator(".p-timeout")).to_have_count(
        sum(run["error_category"] == "timeout" for run in history)
    )
    expect(page.locator("table.runs tbody tr")).to_have_count(min(len(history), 20))
    figures = dict(
        zip(
            page.locator(".figures dt").all_text_contents(),
            page.locator(".figures dd").all_text_contents(),
            strict=True,
        )
    )
    assert figures["Success rate, 24 h"] == rate_text(job["success_rate"])
    assert figures["Runs"] == f"{job['success_count']} succeeded, {job['failure_count']} failed"
    assert figures["Timeout"] == duration_text(job["timeout_ms"] / 1000)
    assert figures["Timeouts"] == str(job["timeout_count"])
    assert figures["Schedule"] == "none"
    page.get_by_role("link", name="← all jobs").click()
    page.wait_for_url("**/ops/jobs")

    # A name with a slash: its link keeps it one segment, and the way back works.
    page.get_by_role("link", name="reports/nightly_email", exact=True).click()
    page.wait_for_url("**/ops/jobs/reports%2Fnightly_email")
    expect(page.locator("h1 .name")).to_have_text("reports/nightly_email")
    page.get_by_role("link", name="← all jobs").click()
    page.wait_for_url("**/ops/jobs")


def test_the_stalled_run_and_the_missed_slot_are_marked(served: Served, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(served.jobs + "/hung_worker")
    expect(page.locator("h1 .state")).to_have_text("stalled")
    expect(page.locator("svg.chart .b-stalled")).to_have_count(1)
    expect(page.locator("svg.chart .t-stalled")).to_contain_text("stalled")
    page.goto(served.jobs + "/billing_export")
    expect(page.locator("h1 .state")).to_have_text("missed")
    expect(page.locator("svg.chart line.missed")).to_have_count(1)
    last_missed = served.job_document("billing_export")["job"]["last_missed_run_time"]
    expect(page.locator(".figures dd[title^='last']")).to_have_attribute(
        "title",
        "last " + last_missed[:10] + " " + last_missed[11:19] + " UTC",
    )


@pytest.fixture
def xss_job(served: Served) -> Iterator[str]:
    """A job whose name, error and metadata try XSS; gone after the test."""
    with pytest.raises(RuntimeError, match="alert"), served.monitor.run(XSS_NAME):  # noqa: PT012
        set_metadata(note="<b>bold</b>")
        raise RuntimeError(XSS_ERROR)
    yield XSS_NAME
    served.monitor.unregister(XSS_NAME)


def test_a_name_and_an_error_that_try_xss_are_text(
    served: Served, page: Page, xss_job: str
) -> None:
    from playwright.sync_api import expect

    page.goto(served.jobs)
    assert xss_job in [row["name"] for row in table(page)]
    page.get_by_role("link", name=xss_job, exact=True).click()
    expect(page.locator("h1 .name")).to_have_text(xss_job)
    expect(page.locator("pre.error")).to_contain_text(XSS_ERROR)
    expect(page.locator(".figures dd", has_text="<b>bold</b>")).to_have_count(1)
    assert page.locator("img, b, iframe").count() == 0
    assert page.locator("script").count() == 1  # the page's own
    # Nothing ran it: a dialog would have failed the test (see Problems).


def test_without_javascript_the_table_and_its_form_work(
    served: Served, contexts: Callable[..., Page]
) -> None:
    page = contexts(java_script_enabled=False)
    jobs = served.document()["jobs"]
    page.goto(served.jobs)
    assert sorted(row["name"] for row in table(page)) == sorted(jobs)
    page.get_by_label("Name").fill("sync")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**/ops/jobs?q=sync&state=")  # a GET form sends every field
    assert [row["name"] for row in table(page)] == ["evm_sync"]
    page.screenshot(path=str(ARTIFACTS / "no-javascript.png"))


def test_the_table_refreshes_itself_without_a_reload(served: Served, page: Page) -> None:
    from playwright.sync_api import expect

    navigations: list[str] = []
    page.goto(served.jobs)
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.evaluate("window.loadedOnce = true")
    total = len(served.document()["jobs"])
    expect(page.locator("#count")).to_contain_text(f"of {total} jobs shown")
    succeed(served.monitor, "refresh_probe")
    try:
        row = page.locator('#rows tr[data-name="refresh_probe"]')
        expect(row).to_have_count(1, timeout=REFRESH_WAIT_MS)
        expect(row.locator("td").first).to_have_text("success")
        expect(page.locator("#count")).to_contain_text(f"of {total + 1} jobs shown")
        expect(page.locator("#refreshed")).to_contain_text("updated")
    finally:
        served.monitor.unregister("refresh_probe")
    assert page.evaluate("window.loadedOnce") is True
    assert navigations == []


def test_a_hidden_tab_does_not_refresh(served: Served, page: Page) -> None:
    from playwright.sync_api import Request, expect

    fetched: list[str] = []

    def count(request: Request) -> None:
        if "fragment=1" in request.url:
            fetched.append(request.url)

    page.clock.install()
    page.on("request", count)
    page.goto(served.jobs)
    page.clock.run_for(5_500)
    refreshes = expect(page.locator("html"))
    refreshes.to_have_attribute("data-refreshes", "1")
    assert len(fetched) == 1
    # Headless Chromium keeps every tab visible: the tab's state is emulated, and the
    # page is told as a browser tells it.
    page.evaluate(
        """() => {
            Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    page.clock.run_for(60_000)
    assert len(fetched) == 1
    page.evaluate(
        """() => {
            Object.defineProperty(document, "hidden", {configurable: true, get: () => false});
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    refreshes.to_have_attribute("data-refreshes", "2")
    assert len(fetched) == 2  # at once, not an interval later


def test_a_job_page_refreshes_too(served: Served, page: Page) -> None:
    from playwright.sync_api import expect

    page.clock.install()  # the page's timers run when the test says
    page.goto(served.jobs + "/evm_sync")
    runs = page.locator("svg.chart .p-success")
    before = runs.count()
    succeed(served.monitor, "evm_sync")
    page.clock.run_for(5_500)
    expect(page.locator("html")).to_have_attribute("data-refreshes", "1")
    expect(runs).to_have_count(before + 1)
    expect(page.locator("h1 .name")).to_have_text("evm_sync")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots(served: Served, contexts: Callable[..., Page], scheme: str) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = contexts(color_scheme=scheme)
    page.goto(served.jobs)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == ("rgb(255, 255, 255)" if scheme == "light" else "rgb(13, 17, 23)")
    page.screenshot(path=str(ARTIFACTS / f"table-{scheme}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.goto(served.jobs + "/swap_request_processing")
    expect(page.locator("svg.chart")).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / f"job-{scheme}.png"))
    phone = contexts(color_scheme=scheme, viewport=PHONE, device_scale_factor=2, is_mobile=True)
    phone.goto(served.jobs)
    # Each job is a card as wide as the screen; nothing is wider than the screen.
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]
    card = phone.locator("#rows tr[data-name]").first.bounding_box()
    assert card is not None
    assert card["width"] > PHONE["width"] * 0.8
    phone.screenshot(path=str(ARTIFACTS / f"phone-{scheme}.png"))
    phone.goto(served.jobs + "/swap_request_processing")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone.screenshot(path=str(ARTIFACTS / f"phone-job-{scheme}.png"))


def test_a_thousand_jobs_render_in_time(contexts: Callable[..., Page]) -> None:
    """A generous bound: benchmarks/status_page.py measures it against the 1 s target."""
    monitor = JobMonitor(TracerProvider(shutdown_on_exit=False), max_jobs=1000)
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    for index in range(1000):
        name = f"job_{index:04d}"
        monitor.register(name, critical=index % 10 == 0)
        for run in range(3):
            began = start + timedelta(minutes=run)
            monitor.record_run(name, start=began, end=began + timedelta(seconds=index % 7))
    try:
        with serve(monitor) as where:
            page = contexts()
            page.goto(where.jobs)
            timing = page.evaluate(
                """() => {
                    const nav = performance.getEntriesByType("navigation")[0];
                    return {
                        rows: document.querySelectorAll("#rows tr[data-name]").length,
                        firstRender: nav.domContentLoadedEventEnd - nav.responseStart,
                    };
                }"""
            )
    finally:
        monitor.shutdown()
    assert timing["rows"] == 1000
    assert timing["firstRender"] < 5000
