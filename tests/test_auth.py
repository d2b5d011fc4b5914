"""Who may see what: ``routes(monitor, auth=..., detail=..., status_page=...)`` and the same on
the FastAPI router. A token (Bearer, or a Basic password) or a callable; the health document
stays open for probes, without error texts and metadata for a request that is not let
through; the per-job route and the status page answer 401."""

from __future__ import annotations

import base64
import hmac
import json
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from jobpulse import InvalidJobError, JobMonitor
from jobpulse._auth import Access
from jobpulse._health import HealthDocument
from jobpulse._model import from_ns
from jobpulse.fastapi import router
from jobpulse.starlette import HEALTH_PATH, routes
from tests.conftest import InternalErrors, MakeMonitor
from tests.test_starlette import client_for
from tests.uvicorn_server import serving

TOKEN = "t0ken-of-32-characters-or-so...."
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SECRET_ERROR = "RuntimeError: the reply was: account 4711 overdrawn"


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


def request_with(headers: dict[str, str]) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
    )


async def allows(access: Access, headers: dict[str, str]) -> bool:
    return await access.allows(request_with(headers))


def run(coroutine: Any) -> Any:
    import asyncio

    return asyncio.run(coroutine)


# -- Access ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        (BEARER, True),
        ({"Authorization": f"bearer   {TOKEN} "}, True),
        (basic("anyone", TOKEN), True),
        (basic("", TOKEN), True),
        ({}, False),
        ({"Authorization": ""}, False),
        ({"Authorization": "Bearer"}, False),
        ({"Authorization": "Bearer wrong"}, False),
        ({"Authorization": f"Bearer {TOKEN}x"}, False),
        ({"Authorization": f"Token {TOKEN}"}, False),
        ({"Authorization": TOKEN}, False),
        (basic(TOKEN, ""), False),  # the token as the user name is not the password
        (basic("user", "wrong"), False),
        ({"Authorization": "Basic " + base64.b64encode(TOKEN.encode()).decode()}, False),
        ({"Authorization": "Basic not*base64"}, False),
        (basic("user", TOKEN + ":more"), False),
    ],
)
def test_a_token_by_bearer_or_basic_password(headers: dict[str, str], allowed: bool) -> None:
    assert run(allows(Access(TOKEN), headers)) is allowed


def test_a_basic_password_may_hold_a_colon() -> None:
    assert run(allows(Access("a:b"), basic("user", "a:b")))


def test_a_token_beyond_ascii_is_compared_as_the_bytes_sent() -> None:
    """curl sends a UTF-8 token as it is; Starlette decodes headers as Latin-1."""
    access = Access("tök€n")
    assert run(allows(access, {"Authorization": "Bearer tök€n"}))
    assert run(allows(access, basic("user", "tök€n")))
    assert not run(allows(access, {"Authorization": "Bearer tok€n"}))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer x"},  # another length
        {"Authorization": "Bearer " + "x" * 5000},
        BEARER,
        basic("u", "wrong"),
    ],
)
def test_the_token_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, headers: dict[str, str]
) -> None:
    """One compare_digest of two SHA-256 digests, whatever was sent, and it decides: a
    compare that said "equal" would let a wrong token of any length through (a missing
    one never)."""
    calls: list[tuple[int, int]] = []
    verdict: list[bool] = []
    real = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        result = real(a, b)
        verdict.append(result)
        return result

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    allowed = run(allows(Access(TOKEN), headers))
    assert calls == [(32, 32)]
    assert allowed is (verdict[0] and bool(headers))

    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: True)
    assert run(allows(Access(TOKEN), headers)) is bool(headers)
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    assert run(allows(Access(TOKEN), headers)) is False


def test_a_callable_decides_sync_or_async() -> None:
    seen: list[str] = []

    def by_header(request: Request) -> bool:
        seen.append(request.headers.get("x-user", ""))
        return request.headers.get("x-user") == "ops"

    async def by_header_async(request: Request) -> bool:
        return request.headers.get("x-user") == "ops"

    for check in (by_header, by_header_async):
        access = Access(check)
        assert access.protected
        assert access.challenge() == {}
        assert run(allows(access, {"X-User": "ops"}))
        assert not run(allows(access, {"X-User": "guest"}))
        assert not run(allows(access, {}))
    assert seen == ["ops", "guest", ""]


@pytest.mark.parametrize("verdict", [1, "yes", [True], None, object()])
def test_only_true_lets_a_request_through(verdict: object) -> None:
    assert not run(allows(Access(lambda request: verdict), {}))  # type: ignore[arg-type,return-value]


def test_a_callable_that_raises_is_a_bare_500_and_reported(internal_errors: InternalErrors) -> None:
    def broken(request: Request) -> bool:
        raise RuntimeError(f"secret {TOKEN} in a bug")

    async def broken_async(request: Request) -> bool:
        raise RuntimeError("async bug")

    for check in (broken, broken_async):
        refused = run(Access(check).refuse(request_with({})))
        assert refused is not None
        assert refused.status_code == 500
        assert json.loads(refused.body) == {"error": "internal error"}
        assert TOKEN.encode() not in refused.body
    assert [where for where, _ in internal_errors.take()] == ["auth callable", "auth callable"]


def test_refusals_and_challenges() -> None:
    refused = run(Access(TOKEN).refuse(request_with({})))
    assert refused is not None
    assert refused.status_code == 401
    assert json.loads(refused.body) == {"error": "unauthorized"}
    assert refused.headers["www-authenticate"] == 'Bearer realm="jobpulse", Basic realm="jobpulse"'
    assert refused.headers["cache-control"] == "no-store"
    assert run(Access(TOKEN).refuse(request_with(BEARER))) is None
    assert run(Access(None).refuse(request_with({}))) is None
    assert not Access(None).protected


@pytest.mark.parametrize("auth", ["", " token", "token\n", 12, b"token", ["token"]])
def test_a_bad_auth_is_refused_up_front(monitor: JobMonitor, auth: object) -> None:
    with pytest.raises(InvalidJobError, match="auth"):
        routes(monitor, auth=auth, metrics=False)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="auth"):
        router(monitor, auth=auth, metrics=False)  # type: ignore[arg-type]


# -- the routes --------------------------------------------------------------------------------

AppFactory = Callable[..., Any]


@pytest.fixture(params=["starlette", "fastapi"])
def make_app(request: pytest.FixtureRequest) -> AppFactory:
    def make(monitor: JobMonitor, **options: Any) -> Any:
        if request.param == "starlette":
            return Starlette(routes=routes(monitor, metrics=False, **options))
        app = FastAPI()
        app.include_router(router(monitor, metrics=False, **options))
        return app

    return make


@pytest.fixture
def failing(monitor: JobMonitor) -> JobMonitor:
    """A job whose last run failed with an error text, and metadata."""
    with pytest.raises(RuntimeError):
        fail_swaps(monitor)
    return monitor


def fail_swaps(monitor: JobMonitor) -> None:
    with monitor.run("swaps") as run:
        run.set_metadata(batch="b-17", rows=3)
        raise RuntimeError("the reply was: account 4711 overdrawn")


def job_of(response: httpx.Response, name: str = "swaps") -> dict[str, Any]:
    body = response.json()
    job: dict[str, Any] = body["jobs"][name] if "jobs" in body else body["job"]
    return job


def shows_detail(job: dict[str, Any]) -> bool:
    if job["last_error"] is None:
        assert job["metadata"] == {}
        return False
    assert job["last_error"] == SECRET_ERROR
    assert job["metadata"] == {"batch": "b-17", "rows": 3}
    return True


@pytest.fixture
def protected(failing: JobMonitor, make_app: AppFactory) -> Iterator[httpx.Client]:
    with client_for(make_app(failing, auth=TOKEN)) as client:
        yield client


def test_the_health_document_stays_open_without_the_detail(protected: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, basic("u", "wrong")):
        response = protected.get(HEALTH_PATH, headers=headers)
        assert response.status_code == 206  # a probe reads the health as before
        assert response.headers["vary"] == "Authorization"
        job = job_of(response)
        assert not shows_detail(job)
        assert "last_error" in job  # the keys are a contract
        assert "metadata" in job
        assert job["last_error_category"] == "unknown"
        assert job["failure_count"] == 1
        assert TOKEN not in response.text
        assert "4711" not in response.text
    for headers in (BEARER, basic("ops", TOKEN)):
        response = protected.get(HEALTH_PATH, headers=headers)
        assert shows_detail(job_of(response))
    for query in ({"pretty": "1"}, {"state": "failed"}, {"job": "swaps", "pretty": "1"}):
        assert not shows_detail(job_of(protected.get(HEALTH_PATH, params=query)))
        assert shows_detail(job_of(protected.get(HEALTH_PATH, params=query, headers=BEARER)))
    assert not shows_detail(job_of(protected.get(HEALTH_PATH + "/")))


def test_the_open_and_full_documents_have_their_own_tags(protected: httpx.Client) -> None:
    opened = protected.get(HEALTH_PATH).headers["etag"]
    full = protected.get(HEALTH_PATH, headers=BEARER).headers["etag"]
    assert opened != full
    # A cache revalidating the full document for a request without the token gets the
    # open document, never a 304 that would let it serve the full one.
    response = protected.get(HEALTH_PATH, headers={"If-None-Match": full})
    assert response.status_code == 206
    assert not shows_detail(job_of(response))
    assert protected.get(HEALTH_PATH, headers={"If-None-Match": opened}).status_code == 304
    again = protected.get(HEALTH_PATH, headers={**BEARER, "If-None-Match": full})
    assert again.status_code == 304


def test_the_job_route_needs_the_token(protected: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, basic("u", "nope")):
        for path in (HEALTH_PATH + "/swaps", HEALTH_PATH + "/no_such_job"):
            response = protected.get(path, headers=headers)
            assert response.status_code == 401  # an unknown job too: nothing is told
            assert response.json() == {"error": "unauthorized"}
            assert "Basic" in response.headers["www-authenticate"]
            assert protected.head(path, headers=headers).status_code == 401
    for headers in (BEARER, basic("anyone", TOKEN)):
        response = protected.get(HEALTH_PATH + "/swaps", headers=headers)
        assert response.status_code == 206
        assert shows_detail(job_of(response))
        assert response.json()["history"][0]["error_category"] == "unknown"
        assert protected.get(HEALTH_PATH + "/nope", headers=headers).status_code == 404


def test_a_callable_auth(failing: JobMonitor, make_app: AppFactory) -> None:
    async def ops_only(request: Request) -> bool:
        return request.headers.get("x-role") == "ops"

    with client_for(make_app(failing, auth=ops_only)) as client:
        assert not shows_detail(job_of(client.get(HEALTH_PATH)))
        assert shows_detail(job_of(client.get(HEALTH_PATH, headers={"X-Role": "ops"})))
        refused = client.get(HEALTH_PATH + "/swaps")
        assert refused.status_code == 401
        assert "www-authenticate" not in refused.headers  # the callable's owner says how
        assert client.get(HEALTH_PATH + "/swaps", headers={"X-Role": "ops"}).status_code == 206


def test_a_callable_that_raises_never_takes_the_document_down(
    failing: JobMonitor, make_app: AppFactory, internal_errors: InternalErrors
) -> None:
    def broken(request: Request) -> bool:
        raise RuntimeError("a bug in the app's check")

    with client_for(make_app(failing, auth=broken)) as client:
        response = client.get(HEALTH_PATH)
        assert response.status_code == 206  # the probe still reads the health
        assert not shows_detail(job_of(response))
        job = client.get(HEALTH_PATH + "/swaps")
        assert (job.status_code, job.json()) == (500, {"error": "internal error"})
        assert "bug" not in job.text
    assert [where for where, _ in internal_errors.take()] == ["auth callable", "auth callable"]


def test_detail_false_without_auth_hides_the_texts_from_everyone(
    failing: JobMonitor, make_app: AppFactory
) -> None:
    with client_for(make_app(failing, detail=False)) as client:
        for headers in ({}, BEARER):
            response = client.get(HEALTH_PATH, headers=headers)
            assert response.status_code == 206
            assert "vary" not in response.headers
            assert not shows_detail(job_of(response))
            job = client.get(HEALTH_PATH + "/swaps", headers=headers)
            assert job.status_code == 206  # open: nothing to protect it with
            assert not shows_detail(job_of(job))
            assert len(job.json()["history"]) == 1


def test_detail_false_with_auth_shows_everything_to_who_passes(
    failing: JobMonitor, make_app: AppFactory
) -> None:
    with client_for(make_app(failing, auth=TOKEN, detail=False)) as client:
        assert not shows_detail(job_of(client.get(HEALTH_PATH)))
        assert shows_detail(job_of(client.get(HEALTH_PATH, headers=BEARER)))
        assert shows_detail(job_of(client.get(HEALTH_PATH + "/swaps", headers=BEARER)))


def test_the_store_error_is_detail_too(
    failing: JobMonitor, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = HealthDocument()
    view = {"scope": "process", "store": "unavailable", "store_error": "OSError: /srv/x.db"}

    def snapshot() -> Any:
        rows = failing._registry.health_rows()
        return document.snapshot(rows, from_ns(0), 0.0, view)

    monkeypatch.setattr(failing, "_health_snapshot", snapshot)
    with client_for(make_app(failing, auth=TOKEN)) as client:
        opened = client.get(HEALTH_PATH).json()
        assert opened["store"] == "unavailable"
        assert opened["store_error"] is None
        assert client.get(HEALTH_PATH, headers=BEARER).json()["store_error"] == view["store_error"]


@pytest.mark.slow
def test_auth_through_uvicorn(make_monitor: MakeMonitor) -> None:
    monitor = make_monitor(clock=None)
    with pytest.raises(RuntimeError):
        fail_swaps(monitor)
    app = Starlette(routes=[Mount("/ops", routes=routes(monitor, metrics=False, auth=TOKEN))])
    with serving(app) as url, httpx.Client(base_url=url + "/ops") as client:
        assert not shows_detail(job_of(client.get(HEALTH_PATH)))
        assert shows_detail(job_of(client.get(HEALTH_PATH, auth=("ops", TOKEN))))
        assert client.get(HEALTH_PATH + "/swaps").status_code == 401
        response = client.get(HEALTH_PATH + "/swaps", auth=("ops", TOKEN))
        assert response.status_code == 206
        assert shows_detail(job_of(response))
        assert client.get(HEALTH_PATH + "/swaps", headers=BEARER).status_code == 206


# -- the status page -------------------------------------------------------------------------


@pytest.fixture
def page_module(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Access, bool]]:
    """A stand-in for jobpulse._page: routes that answer who asked, behind `access`."""
    calls: list[tuple[Any, Access, bool]] = []

    def page_routes(monitor: JobMonitor, access: Access, *, detail: bool) -> list[BaseRoute]:
        calls.append((monitor, access, detail))

        async def page(request: Request) -> Response:
            refused = await access.refuse(request)
            if refused is not None:
                return refused
            return PlainTextResponse(f"page {request.path_params.get('name', '')}")

        return [Route("/jobs", page), Route("/jobs/{name:path}", page)]

    module = types.ModuleType("jobpulse._page")
    module.page_routes = page_routes  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "jobpulse._page", module)
    return calls


@pytest.mark.parametrize("prefix", ["", "/ops"])
def test_the_status_page_routes_are_mounted_with_access_and_detail(
    monitor: JobMonitor, page_module: list[tuple[Any, Access, bool]], prefix: str
) -> None:
    inner = routes(monitor, metrics=False, auth=TOKEN, status_page=True)
    app = Starlette(routes=[Mount(prefix, routes=inner)] if prefix else inner)
    ((given, access, detail),) = page_module
    assert given is monitor
    assert access.protected
    assert detail  # who passes the token sees everything
    with client_for(app) as client:
        assert client.get(prefix + "/jobs").status_code == 401
        assert client.get(prefix + "/jobs", headers=BEARER).text == "page "
        assert client.get(prefix + "/jobs/a/b", headers=BEARER).text == "page a/b"

    routes(monitor, metrics=False, detail=False, status_page=True)
    routes(monitor, metrics=False, auth=TOKEN, detail=False, status_page=True)
    assert [(access.protected, detail) for _, access, detail in page_module[1:]] == [
        (False, False),
        (True, True),
    ]
    assert len(routes(monitor, metrics=False)) == 2
    assert len(page_module) == 3  # not asked for: not loaded


@pytest.mark.parametrize("prefix", ["", "/ops"])
def test_the_status_page_in_fastapi_is_left_out_of_openapi(
    monitor: JobMonitor, page_module: list[tuple[Any, Access, bool]], prefix: str
) -> None:
    app = FastAPI()
    app.include_router(router(monitor, metrics=False, auth=TOKEN, status_page=True), prefix=prefix)
    with client_for(app) as client:
        assert client.get(prefix + "/jobs").status_code == 401
        assert client.get(prefix + "/jobs/x", headers=BEARER).text == "page x"
        paths = client.get("/openapi.json").json()["paths"]
    assert prefix + HEALTH_PATH in paths
    assert not [path for path in paths if path.startswith(prefix + "/jobs")]


def test_the_status_page_without_jinja2_says_what_to_install(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "jinja2", None)
    monkeypatch.setitem(sys.modules, "jobpulse._page", None)
    for make in (routes, router):
        with pytest.raises(ImportError, match=r"pip install 'jobpulse\[page\]'"):
            make(monitor, metrics=False, status_page=True)
    assert routes(monitor, metrics=False)  # without the page, nothing is missing
    monkeypatch.delitem(sys.modules, "jinja2")
    with pytest.raises(ImportError) as raised:  # jinja2 is there: the real cause, unchanged
        routes(monitor, metrics=False, status_page=True)
    assert "jobpulse[page]" not in str(raised.value)


def test_the_real_status_page_is_behind_the_token(failing: JobMonitor) -> None:
    app = Starlette(routes=routes(failing, metrics=False, auth=TOKEN, status_page=True))
    with client_for(app) as client:
        for path in ("/jobs", "/jobs/swaps"):
            assert client.get(path).status_code == 401
            response = client.get(path, headers=BEARER)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
