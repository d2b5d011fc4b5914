"""Starlette routes for the health view and the Prometheus metrics (extra ``starlette``).

::

    from jobpulse.starlette import routes
    app = Starlette(routes=routes(monitor), lifespan=lifespan(monitor))
    # or Mount("/ops", routes=routes(monitor))
    fastapi_app.router.routes.extend(routes(monitor))

- ``GET /api/v1/health/jobs``: the health document; 200 healthy, 206 degraded,
  503 unhealthy.
- ``GET /api/v1/health/jobs/{name}``: one job, its health and its recent runs; 404 for an
  unknown job. ``?limit=N`` sets how many runs (default 100).
- ``GET /metrics``: the Prometheus exposition (OpenMetrics when the scraper asks for it).

``lifespan(monitor)`` shuts the monitor down when the server stops (uvicorn skips
``atexit`` on SIGTERM).

None of them needs authentication, so none shows a stack trace or a secret: errors are
redacted when recorded, and a failure inside jobpulse answers a bare 500.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

try:
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute, Route
except ImportError:
    raise ImportError(
        "jobpulse.starlette needs Starlette: pip install 'jobpulse[starlette]'"
    ) from None

from jobpulse._guard import report_internal_error
from jobpulse._health import evaluate
from jobpulse._model import dump_json, from_ns, rfc3339
from jobpulse._monitor import JobMonitor

__all__ = ["HEALTH_PATH", "METRICS_PATH", "lifespan", "routes"]

HEALTH_PATH = "/api/v1/health/jobs"
METRICS_PATH = "/metrics"
DEFAULT_HISTORY_LIMIT = 100

# A health answer must never be served stale by a proxy or a browser cache.
_HEADERS = {"Cache-Control": "no-store"}
_JSON = "application/json"


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
    result: list[BaseRoute] = [
        Route(HEALTH_PATH, _health_endpoint(monitor), methods=["GET"], name="jobpulse_health"),
        Route(
            HEALTH_PATH + "/{name:path}",
            _job_endpoint(monitor),
            methods=["GET"],
            name="jobpulse_job",
        ),
    ]
    if metrics:
        result.append(
            Route(
                METRICS_PATH,
                _metrics_endpoint(_registry(monitor, registry)),
                methods=["GET"],
                name="jobpulse_metrics",
            )
        )
    return result


def _registry(monitor: JobMonitor, registry: Any) -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(
            "serving /metrics needs prometheus_client: pip install 'jobpulse[prometheus]' "
            "(or pass metrics=False)"
        ) from None
    if registry is not None:
        return registry
    if monitor._prometheus_registry is not None:
        return monitor._prometheus_registry
    return prometheus_client.REGISTRY


def _json_response(content: Any, status_code: int) -> Response:
    return Response(dump_json(content), status_code=status_code, media_type=_JSON, headers=_HEADERS)


def _internal_error(where: str, exc: Exception) -> Response:
    report_internal_error(where, exc)
    return _json_response({"error": "internal error"}, 500)


class _PartsResponse(Response):
    """A JSON response sent as its parts, one body message each: the jobs part of the
    health document (about 870 bytes a job) is sent as it is cached, never copied."""

    def __init__(self, parts: list[bytes], status_code: int) -> None:
        length = str(sum(map(len, parts)))
        super().__init__(
            None, status_code, headers={**_HEADERS, "Content-Length": length}, media_type=_JSON
        )
        self._parts = parts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self._parts) - 1
        for index, part in enumerate(self._parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < last})


def _health_endpoint(monitor: JobMonitor) -> Callable[[Request], Awaitable[Response]]:
    async def health(request: Request) -> Response:
        try:
            status, parts = monitor._health_parts()
        except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
            return _internal_error("health endpoint", exc)
        return _PartsResponse(parts, status.http_status)

    return health


def _job_endpoint(monitor: JobMonitor) -> Callable[[Request], Awaitable[Response]]:
    async def job(request: Request) -> Response:
        name = request.path_params["name"]
        limit_text = request.query_params.get("limit", str(DEFAULT_HISTORY_LIMIT))
        if not limit_text.isdigit():
            return _json_response({"error": "limit must be an integer >= 0"}, 400)
        try:
            status = monitor.status(name)
            if status is None:
                return _json_response({"error": "job not found", "job_name": name}, 404)
            health = evaluate({name: status})
            history = monitor.history(name)[: int(limit_text)]
            content = {
                "status": health.value,
                "timestamp": rfc3339(from_ns(monitor._clock.time_ns())),
                "job": status.to_dict(),
                "history": [record.to_dict() for record in history],
            }
        except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
            return _internal_error("job endpoint", exc)
        return _json_response(content, health.http_status)

    return job


def _metrics_endpoint(registry: Any) -> Callable[[Request], Awaitable[Response]]:
    from prometheus_client.exposition import choose_encoder

    def exposition(accept: str, gzipped: bool) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        body: bytes = encoder(registry)
        return (gzip.compress(body, compresslevel=1) if gzipped else body), content_type

    async def metrics(request: Request) -> Response:
        # Prometheus asks for gzip; a scrape of many series shrinks about tenfold.
        gzipped = "gzip" in request.headers.get("accept-encoding", "")
        try:
            body, content_type = await run_in_threadpool(
                exposition, request.headers.get("accept", ""), gzipped
            )
        except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
            return _internal_error("metrics endpoint", exc)
        headers = {**_HEADERS, "Content-Encoding": "gzip"} if gzipped else _HEADERS
        return Response(body, media_type=content_type, headers=headers)

    return metrics


def lifespan(monitor: JobMonitor) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A Starlette ``lifespan`` that shuts `monitor` down when the server stops.

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
