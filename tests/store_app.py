"""Processes that share one store, for tests/test_store_processes.py.

Every monitor here is ``JobMonitor(store=STORE_APP_URL, flush_interval=...,
instance_ttl=...)``, read from the environment (`URL_VARIABLE`, `FLUSH_VARIABLE`,
`TTL_VARIABLE`), with no OpenTelemetry exporter. Served apps answer with an ``x-pid``
header naming the process that answered.

Served by uvicorn (``python -m uvicorn --factory tests.store_app:NAME``):

- `worker_app`: jobpulse's routes; at startup each process takes the first free role of
  ``a`` and ``b`` (a file created in ``$STORE_APP_ROLES``) and runs that role's jobs
  (`WORKER_RUNS`) on a thread of its own, then flushes. Meant for ``--workers 2``.
- `server_app`: jobpulse's routes, no jobs, and ``POST /hold/{name}``: starts a run of
  `name` that blocks until the process ends, flushes, and answers
  ``{"pid": ..., "flushed": true}``.

Run as scripts (``python -m tests.store_app COMMAND``), each printing one JSON line:

- ``write NAME:SUCCESSES:FAILURES ...``: runs the jobs (failures first), shuts the monitor
  down (which writes what is left) and prints ``{"pid": ...}``;
- ``read``: prints ``{"pid": ..., "document": <health document>}``, having run nothing;
- ``deploy-before``: `CRITICAL_JOB` (critical, failure_threshold 3) fails twice and
  `SCHEDULED_JOB` (every `EVERY_SECONDS`, grace `GRACE_SECONDS`) runs once; prints
  ``{"pid": ..., "flushed": ..., "document": ...}`` (after a flush) and shuts down;
- ``deploy-after``: prints ``{"pid": ..., "before": <document before anything ran>,
  "registered": <document once both jobs are registered again and flushed>, "after":
  <document after one more failure of CRITICAL_JOB and a flush>, "flushed": ...}`` with
  the HTTP status of the first and last (``before_code``, ``after_code``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobpulse import JobMonitor
from jobpulse.starlette import routes

__all__ = [
    "CRITICAL_JOB",
    "EVERY_SECONDS",
    "FLUSH_VARIABLE",
    "GRACE_SECONDS",
    "PID_HEADER",
    "ROLES_VARIABLE",
    "SCHEDULED_JOB",
    "TTL_VARIABLE",
    "URL_VARIABLE",
    "WORKER_RUNS",
    "main",
    "server_app",
    "worker_app",
]

URL_VARIABLE = "STORE_APP_URL"
FLUSH_VARIABLE = "STORE_APP_FLUSH_INTERVAL"
TTL_VARIABLE = "STORE_APP_INSTANCE_TTL"
ROLES_VARIABLE = "STORE_APP_ROLES"
PID_HEADER = "x-pid"
FLUSH_TIMEOUT_SECONDS = 10.0

#: role -> [(job, critical, successes, failures)]; a role's failures run before its successes.
WORKER_RUNS: Mapping[str, list[tuple[str, bool, int, int]]] = {
    "a": [("sync", False, 3, 1), ("import", True, 0, 1)],
    "b": [("sync", False, 3, 1), ("report", False, 2, 0)],
}

CRITICAL_JOB = "billing"
SCHEDULED_JOB = "hourly"
EVERY_SECONDS = 4.0
GRACE_SECONDS = 0.5


class JobFailure(Exception):
    """What a failing run raises."""


def make_monitor() -> JobMonitor:
    return JobMonitor(
        store=os.environ[URL_VARIABLE],
        flush_interval=float(os.environ[FLUSH_VARIABLE]),
        instance_ttl=float(os.environ[TTL_VARIABLE]),
    )


def run_job(monitor: JobMonitor, name: str, successes: int, failures: int) -> None:
    for _ in range(failures):
        try:
            with monitor.run(name):
                raise JobFailure(f"{name} failed on purpose")
        except JobFailure:
            pass
    for _ in range(successes):
        with monitor.run(name):
            pass


def document_of(monitor: JobMonitor) -> Any:
    return json.loads(monitor.health_json()[1])


def code_of(monitor: JobMonitor) -> int:
    """The HTTP status the health route would answer with."""
    return monitor.health_json()[0].http_status


class PidHeader:
    """Adds ``x-pid: <this process's pid>`` to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (PID_HEADER.encode(), b"%d" % os.getpid())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_pid)


def _take_role() -> str:
    folder = Path(os.environ[ROLES_VARIABLE])
    for role in WORKER_RUNS:
        try:
            descriptor = os.open(folder / role, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(descriptor, b"%d" % os.getpid())
        os.close(descriptor)
        return role
    raise RuntimeError(f"every role in {folder} is taken")


def worker_app() -> ASGIApp:
    """See the module docstring."""
    monitor = make_monitor()

    def work() -> None:
        for name, critical, successes, failures in WORKER_RUNS[_take_role()]:
            monitor.register(name, critical=critical)
            run_job(monitor, name, successes, failures)
        monitor.flush(FLUSH_TIMEOUT_SECONDS)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker = threading.Thread(target=work, name="store-app-jobs")
        worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(worker.join)
            monitor.shutdown()

    return PidHeader(Starlette(routes=routes(monitor), lifespan=lifespan))


def server_app() -> ASGIApp:
    """See the module docstring."""
    monitor = make_monitor()
    forever = threading.Event()  # never set: a held run ends with its process

    def hold(name: str) -> bool:
        started = threading.Event()

        def target() -> None:
            with monitor.run(name):
                started.set()
                forever.wait()

        threading.Thread(target=target, name=f"store-app-hold-{name}", daemon=True).start()
        started.wait()
        return monitor.flush(FLUSH_TIMEOUT_SECONDS)

    async def hold_route(request: Request) -> JSONResponse:
        flushed = await run_in_threadpool(hold, request.path_params["name"])
        return JSONResponse({"pid": os.getpid(), "flushed": flushed})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            monitor.shutdown()

    app = Starlette(
        routes=[*routes(monitor), Route("/hold/{name}", hold_route, methods=["POST"])],
        lifespan=lifespan,
    )
    return PidHeader(app)


@contextmanager
def monitor_of_script() -> Iterator[JobMonitor]:
    monitor = make_monitor()
    try:
        yield monitor
    finally:
        monitor.shutdown()


def _write(specs: list[str]) -> dict[str, Any]:
    with monitor_of_script() as monitor:
        for spec in specs:
            name, successes, failures = spec.split(":")
            run_job(monitor, name, int(successes), int(failures))
    return {"pid": os.getpid()}


def _read() -> dict[str, Any]:
    with monitor_of_script() as monitor:
        return {"pid": os.getpid(), "document": document_of(monitor)}


def _deploy_before() -> dict[str, Any]:
    with monitor_of_script() as monitor:
        monitor.register(CRITICAL_JOB, critical=True, failure_threshold=3)
        run_job(monitor, CRITICAL_JOB, 0, 2)
        monitor.register(SCHEDULED_JOB, schedule=f"@every {EVERY_SECONDS:g}s", grace=GRACE_SECONDS)
        run_job(monitor, SCHEDULED_JOB, 1, 0)
        # The view is the store's: what this process did shows once it is written.
        flushed = monitor.flush(FLUSH_TIMEOUT_SECONDS)
        return {"pid": os.getpid(), "flushed": flushed, "document": document_of(monitor)}


def _deploy_after() -> dict[str, Any]:
    with monitor_of_script() as monitor:
        before, before_code = document_of(monitor), code_of(monitor)
        # What the application registers at its start, as the first process did.
        monitor.register(CRITICAL_JOB, critical=True, failure_threshold=3)
        monitor.register(SCHEDULED_JOB, schedule=f"@every {EVERY_SECONDS:g}s", grace=GRACE_SECONDS)
        registered_flush = monitor.flush(FLUSH_TIMEOUT_SECONDS)
        registered = document_of(monitor)
        run_job(monitor, CRITICAL_JOB, 0, 1)
        flushed = monitor.flush(FLUSH_TIMEOUT_SECONDS)
        after, after_code = document_of(monitor), code_of(monitor)
        return {
            "pid": os.getpid(),
            "before": before,
            "before_code": before_code,
            "registered": registered if registered_flush else None,
            "flushed": flushed,
            "after": after,
            "after_code": after_code,
        }


def main(argv: list[str]) -> None:
    command, *arguments = argv
    if command == "write":
        report = _write(arguments)
    elif command == "read":
        report = _read()
    elif command == "deploy-before":
        report = _deploy_before()
    elif command == "deploy-after":
        report = _deploy_after()
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
