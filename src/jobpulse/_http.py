"""What the Starlette routes and the FastAPI router share: paths, limits and the answers.

Needs Starlette: imported only by `jobpulse.starlette` and `jobpulse.fastapi`, which say what
to install when it is missing. Every answer is JSON (``/metrics`` and the badges aside) and
never shows a stack trace or a secret: a failure inside jobpulse is reported to the guard's
hooks and answers a bare 500. The health document and the badges carry an entity tag and
``Cache-Control: no-cache``; every other answer ``no-store``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.util
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from jobpulse._auth import Access
from jobpulse._badge import badge_svg, badge_tag
from jobpulse._guard import report_internal_error
from jobpulse._health import FULL, Selection, Variant, evaluate
from jobpulse._model import JobState, dump_json, from_ns, rfc3339
from jobpulse._monitor import JobMonitor

__all__ = [
    "ALLOWED_METHODS",
    "BADGE",
    "DEFAULT_HISTORY_LIMIT",
    "HEALTH_PATH",
    "JOB_STATES",
    "MAX_HISTORY_LIMIT",
    "METRICS_PATH",
    "Endpoints",
    "PartsResponse",
    "answer_method_not_allowed",
    "etag_matches",
    "health_query",
    "internal_error",
    "job_response",
    "json_response",
    "method_not_allowed",
    "metrics_endpoint",
    "prometheus_registry",
    "status_page_routes",
]

HEALTH_PATH = "/api/v1/health/jobs"
METRICS_PATH = "/metrics"
#: The last segment of a badge's path: ``HEALTH_PATH/badge.svg`` (the overall health) and
#: ``HEALTH_PATH/{name}/badge.svg`` (one job's state).
BADGE = "badge.svg"
DEFAULT_HISTORY_LIMIT = 100
#: The largest ``?limit=`` of the per-job route: it bounds the answer (about 100 bytes a run)
#: and the time spent building it on the event loop.
MAX_HISTORY_LIMIT = 10_000
#: Every jobpulse route is a GET route; HEAD answers the same headers without the body.
ALLOWED_METHODS = frozenset({"GET", "HEAD"})
#: What ``?state=`` takes, in the order of the states' life.
JOB_STATES = tuple(state.value for state in JobState)

# An error, a job's detail or the metrics must never be served stale by a proxy or a
# browser cache: they are not stored at all.
_HEADERS = {"Cache-Control": "no-store"}
# The health document and the badges may be stored, but only to be revalidated before each
# use (no-store would keep a browser from ever sending If-None-Match): a cache answers
# from what it holds only after jobpulse said 304, that is, while nothing changed.
_REVALIDATE = "no-cache"
_JSON = "application/json"
_SVG = "image/svg+xml"
# A badge is an image: nothing in it may run or load, even opened on its own.
_BADGE_HEADERS = {
    "Cache-Control": _REVALIDATE,
    "Content-Security-Policy": "default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
# ASCII digits only ("²".isdigit() is True, and int() refuses it); five at most, so that
# int() never sees a long one.
_LIMIT = re.compile(r"[0-9]{1,5}")
_BAD_LIMIT = {"error": f"limit must be an integer from 0 to {MAX_HISTORY_LIMIT}"}
_BAD_CRITICAL = {"error": "critical must be true or false"}
_BAD_PRETTY = {"error": "pretty must be 1, true, 0 or false (or empty: 1)"}
_STATE_SET = frozenset(JOB_STATES)
_PRETTY = {"": True, "1": True, "true": True, "0": False, "false": False}
_CRITICAL = {"true": True, "false": False}
# The opaque tags of an If-None-Match field ('W/' is ignored: the comparison is weak).
_OPAQUE_TAG = re.compile(r'"[^"]*"')
# A value quoted back in an error is cut to this many characters.
_ECHO = 100


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

    def __init__(
        self, parts: list[bytes], status_code: int, headers: dict[str, str] | None = None
    ) -> None:
        length = str(sum(map(len, parts)))
        super().__init__(
            None,
            status_code,
            headers={**_HEADERS, **(headers or {}), "Content-Length": length},
            media_type=_JSON,
        )
        self._parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self._parts) - 1
        for index, part in enumerate(self._parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < last})


def etag_matches(headers: Headers, etag: str) -> bool:
    """Whether the request's ``If-None-Match`` matches `etag` (RFC 9110, 13.1.2): ``*``, or
    a list of entity tags one of which is `etag` by the weak comparison (``W/`` aside, the
    same opaque tag). A malformed field matches nothing."""
    fields = headers.getlist("if-none-match")
    if not fields:
        return False
    opaque = etag.removeprefix("W/")
    return any(
        field.strip() == "*" or (opaque in field and opaque in _OPAQUE_TAG.findall(field))
        for field in fields
    )


def _not_modified(etag: str, headers: dict[str, str]) -> Response:
    return Response(status_code=304, headers={**headers, "ETag": etag})


def health_query(params: QueryParams) -> tuple[bool, Selection | None] | Response:
    """``?pretty=``, and the selection of ``?state=``, ``?critical=`` and ``?job=``; or the
    400 answer to a bad value. Other parameters are ignored."""
    states: set[str] | None = None
    for value in params.getlist("state"):
        if states is None:
            states = set()
        for state in value.split(","):
            state = state.strip()
            if state not in _STATE_SET:
                return json_response(
                    {
                        "error": "unknown state: state takes one or more of "
                        + ", ".join(JOB_STATES)
                        + ", separated by commas",
                        "state": state[:_ECHO],
                        "valid_states": list(JOB_STATES),
                    },
                    400,
                )
            states.add(state)
    criticals = {_CRITICAL.get(value) for value in params.getlist("critical")}
    if None in criticals or len(criticals) > 1:
        return json_response(_BAD_CRITICAL, 400)
    pretty = False
    if "pretty" in params:
        choice = _PRETTY.get(params["pretty"].strip().lower())
        if choice is None:
            return json_response(_BAD_PRETTY, 400)
        pretty = choice
    names = params.getlist("job")
    selection = Selection(
        None if states is None else frozenset(states),
        criticals.pop() if criticals else None,
        frozenset(names) if names else None,
    )
    return pretty, None if selection == _EVERY_JOB else selection


_EVERY_JOB = Selection()
_PLAIN: tuple[bool, Selection | None] = (False, None)


def _variant_tag(variant: Variant, selection: Selection | None) -> str:
    """What the entity tag adds for a variant and a selection ("" for the whole document
    with every field, compact)."""
    if variant == FULL and selection is None:
        return ""
    key = repr((variant, None if selection is None else selection.key())).encode(
        "utf-8", "backslashreplace"
    )
    return "-" + hashlib.blake2b(key, digest_size=8).hexdigest()


class Endpoints:
    """The handlers of one monitor's health routes, and who may see what.

    `access` (see `jobpulse._auth`) protects the per-job route, the status page and every
    error text and metadata: a request it refuses gets the health document without them
    (``"last_error": null``, ``"metadata": {}``, ``"store_error": null``). Without `access`
    protecting anything, `detail` False leaves them out of every answer; with it, `detail`
    changes nothing (a request that passes sees everything, another nothing of them).
    """

    def __init__(self, monitor: JobMonitor, access: Access, detail: bool) -> None:
        self.monitor = monitor
        self.access = access
        self.detail = detail
        # The health document depends on who asks only when something is protected.
        self._vary = {"Vary": "Authorization"} if access.protected else {}

    async def health(self, request: Request) -> Response:
        """The health document: 200, 206 or 503 by the health of every job (whatever jobs
        ``?state=``, ``?critical=`` and ``?job=`` select), or 304 while it is what the
        ``If-None-Match`` of the request names."""
        plain = not request.scope.get("query_string")
        query = _PLAIN if plain else health_query(request.query_params)
        if isinstance(query, Response):
            return query
        pretty, selection = query
        variant = Variant(open=not await self.sees_detail(request), pretty=pretty)
        headers = {"Cache-Control": _REVALIDATE, **self._vary}
        try:
            with self.monitor._health_priority():
                snapshot = self.monitor._health_snapshot()
                etag = snapshot.etag(_variant_tag(variant, selection))
                # RFC 9110 (13.2.1) would have a server that answers 503 ignore
                # If-None-Match. The tag fixes the health (and so the code) along with
                # everything else: a client holding it holds that very answer, and a 304
                # tells it just that.
                if etag_matches(request.headers, etag):
                    return _not_modified(etag, headers)
                parts = snapshot.parts(variant, selection)
        except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
            return internal_error("health endpoint", exc)
        return PartsResponse(parts, snapshot.status.http_status, {**headers, "ETag": etag})

    async def resource(self, request: Request, name: str) -> Response:
        """What is at ``HEALTH_PATH/{name}``: a job named `name` if there is one, else a
        badge if `name` is ``badge.svg`` or ends with ``/badge.svg``, else a 404. An empty
        `name` (the health path with a trailing slash) is the health document."""
        if not name:  # no job has an empty name
            return await self.health(request)
        if name == BADGE or name.endswith("/" + BADGE):
            try:
                known = self.monitor.status(name) is not None
            except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
                return internal_error("job endpoint", exc)
            if not known:
                job = None if name == BADGE else name[: -len(BADGE) - 1]
                return self.badge(request, job)
        if self.access.protected:
            refused = await self.access.refuse(request)
            if refused is not None:
                return refused
        return job_response(
            self.monitor, name, request.query_params.get("limit"), detail=self.shows_detail
        )

    @property
    def shows_detail(self) -> bool:
        """Whether a request let through by `access` sees error texts and metadata."""
        return self.detail or self.access.protected

    async def sees_detail(self, request: Request) -> bool:
        """Whether `request` may see error texts and metadata. A callable of `access` that
        raises is reported, and the request sees none."""
        if not self.access.protected:
            return self.detail
        try:
            return await self.access.allows(request)
        except Exception as exc:  # noqa: BLE001 - the callable's bug: reported, never shown
            report_internal_error("auth callable", exc)
            return False

    def badge(self, request: Request, job: str | None) -> Response:
        """The badge of the overall health (`job` None) or of one job's state; a job
        that does not exist gets a grey "not found" badge, with 404."""
        code = 200
        try:
            if job is None:
                svg = badge_svg("jobs", self.monitor._health_snapshot().status.value)
            else:
                status = self.monitor.status(job)
                if status is None:
                    code = 404
                    svg = badge_svg(job, "not found")
                else:
                    svg = badge_svg(job, status.state.value)
        except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
            return internal_error("badge", exc)
        etag = badge_tag(svg)
        if code == 200 and etag_matches(request.headers, etag):
            return _not_modified(etag, _BADGE_HEADERS)
        return Response(svg, code, {**_BADGE_HEADERS, "ETag": etag}, media_type=_SVG)


def job_response(
    monitor: JobMonitor, name: str, limit_text: str | None, *, detail: bool = True
) -> Response:
    """One job's status, health and last `limit_text` runs (default 100); 404 for an unknown
    job, 400 for a limit that is not an integer from 0 to `MAX_HISTORY_LIMIT`. Without
    `detail`, ``"last_error": null`` and ``"metadata": {}``."""
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
        job = status.to_dict()
        if not detail:
            job.update(last_error=None, metadata={})
        content = {
            "status": health.value,
            "timestamp": rfc3339(from_ns(monitor._clock.time_ns())),
            "job": job,
            "history": [record.to_dict() for record in history],
        }
    except Exception as exc:  # noqa: BLE001 - reported; never a trace in the answer
        return internal_error("job endpoint", exc)
    return json_response(content, health.http_status)


def status_page_routes(monitor: JobMonitor, access: Access, *, detail: bool) -> list[BaseRoute]:
    """The status page's routes (``/jobs``, ``/jobs/{name}``), from `jobpulse._page`.
    `ImportError` naming the extra to install when jinja2 is missing."""
    try:
        page = importlib.import_module("jobpulse._page")
    except ImportError:
        if importlib.util.find_spec("jinja2") is None:
            raise ImportError(
                "the status page needs jinja2: pip install 'jobpulse[page]' "
                "(or leave status_page=False)"
            ) from None
        raise
    result: list[BaseRoute] = page.page_routes(monitor, access, detail=detail)
    return result


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
