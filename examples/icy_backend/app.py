"""The demo service: jobpulse setup, the jobs on a scheduler, the HTTP server, clean stops.

One asyncio loop owns everything: uvicorn serves the Starlette app, whose lifespan starts
the scheduler (APScheduler's ``AsyncIOScheduler``, monitored by jobpulse's integration) and a
task that logs each change of the overall health, and stops them when the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette

import jobpulse
from jobpulse import HealthStatus, JobMonitor, JobState
from jobpulse.starlette import HEALTH_PATH, METRICS_PATH, routes

from .jobs import JOB_NAMES, STALLING_JOB, create_jobs
from .scheduler import start_scheduler, stop_scheduler
from .settings import DEFAULT_STORE_PATH, STORE_VARIABLE, DemoSettings, SettingsError

__all__ = ["build_app", "main"]

SERVICE_NAME = "icy-backend"
NAMESPACE = "icy_backend"

logger = logging.getLogger("icy_backend")


def build_app(monitor: JobMonitor, settings: DemoSettings) -> Starlette:
    """The service's app: the jobpulse routes, with the jobs running while it is served."""
    jobs = create_jobs(monitor, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scheduler = start_scheduler(monitor, jobs, settings.index_interval_seconds)
        health_log = asyncio.create_task(_log_health_changes(monitor), name="health-log")
        try:
            yield
        finally:
            health_log.cancel()
            await stop_scheduler(scheduler, monitor)
            with contextlib.suppress(asyncio.CancelledError):
                await health_log
            logger.info("jobs stopped")

    return Starlette(routes=routes(monitor, status_page=True), lifespan=lifespan)


async def _log_health_changes(monitor: JobMonitor, period_seconds: float = 0.5) -> None:
    previous: HealthStatus | None = None
    while True:
        report = monitor.health()
        if report.status is not previous:
            previous = report.status
            troubled = [
                f"{name} {status.state.value}"
                for name, status in report.jobs.items()
                if status.state in (JobState.FAILED, JobState.STALLED, JobState.MISSED)
            ]
            logger.info(
                "health is now %s (HTTP %d)%s",
                report.status.value,
                report.http_status,
                ": " + ", ".join(troubled) if troubled else "",
            )
        await asyncio.sleep(period_seconds)


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_listening` with its base URL once it listens."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[str], None]) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_listening(f"http://{f'[{host}]' if ':' in host else host}:{port}")


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is under it (as `make demo` runs)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _store_lines(settings: DemoSettings, opened: bool) -> tuple[str, ...]:
    if settings.store is None:
        return (f"  store:    none ({STORE_VARIABLE} is empty): this process's view only",)
    if settings.store_from_environment:
        return (
            f"  store:    {jobpulse.redact(settings.store)} (from {STORE_VARIABLE}): history "
            "and counts survive a restart",
        )
    if not opened:
        return (
            f"  store:    none: {_shown(DEFAULT_STORE_PATH)} cannot be opened (see the log); "
            "this process's view only",
        )
    folder = _shown(DEFAULT_STORE_PATH.parent)
    return (
        f"  store:    {_shown(DEFAULT_STORE_PATH)} (SQLite): history and counts survive a restart",
        f"            start fresh: rm -rf {folder}   no store: {STORE_VARIABLE}= make demo",
    )


def _banner(settings: DemoSettings, base_url: str, *, store_opened: bool) -> str:
    if settings.otlp_endpoint is not None:
        spans = f"exported over OTLP to {settings.otlp_endpoint}"
    elif settings.console_spans:
        spans = "printed to stdout as JSON (DEMO_CONSOLE_SPANS=0 turns that off)"
    else:
        spans = "not exported (DEMO_CONSOLE_SPANS=0)"
    stalls = (
        f"1 in {settings.stall_every} runs of {STALLING_JOB} hangs"
        f" for {settings.stall_seconds:g}s (stall_after {settings.stall_after_seconds:g}s)"
        if settings.stall_every
        else "no stalls (DEMO_STALL_EVERY=0)"
    )
    return "\n".join(
        (
            f"{SERVICE_NAME} demo ready: {len(JOB_NAMES)} jobs {settings.schedule}, "
            f"{settings.failure_rate:.0%} of runs fail, {stalls}; seed {settings.seed}",
            f"  page:     {base_url}/jobs",
            f"  health:   {base_url}{HEALTH_PATH}",
            f"  one job:  {base_url}{HEALTH_PATH}/{JOB_NAMES[0]}",
            f"  metrics:  {base_url}{METRICS_PATH}",
            f"  spans:    {spans}",
            *_store_lines(settings, store_opened),
            "  stop:     Ctrl-C (or SIGTERM)",
        )
    )


def _stop_on_signals(server: uvicorn.Server) -> None:
    # uvicorn swaps in its own SIGINT/SIGTERM handlers while it serves and, once stopped,
    # raises the signal again for the handlers it found. Found ones that only ask the server
    # to exit turn that into a no-op instead of a KeyboardInterrupt traceback or a kill.
    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def _setup(settings: DemoSettings) -> tuple[JobMonitor, bool]:
    """`jobpulse.setup()` with the demo's store, and whether a store was opened. A store
    named by ``JOBPULSE_STORE`` that cannot be opened raises `jobpulse.StoreError`; the
    demo's default one (in a read-only checkout, say) is left out, with a warning."""
    console = settings.console_spans and settings.otlp_endpoint is None
    try:
        monitor = jobpulse.setup(
            SERVICE_NAME, namespace=NAMESPACE, console=console, store=settings.store
        )
        return monitor, settings.store is not None
    except jobpulse.StoreError as exc:
        if settings.store_from_environment:
            raise
        logger.warning("%s; running without a store", exc)
    # The setup() that failed set nothing global (and JOBPULSE_STORE is unset): start afresh.
    return jobpulse.setup(SERVICE_NAME, namespace=NAMESPACE, console=console), False


def main() -> int:
    """Run the demo until SIGINT or SIGTERM. Returns the exit code: 0 after a clean stop,
    2 for a bad setting, uvicorn's 3 if the server could not start (the port is taken)."""
    try:
        settings = DemoSettings.from_environ()
    except SettingsError as exc:
        print(f"{SERVICE_NAME} demo: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # jobpulse logs each failed run once, redacted and without a traceback: APScheduler's
    # executor would log it again with its traceback, and its INFO lines every run.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.executors").setLevel(logging.CRITICAL)
    try:
        monitor, store_opened = _setup(settings)
    except jobpulse.StoreError as exc:
        print(f"{SERVICE_NAME} demo: {exc}", file=sys.stderr)
        return 2
    try:
        config = uvicorn.Config(
            build_app(monitor, settings),
            host=settings.host,
            port=settings.port,
            log_config=None,  # uvicorn's records go to the root logger, in the format above
            log_level="info",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        server = _Server(
            config,
            lambda url: print(_banner(settings, url, store_opened=store_opened), flush=True),
        )
        _stop_on_signals(server)
        asyncio.run(server.serve())
    except SystemExit as exc:  # uvicorn exits this way when it cannot start
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        monitor.shutdown()
    logger.info("stopped")
    return 0
