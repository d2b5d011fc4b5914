"""SVG status badges: the overall health and each job's state, their look, escaping and
widths, the paths they share with job names, their tags, and through FastAPI and uvicorn."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from jobpulse import InvalidJobError, JobMonitor
from jobpulse._badge import MAX_LABEL, badge_svg
from jobpulse.fastapi import router
from jobpulse.starlette import HEALTH_PATH, routes
from jobpulse.testing import FakeClock
from tests.conftest import InternalErrors, MakeMonitor
from tests.test_pollers import assert_not_modified
from tests.test_starlette import client_for, fail
from tests.uvicorn_server import serving

BADGE = HEALTH_PATH + "/badge.svg"
SVG = "{http://www.w3.org/2000/svg}"
GREEN, ORANGE, RED, BLUE, GREY = "#4c1", "#fe7d37", "#e05d44", "#007ec6", "#9f9f9f"


def job_badge(name: str) -> str:
    return f"{HEALTH_PATH}/{name}/badge.svg"


@pytest.fixture(params=["starlette", "fastapi"])
def client(monitor: JobMonitor, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A client of the routes, with a token: badges are open to all anyway."""
    if request.param == "starlette":
        app: Starlette = Starlette(routes=routes(monitor, metrics=False, auth="t0ken"))
    else:
        app = FastAPI()
        app.include_router(router(monitor, metrics=False, auth="t0ken"))
    with client_for(app) as client:
        yield client


def parse(response: httpx.Response) -> tuple[list[str], str, int]:
    """(the texts drawn, the message's colour, the width) of a badge answer."""
    assert response.headers["content-type"] == "image/svg+xml"
    root = ElementTree.fromstring(response.content)
    assert root.tag == SVG + "svg"
    texts = [
        text.text or "" for text in root.iter(SVG + "text") if "aria-hidden" not in text.attrib
    ]
    rects = list(root.iter(SVG + "rect"))
    return texts, rects[2].attrib["fill"], int(root.attrib["width"])


def test_the_overall_badge_follows_the_health(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    monitor.register("critical", critical=True, failure_threshold=2)
    response = client.get(BADGE)
    assert response.status_code == 200
    assert parse(response)[:2] == (["jobs", "healthy"], GREEN)
    fail(monitor, "critical")
    assert parse(client.get(BADGE))[:2] == (["jobs", "degraded"], ORANGE)
    fail(monitor, "critical")
    unhealthy = client.get(BADGE)
    assert unhealthy.status_code == 200  # an image: the health is in it, not in the code
    assert parse(unhealthy)[:2] == (["jobs", "unhealthy"], RED)
    assert b"<title>jobs: unhealthy</title>" in unhealthy.content


def test_a_job_badge_shows_its_state(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    monitor.register("idle")
    monitor.register("slow", stall_after=10)
    with monitor.run("ok"):
        pass
    fail(monitor, "reports/nightly")
    expected = {"idle": ("pending", GREY), "ok": ("success", GREEN)}
    expected["reports/nightly"] = ("failed", RED)
    for name, (word, colour) in expected.items():
        response = client.get(job_badge(name))
        assert response.status_code == 200, name
        assert parse(response)[:2] == ([name, word], colour)
    with monitor.run("slow"):
        assert parse(client.get(job_badge("slow")))[:2] == (["slow", "running"], BLUE)
        clock.advance(11)
        assert parse(client.get(job_badge("slow")))[:2] == (["slow", "stalled"], RED)


def test_an_unknown_job_gets_a_grey_404_badge(client: httpx.Client) -> None:
    response = client.get(job_badge("nope"))
    assert response.status_code == 404
    assert parse(response)[:2] == (["nope", "not found"], GREY)
    assert response.headers["cache-control"] == "no-cache"
    again = client.get(job_badge("nope"), headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 404  # no 304 for what is not there


def test_badges_are_open_tagged_and_safe(monitor: JobMonitor, client: httpx.Client) -> None:
    monitor.register("a")
    for path in (BADGE, job_badge("a")):
        response = client.get(path)  # no token: badges show no more than the open document
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["content-security-policy"] == "default-src 'none'"
        assert response.headers["x-content-type-options"] == "nosniff"
        etag = response.headers["etag"]
        assert_not_modified(client.get(path, headers={"If-None-Match": etag}), etag)
        assert client.head(path).status_code == 200
    before = client.get(job_badge("a")).headers["etag"]
    with monitor.run("a"):
        pass
    changed = client.get(job_badge("a"), headers={"If-None-Match": before})
    assert changed.status_code == 200
    assert changed.headers["etag"] != before


@pytest.mark.parametrize(
    "name",
    [
        "<script>alert(1)</script>",
        '"><svg onload=alert(1)>',
        "a&b",
        "it's",
        "]]><x/>",
        "<!--",
    ],
)
def test_a_job_name_is_text_never_markup(
    monitor: JobMonitor, client: httpx.Client, name: str
) -> None:
    monitor.register(name)
    response = client.get(job_badge(name.replace("/", "%2F")))
    assert response.status_code == 200
    texts, _, _ = parse(response)
    assert texts == [name, "pending"]
    root = ElementTree.fromstring(response.content)
    tags = {element.tag.removeprefix(SVG) for element in root.iter()}
    assert tags <= {"svg", "title", "linearGradient", "stop", "clipPath", "rect", "g", "text"}
    assert root.attrib["aria-label"] == f"{name}: pending"


def test_the_width_fits_the_text() -> None:
    def width(label: str, message: str = "success") -> int:
        return int(ElementTree.fromstring(badge_svg(label, message)).attrib["width"])

    assert width("iiii") < width("mmmm") < width("mmmmmmmm")
    assert width("job") < width("job", "unhealthy")
    assert width("日本") > width("ab")  # wide characters take an em
    assert width("e\u0301") == width("e")  # a combining accent takes no room
    long = "x" * 200
    assert width(long) == width("x" * (MAX_LABEL - 1) + "\u2026")
    root = ElementTree.fromstring(badge_svg(long, "success"))
    assert root.find(SVG + "title").text == f"{long}: success"  # type: ignore[union-attr]
    assert [t.text for t in root.iter(SVG + "text")][1] == "x" * (MAX_LABEL - 1) + "\u2026"
    for text in root.iter(SVG + "text"):
        assert int(text.attrib["textLength"]) > 0  # drawn to the width computed


def test_several_badges_inline_keep_their_own_clips() -> None:
    first, second = badge_svg("a", "healthy"), badge_svg("a longer label", "healthy")
    ids = [
        {
            element.attrib["id"]
            for element in ElementTree.fromstring(svg).iter()
            if "id" in element.attrib
        }
        for svg in (first, second)
    ]
    assert not ids[0] & ids[1]
    assert badge_svg("a", "healthy") == first


@settings(max_examples=100, deadline=None)
@given(label=st.text(max_size=80), message=st.text(max_size=20))
def test_any_text_makes_a_well_formed_badge(label: str, message: str) -> None:
    root = ElementTree.fromstring(badge_svg(label, message))
    assert root.tag == SVG + "svg"
    assert int(root.attrib["width"]) >= 20


# -- the paths badges share with job names -----------------------------------------------------


def test_a_job_named_like_a_badge_wins(monitor: JobMonitor, client: httpx.Client) -> None:
    """A job's name may hold "/" and may end with "badge.svg": the path of a job that
    exists serves that job (its detail, behind the token), else the badge."""
    monitor.register("badge.svg")
    monitor.register("x")
    monitor.register("x/badge.svg")
    monitor.register("y")
    headers = {"Authorization": "Bearer t0ken"}
    for path, name in ((BADGE, "badge.svg"), (job_badge("x"), "x/badge.svg")):
        assert client.get(path).status_code == 401  # the detail of a job: protected
        response = client.get(path, headers=headers)
        assert response.status_code == 200
        assert response.json()["job"]["job_name"] == name
    assert parse(client.get(job_badge("y")))[0] == ["y", "pending"]
    assert parse(client.get(job_badge("badge.svg")))[0] == ["badge.svg", "pending"]
    assert client.get(HEALTH_PATH + "/y", headers=headers).json()["job"]["job_name"] == "y"

    monitor.unregister("badge.svg")
    assert parse(client.get(BADGE))[0] == ["jobs", "healthy"]


def test_a_name_with_slashes_and_an_empty_one(monitor: JobMonitor, client: httpx.Client) -> None:
    monitor.register("a/b/c")
    assert parse(client.get(job_badge("a/b/c")))[0] == ["a/b/c", "pending"]
    assert parse(client.get(job_badge("a/b%2Fc")))[0] == ["a/b/c", "pending"]
    empty = client.get(HEALTH_PATH + "//badge.svg")
    assert empty.status_code == 404
    assert parse(empty)[0] == ["", "not found"]
    with pytest.raises(InvalidJobError):
        monitor.register("")


def test_a_failure_inside_jobpulse_answers_a_bare_500(
    monitor: JobMonitor,
    client: httpx.Client,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("secret=hunter2 in a bug")

    monkeypatch.setattr(monitor, "_health_snapshot", broken)
    response = client.get(BADGE)
    assert (response.status_code, response.json()) == (500, {"error": "internal error"})
    monkeypatch.setattr(monitor, "status", broken)
    for path in (job_badge("a"), BADGE):
        response = client.get(path)
        assert (response.status_code, response.json()) == (500, {"error": "internal error"})
        assert "hunter2" not in response.text
    assert [where for where, _ in internal_errors.take()] == [
        "badge",
        "job endpoint",
        "job endpoint",
    ]


@pytest.mark.slow
def test_badges_through_uvicorn(make_monitor: MakeMonitor) -> None:
    monitor = make_monitor(clock=None)
    fail(monitor, "reports/nightly")
    app = FastAPI()
    app.include_router(router(monitor, metrics=False, auth="t0ken"), prefix="/ops")
    with serving(app) as url, httpx.Client(base_url=url + "/ops") as client:
        overall = client.get(BADGE)
        assert overall.status_code == 200
        assert parse(overall)[:2] == (["jobs", "degraded"], ORANGE)
        one = client.get(job_badge("reports/nightly"))
        assert parse(one)[:2] == (["reports/nightly", "failed"], RED)
        etag = one.headers["etag"]
        assert_not_modified(
            client.get(job_badge("reports/nightly"), headers={"If-None-Match": etag}), etag
        )
        assert client.get(job_badge("nope")).status_code == 404
        assert client.get(HEALTH_PATH + "/reports/nightly").status_code == 401
