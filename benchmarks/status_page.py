"""How fast the status page (``GET /jobs``) shows 1,000 jobs: in the server, and in Chromium.

Part 1, in process: the time to build and render the table page with `--jobs` jobs (default
1,000; half on a schedule, one in ten critical, each with 20 runs of history, some failed),
on the worker thread where the route renders it, in three situations:
  cold        the first request: every job's sparkline is drawn from its history
  steady      nothing changed since the last request
  churn       `--churn` jobs (default 35) finished a run since the last request
and the size of the page.

Part 2, in Chromium: the page served by uvicorn on 127.0.0.1 (a thread of this process) is
loaded `--loads` times (default 3) by Debian's headless Chromium driven by Playwright, each
in a fresh browser context, with the jobs churning between loads. From the Navigation Timing
and Paint Timing entries: the server's answer (requestStart to responseStart), and from the
first byte to the first contentful paint and to DOMContentLoaded (the whole table is in the
document: it is rendered on the server). Target: the first render, the later of the two,
under 1 s in every load; exit status 1 otherwise.

    python benchmarks/status_page.py [--jobs N] [--churn N] [--requests N] [--loads N]
        [--chromium PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import threading
import time
from typing import Any

import uvicorn
from health_endpoint import populated_monitor  # the same 1,000 jobs as that benchmark's
from starlette.applications import Starlette

from jobpulse import JobMonitor
from jobpulse._auth import Access
from jobpulse._page import Query, SparkCache, page_routes, render_table

TARGET_FIRST_RENDER_MS = 1000.0
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
_PAINTED = "() => performance.getEntriesByName('first-contentful-paint').length > 0"
_TIMING = """() => {
    const nav = performance.getEntriesByType("navigation")[0];
    const paint = performance.getEntriesByName("first-contentful-paint")[0];
    return {
        request: nav.requestStart, response: nav.responseStart, end: nav.responseEnd,
        dcl: nav.domContentLoadedEventEnd, fcp: paint.startTime,
        rows: document.querySelectorAll("#rows tr[data-name]").length,
        bytes: nav.transferSize, decoded: nav.decodedBodySize,
    };
}"""


def churn(monitor: JobMonitor, names: list[str], count: int, rng: random.Random) -> None:
    for name in rng.sample(names, min(count, len(names))):
        with monitor.run(name):
            pass


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def in_process(monitor: JobMonitor, names: list[str], churn_count: int, requests: int) -> int:
    """Print the server's milliseconds per page in each situation; return the page's bytes."""
    rng = random.Random(1)
    query = Query.parse({})

    def render(sparks: SparkCache) -> tuple[float, int]:
        started = time.perf_counter()
        page = render_table(monitor, query, "jobs/", sparks, nonce="benchmark", fragment=False)
        return (time.perf_counter() - started) * 1000.0, len(page.encode())

    cold = [render(SparkCache())[0] for _ in range(max(requests // 10, 3))]
    sparks = SparkCache()
    size = render(sparks)[1]
    steady = [render(sparks)[0] for _ in range(requests)]
    churned = []
    for _ in range(requests):
        churn(monitor, names, churn_count, rng)
        churned.append(render(sparks)[0])
    print(f"Part 1: the server, {len(names)} jobs, page of {size / 1e6:.2f} MB")
    for label, samples in (("cold", cold), ("steady", steady), ("churn", churned)):
        print(
            f"  {label:<8} p50 {statistics.median(samples):6.1f} ms   "
            f"p99 {percentile(samples, 0.99):6.1f} ms   ({len(samples)} renders)"
        )
    return size


class Server:
    """uvicorn serving `app` on 127.0.0.1, on a thread of its own."""

    def __init__(self, app: Starlette) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="uvicorn-benchmark", daemon=True)

    def _serve(self) -> None:
        async def main() -> None:
            task = asyncio.create_task(self.server.serve())
            while not self.server.started:  # uvicorn offers no startup event to wait on
                await asyncio.sleep(0.01)
            self.started.set()
            await task

        asyncio.run(main())

    def __enter__(self) -> str:
        self.thread.start()
        if not self.started.wait(30):
            raise RuntimeError("uvicorn did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def in_chromium(
    monitor: JobMonitor, names: list[str], churn_count: int, loads: int, chromium: str
) -> list[float]:
    """Load the page `loads` times; print the timings; return each first render in ms."""
    from playwright.sync_api import sync_playwright

    rng = random.Random(2)
    app = Starlette(routes=page_routes(monitor, Access(None), detail=False))
    first_renders = []
    print(f"Part 2: Chromium ({chromium}), {len(names)} jobs, {loads} loads")
    with Server(app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for load in range(loads):
                churn(monitor, names, churn_count, rng)
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                try:
                    page = context.new_page()
                    page.goto(base + "/jobs", wait_until="load")
                    # The paint entry may come after "load" (a small page loads at once).
                    page.wait_for_function(_PAINTED, timeout=30_000)
                    timing: dict[str, Any] = page.evaluate(_TIMING)
                finally:
                    context.close()
                if timing["rows"] != len(names):
                    raise RuntimeError(f"the page shows {timing['rows']} jobs, not {len(names)}")
                response = timing["response"]
                server_ms = response - timing["request"]
                fcp_ms = timing["fcp"] - response
                dcl_ms = timing["dcl"] - response
                first_render = max(fcp_ms, dcl_ms)
                first_renders.append(first_render)
                print(
                    f"  load {load + 1}: answer {server_ms:6.1f} ms "
                    f"({timing['bytes'] / 1e3:.0f} kB sent, {timing['decoded'] / 1e6:.2f} MB "
                    f"page); first byte to first contentful paint {fcp_ms:6.1f} ms, to "
                    f"DOMContentLoaded {dcl_ms:6.1f} ms: first render {first_render:6.1f} ms"
                )
        finally:
            browser.close()
    return first_renders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--churn", type=int, default=35)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args(argv)
    monitor, names = populated_monitor(args.jobs)
    try:
        in_process(monitor, names, args.churn, args.requests)
        renders = in_chromium(monitor, names, args.churn, args.loads, args.chromium)
    finally:
        monitor.shutdown()
    worst = max(renders)
    verdict = "ok" if worst < TARGET_FIRST_RENDER_MS else "FAILED"
    print(
        f"first render with {args.jobs} jobs: worst {worst:.0f} ms of {len(renders)} loads, "
        f"median {statistics.median(renders):.0f} ms; target under "
        f"{TARGET_FIRST_RENDER_MS:.0f} ms: {verdict}"
    )
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
