"""An application monitored by jobpulse, driven over HTTP by the end-to-end tests.

Run as ``python tests/e2e_app.py PORT [--namespace NAMESPACE]`` (or ``python -m
tests.e2e_app ...``); PORT 0 picks a free port. Its metrics are named ``NAMESPACE_...``
(default ``e2e``; ``icy_backend`` makes them the demo's, for the rules and the dashboard of
collector-config/). Once uvicorn accepts connections on 127.0.0.1 it prints one line,
``e2e_app ready http://127.0.0.1:PORT``, to stdout.

Besides jobpulse's routes (health, ``/metrics``) it serves control routes that drive jobs
deterministically; each answers once what it asked for has happened:

- ``POST /register/{name}?critical=1&schedule=@every%201s``: ``monitor.register(name,
  critical=..., schedule=...)``; a parameter left out leaves that setting as it is, and
  ``critical`` is ``1`` or ``0``;
- ``POST /run/{name}?fail=1``: one run of job `name` (failing with ``fail=1``);
- ``POST /stall/{name}``: starts a run that blocks until ``POST /release/{name}``, which
  answers when the run has finished. Job `STALLING_JOB` stalls after 1 s; other jobs use
  the default ``stall_after``;
- ``POST /pending/{kind}?count=N``: ``monitor.set_pending(kind, N)``.

A bad job name, setting or count answers 400 with jobpulse's message.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import jobpulse
from jobpulse.starlette import routes

__all__ = [
    "DEFAULT_NAMESPACE",
    "READY_PREFIX",
    "STALLING_JOB",
    "StallingRuns",
    "create_app",
    "main",
]

STALLING_JOB = "e2e_stuck"
STALL_AFTER_SECONDS = 1.0
READY_PREFIX = "e2e_app ready "
DEFAULT_NAMESPACE = "e2e"


class JobFailure(Exception):
    """What a job run with ``fail=1`` raises."""


class StallingRuns:
    """Runs started by ``/stall`` that block, each on its own daemon thread, until
    released. One at a time per job name. Thread-safe."""

    def __init__(self, monitor: jobpulse.JobMonitor) -> None:
        self._monitor = monitor
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[threading.Thread, threading.Event]] = {}

    def start(self, name: str) -> bool:
        """Start a blocked run of `name` and return once it has started; False if one is
        already blocked. Raises what `JobMonitor.run` raises for a bad name."""
        run = self._monitor.run(name)
        started = threading.Event()
        release = threading.Event()

        def target() -> None:
            try:
                with run:
                    started.set()
                    release.wait()
            finally:
                started.set()  # never leave start() waiting, whatever happened

        thread = threading.Thread(target=target, name=f"e2e-stall-{name}", daemon=True)
        with self._lock:
            if name in self._runs:
                return False
            self._runs[name] = (thread, release)
        thread.start()
        started.wait()
        return True

    def release(self, name: str) -> bool:
        """Let the blocked run of `name` finish and wait for it; False if none is blocked."""
        with self._lock:
            entry = self._runs.pop(name, None)
        if entry is None:
            return False
        thread, release = entry
        release.set()
        thread.join()
        return True

    def release_all(self) -> None:
        with self._lock:
            names = list(self._runs)
        for name in names:
            self.release(name)


def _bad_request(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


def create_app(monitor: jobpulse.JobMonitor) -> Starlette:
    """jobpulse's routes for `monitor` and the control routes described above. The app
    shuts `monitor` down when it stops."""
    stalling = StallingRuns(monitor)

    async def register(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        critical_text = request.query_params.get("critical")
        if critical_text not in (None, "0", "1"):
            return JSONResponse({"error": "critical must be 1 or 0"}, status_code=400)
        critical = None if critical_text is None else critical_text == "1"
        schedule = request.query_params.get("schedule")
        try:
            monitor.register(name, critical=critical, schedule=schedule)
        except jobpulse.InvalidJobError as exc:
            return _bad_request(exc)
        status = monitor.status(name)
        assert status is not None  # just registered, and jobs are never removed here
        return JSONResponse(
            {"job_name": name, "critical": status.critical, "schedule": status.schedule}
        )

    async def run_job(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        fail = request.query_params.get("fail") == "1"
        try:
            job = monitor.run(name)
        except jobpulse.InvalidJobError as exc:
            return _bad_request(exc)
        try:
            with job:
                if fail:
                    raise JobFailure(f"{name} failed on request")
        except JobFailure:
            return JSONResponse({"job_name": name, "status": "failed"})
        return JSONResponse({"job_name": name, "status": "success"})

    async def stall(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        try:
            started = await run_in_threadpool(stalling.start, name)
        except jobpulse.InvalidJobError as exc:
            return _bad_request(exc)
        if not started:
            return JSONResponse({"error": f"{name} is already stalling"}, status_code=409)
        return JSONResponse({"job_name": name, "status": "running"}, status_code=202)

    async def release(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if not await run_in_threadpool(stalling.release, name):
            return JSONResponse({"error": f"{name} is not stalling"}, status_code=404)
        return JSONResponse({"job_name": name, "status": "released"})

    async def pending(request: Request) -> JSONResponse:
        kind = request.path_params["kind"]
        count_text = request.query_params.get("count", "")
        if not count_text.isdigit():
            return JSONResponse({"error": "count must be an integer >= 0"}, status_code=400)
        try:
            monitor.set_pending(kind, int(count_text))
        except jobpulse.InvalidJobError as exc:
            return _bad_request(exc)
        return JSONResponse({"kind": kind, "count": int(count_text)})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Blocked runs end (as successes) before the process does. The monitor is shut down
        # here, not left to atexit: on SIGTERM uvicorn re-raises the signal once it has
        # stopped, and the process dies without running atexit handlers.
        await run_in_threadpool(stalling.release_all)
        monitor.shutdown()

    return Starlette(
        routes=[
            *routes(monitor),
            Route("/register/{name}", register, methods=["POST"]),
            Route("/run/{name}", run_job, methods=["POST"]),
            Route("/stall/{name}", stall, methods=["POST"]),
            Route("/release/{name}", release, methods=["POST"]),
            Route("/pending/{kind}", pending, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


class _AnnouncingServer(uvicorn.Server):
    """Prints the ready line once the server accepts connections."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self._url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(READY_PREFIX + self._url, flush=True)


def _parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python tests/e2e_app.py")
    parser.add_argument("port", type=int, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help=f"prefix of the metric names (default {DEFAULT_NAMESPACE!r})",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    arguments = _parse_arguments(argv)
    monitor = jobpulse.setup(service_name="e2e", namespace=arguments.namespace, prometheus=True)
    monitor.register(STALLING_JOB, critical=True, stall_after=STALL_AFTER_SECONDS)
    # Bound here, not by uvicorn, so that port 0 works and the ready line names the port.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", arguments.port))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        create_app(monitor), log_level="warning", access_log=False, lifespan="on"
    )
    try:
        _AnnouncingServer(config, f"http://127.0.0.1:{port}").run(sockets=[listener])
    finally:
        listener.close()
        monitor.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
