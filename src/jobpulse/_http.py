"""What the Starlette routes and the FastAPI router share: paths, limits and the answers.

Needs Starlette: imported only by `jobpulse.starlette` and `jobpulse.fastapi`, which say what
to install when it is missing. Every answer is JSON (``/metrics`` aside), ``Cache-Control:
no-store``, and never shows a stack trace or a secret: a failure inside jobpulse is reported
to the guard's hooks and answers a bare 500.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from jobpulse._guard import report_internal_error
from jobpulse._health import evaluate
from jobpulse._model import dump_json, from_ns, rfc3339
from jobpulse._monitor import JobMonitor

__all__ = [
    "ALLOWED_METHODS",
    "DEFAULT_HISTORY_LIMIT",
    "HEALTH_PATH",
    "MAX_HISTORY_LIMIT",
    "METRICS_PATH",
    "PartsResponse",
    "answer_method_not_allowed",
    "health_response",
    "internal_error",
    "job_response",
    "json_response",
    "method_not_allowed",
    "metrics_endpoint",
    "prometheus_registry",
]

HEALTH_PATH = "/api/v1/health/jobs"
METRICS_PATH = "/metrics"
DEFAULT_HISTORY_LIMIT = 100
#: The largest ``?limit=`` of the per-job route: it bounds the answer (about 100 bytes a run)
#: and the time spent building it on the event loop.
MAX_HISTORY_LIMIT = 10_000
#: Every jobpulse route is a GET route; HEAD answers the same headers without the body.
ALLOWED_METHODS = frozenset({"GET", "HEAD"})

# A health answer must never be served stale by a proxy or a browser cache.
_HEADERS = {"Cache-Control": "no-store"}
_JSON = "application/json"
# ASCII digits only ("²".isdigit() is True, and int() refuses it); five at most, so that
# int() never sees a long one.
_LIMIT = re.compile(r"[0-9]{1,5}")
_BAD_LIMIT = {"error": f"limit must be an integer from 0 to {MAX_HISTORY_LIMIT}"}


def json_response(
    content: Any, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        dump_json(content),
        status_code=status_code,
        media_type=_JSON,
        headers={**_HEADERS, **(headers or {})},
    )


def internal_error(where: str, exc: Exception) -> Response:
    report_internal_error(where, exc)
    return json_response({"error": "internal error"}, 500)


def method_not_allowed() -> Response:
    """``405 {"error": "method not allowed"}`` with ``Allow: GET, HEAD``."""
    return json_response(
        {"error": "method not allowed"}, 405, {"Allow": ", ".join(sorted(ALLOWED_METHODS))}
    )


async def answer_method_not_allowed(scope: Scope, receive: Receive, send: Send) -> bool:
    """Answer 405 (and return True) if `scope`'s method is not one jobpulse serves."""
    if scope["method"] in ALLOWED_METHODS:
        return False
    await method_not_allowed()(scope, receive, send)
    return True


class PartsResponse(Response):
    """A JSON response sent as its parts, one body message each: the jobs part of the
    health document (about 870 bytes a job) is sent as it is cached, never copied."""

    def __init__(self, parts: list[bytes], status_code: int) -> None:
        length = str(sum(map(len, parts)))
        super().__init__(
            None, status_code, headers={**_HEADERS, "Content-Length": length}, media_type=_JSON
        )
        self._parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self._parts) - 1
        for index, part in enumerate(self._parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < last})


def health_response(monitor: JobMonitor) -> Response:
    """The health document of every job; 200, 206 or 503 by the overall health."""
    try:
        status, parts = monitor._health_parts()
    except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
        return internal_error("health endpoint", exc)
    return PartsResponse(parts, status.http_status)


def job_response(monitor: JobMonitor, name: str, limit_text: str | None) -> Response:
    """One job's status, health and last `limit_text` runs (default 100); 404 for an unknown
    job, 400 for a limit that is not an integer from 0 to `MAX_HISTORY_LIMIT`. An empty
    `name` (the health path with a trailing slash) answers the health document."""
    if not name:  # no job has an empty name
        return health_response(monitor)
    if limit_text is None:
        limit = DEFAULT_HISTORY_LIMIT
    elif _LIMIT.fullmatch(limit_text) and int(limit_text) <= MAX_HISTORY_LIMIT:
        limit = int(limit_text)
    else:
        return json_response(_BAD_LIMIT, 400)
    try:
        status = monitor.status(name)
        if status is None:
            return json_response({"error": "job not found", "job_name": name}, 404)
        health = evaluate({name: status})
        history = monitor.history(name, limit)
        content = {
            "status": health.value,
            "timestamp": rfc3339(from_ns(monitor._clock.time_ns())),
            "job": status.to_dict(),
            "history": [record.to_dict() for record in history],
        }
    except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
        return internal_error("job endpoint", exc)
    return json_response(content, health.http_status)


def prometheus_registry(monitor: JobMonitor, registry: Any) -> Any:
    """`registry`, else the one `jobpulse.setup()` gave the monitor's reader, else
    prometheus_client's global registry. `ImportError` without prometheus_client."""
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


def metrics_endpoint(registry: Any) -> Callable[[Request], Awaitable[Response]]:
    """The ``/metrics`` handler: the exposition of `registry`, collected on a worker thread,
    in the format the scraper accepts, gzipped when it asks."""
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
            return internal_error("metrics endpoint", exc)
        headers = {**_HEADERS, "Content-Encoding": "gzip"} if gzipped else _HEADERS
        return Response(body, media_type=content_type, headers=headers)

    return metrics
