"""Starlette routes for the health view and the Prometheus metrics (extra ``starlette``).

::

    from jobpulse.starlette import lifespan, routes
    app = Starlette(routes=routes(monitor), lifespan=lifespan(monitor))
    # or Mount("/ops", routes=routes(monitor)); FastAPI: see jobpulse.fastapi

- ``GET /api/v1/health/jobs`` (also with a trailing slash): the health document; 200
  healthy, 206 degraded, 503 unhealthy.
- ``GET /api/v1/health/jobs/{name}``: one job, its health and its recent runs; 404 for an
  unknown job. ``?limit=N`` sets how many runs: an integer from 0 to 10,000 (default 100),
  else 400.
- ``GET /metrics``: the Prometheus exposition (OpenMetrics when the scraper asks for it).

Every route answers GET and HEAD; another method gets ``405 {"error": "method not
allowed"}`` with ``Allow: GET, HEAD``. Errors are JSON, like the documents.

``lifespan(monitor)`` shuts the monitor down when the server stops (uvicorn skips
``atexit`` on SIGTERM).

None of them needs authentication, so none shows a stack trace or a secret: errors are
redacted when recorded, and a failure inside jobpulse answers a bare 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

try:
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute, Route
    from starlette.types import Receive, Scope, Send
except ImportError:
    raise ImportError(
        "jobpulse.starlette needs Starlette: pip install 'jobpulse[starlette]'"
    ) from None

from jobpulse._http import (
    DEFAULT_HISTORY_LIMIT,
    HEALTH_PATH,
    MAX_HISTORY_LIMIT,
    METRICS_PATH,
    answer_method_not_allowed,
    health_response,
    job_response,
    metrics_endpoint,
    prometheus_registry,
)
from jobpulse._monitor import JobMonitor

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "HEALTH_PATH",
    "MAX_HISTORY_LIMIT",
    "METRICS_PATH",
    "lifespan",
    "routes",
]


class _Route(Route):
    """A GET route whose 405 answer is JSON, like every other answer of jobpulse's."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette's own 405 is plain text, or its app's exception handler's format.
        if not await answer_method_not_allowed(scope, receive, send):
            await super().handle(scope, receive, send)


def routes(
    monitor: JobMonitor,
    *,
    registry: Any = None,
    metrics: bool = True,
) -> list[BaseRoute]:
    """The health routes, and ``/metrics`` unless `metrics` is False.

    `registry`: the prometheus_client ``CollectorRegistry`` that ``/metrics`` serves. None
    uses the one `jobpulse.setup()` gave the monitor's Prometheus reader, else
    prometheus_client's global registry. Serving metrics needs ``jobpulse[prometheus]``.

    The handlers run on the event loop and take well under a millisecond for a few
    hundred jobs; ``/metrics`` is collected on a worker thread.
    """

    async def health(request: Request) -> Response:
        return health_response(monitor)

    async def job(request: Request) -> Response:
        name: str = request.path_params["name"]
        return job_response(monitor, name, request.query_params.get("limit"))

    result: list[BaseRoute] = [
        _Route(HEALTH_PATH, health, methods=["GET"], name="jobpulse_health"),
        # {name:path} also takes "", the trailing-slash form of the health path.
        _Route(HEALTH_PATH + "/{name:path}", job, methods=["GET"], name="jobpulse_job"),
    ]
    if metrics:
        endpoint = metrics_endpoint(prometheus_registry(monitor, registry))
        result.append(_Route(METRICS_PATH, endpoint, methods=["GET"], name="jobpulse_metrics"))
    return result


def lifespan(monitor: JobMonitor) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A Starlette (or FastAPI) ``lifespan`` that shuts `monitor` down when the server stops.

    uvicorn stops on SIGTERM and then re-raises the signal, so ``atexit`` handlers never run
    and the spans and metrics still buffered would be lost: shut the monitor down in the
    application's lifespan instead. ``Starlette(routes=..., lifespan=lifespan(monitor))``;
    an application with its own lifespan calls ``monitor.shutdown()`` at the end of it.
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            # It may wait for exporters (up to setup()'s shutdown_timeout): not on the loop.
            await run_in_threadpool(monitor.shutdown)

    return run
