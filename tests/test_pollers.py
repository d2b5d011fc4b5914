"""An endpoint made for pollers: the health document's ETag and 304 answers, its filters,
``?pretty=``, and what it costs while nothing changed; in process and through uvicorn."""

from __future__ import annotations

import asyncio
import json
import operator
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Mount

from jobpulse import JobMonitor, _health, _job, _model
from jobpulse._health import FULL, HealthDocument, Selection, Variant
from jobpulse.starlette import HEALTH_PATH, routes
from jobpulse.testing import FakeClock
from tests.conftest import InternalErrors, MakeMonitor, in_child, pass_time, sqlite_only
from tests.test_starlette import client_for, fail
from tests.uvicorn_server import serving

VALID_STATES = ["pending", "running", "success", "failed", "stalled", "missed"]


@pytest.fixture
def client(monitor: JobMonitor) -> Iterator[httpx.Client]:
    with client_for(Starlette(routes=routes(monitor, metrics=False))) as client:
        yield client


def etag_of(client: httpx.Client, path: str = HEALTH_PATH, **params: Any) -> str:
    response = client.get(path, params=params)
    assert response.status_code in (200, 206, 503)
    return response.headers["etag"]


def assert_not_modified(response: httpx.Response, etag: str) -> None:
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == "no-cache"


# -- the entity tag and 304 ---------------------------------------------------------------


def test_a_poller_gets_304_while_nothing_changed(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    with monitor.run("a"):
        pass
    first = client.get(HEALTH_PATH)
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    assert etag.endswith('"')
    assert first.headers["cache-control"] == "no-cache"
    clock.advance(5)  # the times move; nothing else does
    again = client.get(HEALTH_PATH)
    assert again.headers["etag"] == etag
    assert again.json()["timestamp"] != first.json()["timestamp"]
    assert_not_modified(client.get(HEALTH_PATH, headers={"If-None-Match": etag}), etag)
    assert_not_modified(client.head(HEALTH_PATH, headers={"If-None-Match": etag}), etag)
    assert_not_modified(client.get(HEALTH_PATH + "/", headers={"If-None-Match": etag}), etag)

    with monitor.run("a"):
        pass
    changed = client.get(HEALTH_PATH, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["jobs"]["a"]["success_count"] == 2


def test_the_tag_changes_with_every_part_of_the_document(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    seen = {etag_of(client)}

    def changed() -> bool:
        etag = etag_of(client)
        new = etag not in seen
        seen.add(etag)
        return new

    monitor.register("a")
    assert changed()  # a job came
    assert not changed()
    monitor.register("a", critical=True)
    assert changed()  # a setting: the member moved, the status not
    fail(monitor, "a")
    assert changed()  # the status and the summary
    with monitor.run("a") as run:
        assert changed()  # running
        run.set_metadata(rows=3)
    assert changed()  # success, with metadata
    monitor.unregister("a")
    assert changed()  # a job went
    monitor.register("a")
    assert changed()  # back as new: never the tag of an earlier document


def test_a_change_undone_gives_back_an_equal_document_and_its_tag(monitor: JobMonitor) -> None:
    """The jobs part is rebuilt when a row is another object, and kept when every row is
    equal: the same document, the same generation."""
    document = HealthDocument()
    monitor.register("a")
    rows = monitor._registry.health_rows()
    now = _model.from_ns(0)
    first = document.snapshot(rows, now, 0.0)
    # Rebuilt alike at a later version of the job.
    copied = [(*row[:4], bytes(bytearray(row[4])), row[5] + 1) for row in rows]
    assert copied[0] is not rows[0]
    assert document.snapshot(copied, now, 0.0).etag() == first.etag()
    assert document.snapshot(rows[:0], now, 0.0).etag() != first.etag()


def test_the_tag_names_the_query(monitor: JobMonitor, client: httpx.Client) -> None:
    monitor.register("a", critical=True)
    fail(monitor, "b")
    plain = etag_of(client)
    tags = {
        plain,
        etag_of(client, pretty="1"),
        etag_of(client, state="failed"),
        etag_of(client, state="failed", pretty="1"),
        etag_of(client, critical="true"),
        etag_of(client, critical="false"),
        etag_of(client, job="a"),
    }
    assert len(tags) == 7
    # The same selection, however written, is the same document and the same tag.
    filtered = etag_of(client, state="failed,stalled")
    assert client.get(HEALTH_PATH + "?state=stalled&state=failed").headers["etag"] == filtered
    assert client.get(HEALTH_PATH + "?state=failed,stalled,failed").headers["etag"] == filtered
    assert etag_of(client, pretty="0") == etag_of(client, unknown="x") == plain
    # A tag is answered 304 only for its own query.
    assert client.get(HEALTH_PATH, headers={"If-None-Match": filtered}).status_code == 206
    response = client.get(
        HEALTH_PATH, params={"state": "failed,stalled"}, headers={"If-None-Match": filtered}
    )
    assert_not_modified(response, filtered)


@pytest.mark.parametrize(
    "field",
    [
        "{tag}",
        '"other", {tag}',
        '{tag},"other"',
        'W/"other" ,  {tag}  ',
        "{opaque}",  # the weak comparison: W/ or not, the same opaque tag
        "*",
        " * ",
    ],
)
def test_if_none_match_lists_and_star(
    monitor: JobMonitor, client: httpx.Client, field: str
) -> None:
    monitor.register("a")
    etag = etag_of(client)
    value = field.format(tag=etag, opaque=etag.removeprefix("W/"))
    assert_not_modified(client.get(HEALTH_PATH, headers={"If-None-Match": value}), etag)


@pytest.mark.parametrize(
    "field",
    [
        '"other"',
        "{bare}",  # unquoted: not an entity tag
        "W/{bare}",
        '"{bare}',
        "",
        "**",
        '"*"',
    ],
)
def test_if_none_match_that_names_another_tag_gets_the_document(
    monitor: JobMonitor, client: httpx.Client, field: str
) -> None:
    monitor.register("a")
    etag = etag_of(client)
    value = field.format(bare=etag.removeprefix("W/").strip('"'))
    response = client.get(HEALTH_PATH, headers={"If-None-Match": value})
    assert response.status_code == 200
    assert response.headers["etag"] == etag
    assert response.json()["jobs"]["a"]["status"] == "pending"


def test_if_none_match_on_several_header_lines(monitor: JobMonitor) -> None:
    monitor.register("a")
    app = Starlette(routes=routes(monitor, metrics=False))
    with client_for(app) as client:
        etag = etag_of(client)
    headers = [(b"host", b"test"), (b"if-none-match", b'"x"'), (b"if-none-match", etag.encode())]
    assert asgi_get(app, HEALTH_PATH, headers)[0] == 304


def asgi_get(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """GET `path` of the ASGI `app` with `headers` as they are (one field may repeat)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return answer["status"], answer["body"]


def test_304_is_answered_whatever_the_health(monitor: JobMonitor, client: httpx.Client) -> None:
    """The tag fixes the health: a poller holding the 503 document's tag is told it is
    current. A probe that needs the code sends no If-None-Match."""
    monitor.register("critical", critical=True, failure_threshold=1)
    fail(monitor, "critical")
    response = client.get(HEALTH_PATH)
    assert response.status_code == 503
    etag = response.headers["etag"]
    assert_not_modified(client.get(HEALTH_PATH, headers={"If-None-Match": etag}), etag)
    assert client.get(HEALTH_PATH).status_code == 503


def test_other_answers_are_not_stored(monitor: JobMonitor, client: httpx.Client) -> None:
    monitor.register("a")
    for path in (HEALTH_PATH + "/a", HEALTH_PATH + "/nope", HEALTH_PATH + "?state=nope"):
        response = client.get(path)
        assert response.headers["cache-control"] == "no-store", path
        assert "etag" not in response.headers


def test_tags_of_two_processes_differ(monitor: JobMonitor) -> None:
    """Each process has its own token (a forked child draws a new one): a uvicorn worker
    never answers 304 to the tag of another's document."""
    monitor.register("a")
    parent = monitor._health_snapshot().etag()

    def child() -> dict[str, object]:
        return {"etag": monitor._health_snapshot().etag()}

    tag = str(in_child(child)["etag"])
    assert tag.split("-")[0] != parent.split("-")[0]
    assert monitor._health_snapshot().etag() == parent


@sqlite_only
def test_the_tag_follows_the_store_view_but_not_the_heartbeats(
    fleet: MakeMonitor, clock: FakeClock
) -> None:
    reader = fleet()
    reader.register("a")
    assert reader.flush()
    first = reader._health_snapshot()
    assert first.view["scope"] == "fleet"
    pass_time(clock, 3, reader)  # heartbeats: each instance's last_seen moves
    later = reader._health_snapshot()
    assert later.view["instances"] != first.view["instances"]
    assert later.etag() == first.etag()

    other = fleet()  # another process joins the fleet
    assert other.flush()
    pass_time(clock, 1, reader, other)
    joined = reader._health_snapshot()
    assert len(joined.view["instances"]) == 2
    assert joined.etag() != first.etag()


def test_the_tag_follows_the_store_state() -> None:
    document = HealthDocument()
    monitor_rows: list[_job.HealthRow] = []
    now = _model.from_ns(0)
    ok = {"scope": "fleet", "store": "ok", "instances": []}
    tags = {
        document.snapshot(monitor_rows, now, 0.0, view).etag()
        for view in (
            ok,
            {"scope": "fleet", "store": "degraded", "store_error": "E: one", "instances": []},
            {"scope": "fleet", "store": "degraded", "store_error": "E: two", "instances": []},
            {"scope": "process", "store": "unavailable", "store_error": "E: two"},
        )
    }
    assert len(tags) == 4
    assert document.snapshot(monitor_rows, now, 0.0, dict(ok)).etag() not in tags  # came back
    again = document.snapshot(monitor_rows, now, 0.0, dict(ok)).etag()
    assert document.snapshot(monitor_rows, now, 0.0, dict(ok)).etag() == again


# -- filters and pretty --------------------------------------------------------------------


@pytest.fixture
def jobs(monitor: JobMonitor, clock: FakeClock) -> JobMonitor:
    """ok (success), broken (failed, critical), idle (pending), slow (stalled),
    a/b (success, critical)."""
    with monitor.run("ok"):
        pass
    monitor.register("broken", critical=True, failure_threshold=5)
    fail(monitor, "broken")
    monitor.register("idle")
    with monitor.run("a/b"):
        pass
    monitor.register("a/b", critical=True)
    monitor.register("slow", stall_after=10)
    return monitor


def listed(response: httpx.Response) -> list[str]:
    assert response.status_code in (200, 206, 503), response.text
    return list(response.json()["jobs"])


def test_state_filter(jobs: JobMonitor, clock: FakeClock, client: httpx.Client) -> None:
    with jobs.run("slow"):
        clock.advance(11)
        whole = client.get(HEALTH_PATH)
        assert whole.status_code == 503
        response = client.get(HEALTH_PATH, params={"state": "failed,stalled"})
        assert listed(response) == ["broken", "slow"]
        # A probe is never fooled by a filter: the status, its code and the summary are
        # those of every job.
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert body["summary"] | {"last_update_time": None} == whole.json()["summary"] | {
            "last_update_time": None
        }
        assert body["summary"]["total_jobs"] == 5
        assert body["jobs"]["broken"] == whole.json()["jobs"]["broken"]
        assert listed(client.get(HEALTH_PATH + "?state=failed&state=success")) == [
            "a/b",
            "broken",
            "ok",
        ]
        assert listed(client.get(HEALTH_PATH + "?state=pending,%20running")) == ["idle"]
        assert listed(client.get(HEALTH_PATH, params={"state": "missed"})) == []


@pytest.mark.parametrize("value", ["nope", "", "failed,", "FAILED", "failed,,stalled", "x" * 500])
def test_an_unknown_state_is_a_clear_400(
    jobs: JobMonitor, client: httpx.Client, value: str
) -> None:
    response = client.get(HEALTH_PATH, params={"state": value})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["valid_states"] == VALID_STATES
    assert "pending, running, success, failed, stalled, missed" in body["error"]
    assert len(body["state"]) <= 100
    assert body["state"] in value


def test_critical_filter(jobs: JobMonitor, client: httpx.Client) -> None:
    assert listed(client.get(HEALTH_PATH, params={"critical": "true"})) == ["a/b", "broken"]
    assert listed(client.get(HEALTH_PATH, params={"critical": "false"})) == ["idle", "ok", "slow"]
    assert listed(client.get(HEALTH_PATH + "?critical=true&state=failed")) == ["broken"]
    assert listed(client.get(HEALTH_PATH + "?critical=true&critical=true")) == ["a/b", "broken"]
    for bad in ("yes", "1", "True", "", "maybe"):
        response = client.get(HEALTH_PATH, params={"critical": bad})
        assert response.status_code == 400, bad
        assert response.json() == {"error": "critical must be true or false"}
    assert client.get(HEALTH_PATH + "?critical=true&critical=false").status_code == 400


def test_job_filter(jobs: JobMonitor, client: httpx.Client) -> None:
    assert listed(client.get(HEALTH_PATH + "?job=ok&job=a%2Fb")) == ["a/b", "ok"]
    assert listed(client.get(HEALTH_PATH + "?job=ok&job=nope")) == ["ok"]
    assert listed(client.get(HEALTH_PATH + "?job=nope")) == []
    assert listed(client.get(HEALTH_PATH + "?job=")) == []
    assert listed(client.get(HEALTH_PATH + "?job=ok,idle")) == []  # a name may hold a comma
    assert listed(client.get(HEALTH_PATH + "?job=ok&state=failed")) == []
    assert listed(client.get(HEALTH_PATH + "?job=broken&state=failed&critical=true")) == ["broken"]


def test_names_that_look_like_json_are_selected_exactly(
    monitor: JobMonitor, client: httpx.Client
) -> None:
    names = ['a"', 'a":{"job_name":', "a\\", "é", "a", "a b", "a/b,c"]
    for name in names:
        monitor.register(name)
    for name in names:
        assert listed(client.get(HEALTH_PATH, params={"job": name})) == [name]
    assert sorted(listed(client.get(HEALTH_PATH, params={"job": names}))) == sorted(names)


def test_unknown_parameters_are_ignored(jobs: JobMonitor, client: httpx.Client) -> None:
    whole = listed(client.get(HEALTH_PATH))
    assert listed(client.get(HEALTH_PATH + "?limit=3&foo=bar&State=nope")) == whole


def test_pretty_is_the_same_document_indented(jobs: JobMonitor, client: httpx.Client) -> None:
    with jobs.run("ok") as run:
        run.set_metadata(rows=3, nested={"deep": [1, "two\nlines"]}, text="é \u2028")
    compact = client.get(HEALTH_PATH)
    for value in ("1", "true", "", "TRUE"):
        pretty = client.get(HEALTH_PATH, params={"pretty": value})
        assert pretty.status_code == compact.status_code
        assert pretty.headers["content-type"] == "application/json"
        document = pretty.json()
        assert document == compact.json() | {
            "timestamp": document["timestamp"],
            "duration_ms": document["duration_ms"],
        }
        assert pretty.text == json.dumps(document, indent=2, ensure_ascii=False)
    empty = client.get(HEALTH_PATH, params={"pretty": "1", "job": "nope"})
    assert empty.json()["jobs"] == {}
    assert empty.text == json.dumps(empty.json(), indent=2, ensure_ascii=False)
    filtered = client.get(HEALTH_PATH, params={"pretty": "1", "state": "failed"})
    assert filtered.text == json.dumps(filtered.json(), indent=2, ensure_ascii=False)
    assert list(filtered.json()["jobs"]) == ["broken"]
    for value in ("0", "false"):
        assert client.get(HEALTH_PATH, params={"pretty": value}).text.startswith('{"status"')
    response = client.get(HEALTH_PATH, params={"pretty": "yes"})
    assert response.status_code == 400
    assert response.json() == {"error": "pretty must be 1, true, 0 or false (or empty: 1)"}


def test_a_pretty_document_of_a_store_view(monitor: JobMonitor) -> None:
    monitor.register("a")
    document = HealthDocument()
    view = {
        "scope": "fleet",
        "store": "degraded",
        "store_error": "OSError: disk full",
        "instances": [{"id": "i", "pid": 1, "alive": True, "last_seen": "x"}],
    }
    snapshot = document.snapshot(monitor._registry.health_rows(), _model.from_ns(0), 0.0, view)
    compact = json.loads(b"".join(snapshot.parts()))
    text = b"".join(snapshot.parts(Variant(pretty=True))).decode()
    assert json.loads(text) | {"duration_ms": 0} == compact | {"duration_ms": 0}
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    opened = json.loads(b"".join(snapshot.parts(Variant(open=True))))
    assert opened["store_error"] is None
    assert opened["store"] == "degraded"


def test_a_steady_filtered_poll_reuses_its_bytes(monitor: JobMonitor) -> None:
    for index in range(20):
        monitor.register(f"job{index}", critical=index % 2 == 0)
    selection = Selection(critical=True)
    first = monitor._health_snapshot()
    text = first.jobs.text(FULL, selection)
    pretty = first.jobs.text(Variant(pretty=True), selection)
    again = monitor._health_snapshot()
    assert again.jobs is first.jobs
    assert again.jobs.text(FULL, selection) is text
    assert again.jobs.text(Variant(pretty=True), selection) is pretty

    with monitor.run("job0"):
        pass
    changed = monitor._health_snapshot()
    assert changed.jobs is not first.jobs
    assert changed.jobs.text(FULL, selection) is not text
    assert changed.jobs.text(Variant(pretty=True), selection) is not pretty
    # The members of the jobs that did not change are reused, not rebuilt.
    before = first.jobs._members[Variant(pretty=True)]
    after = changed.jobs._members[Variant(pretty=True)]
    assert list(map(operator.is_, after, before)).count(False) == 1  # job0

    # Two changes later, with no pretty document asked for between them: still reused.
    with monitor.run("job1"):
        pass
    monitor._health_snapshot()
    with monitor.run("job2"):
        pass
    latest = monitor._health_snapshot().jobs
    latest.text(Variant(pretty=True), selection)
    members = latest._members[Variant(pretty=True)]
    assert list(map(operator.is_, members, after)).count(False) == 2  # job1, job2


def test_the_cache_of_filtered_texts_is_bounded(monitor: JobMonitor) -> None:
    names = [f"job{index}" for index in range(300)]
    for name in names:
        monitor.register(name)
    jobs = monitor._health_snapshot().jobs
    for index in range(200):
        jobs.text(FULL, Selection(names=frozenset({f"n{index}"})))
        assert len(jobs._texts) <= _health._CACHED_TEXTS
    full = jobs.text()
    budget = 4 * len(full) + (1 << 20)
    everything = frozenset(names)
    for index in range(20):  # selections of every job, indented: about 1.5 documents each
        selection = Selection(names=everything | {f"n{index}"})
        text = jobs.text(Variant(pretty=True), selection)
        assert len(text) > len(full)
        assert sum(map(len, jobs._texts.values())) - len(full) <= budget
    assert jobs.text() is full  # the whole document is always kept


# -- the open variant of a member, for any content -------------------------------------------

ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    [',"last_error":"x"', ',"created_at":', '"}', "\\", ',"metadata":{}']
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)


def fail_with(monitor: JobMonitor, name: str, metadata: dict[str, Any], message: str) -> None:
    with monitor.run(name) as run:
        run.set_metadata(metadata)
        raise RuntimeError(message)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1),
    metadata=st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4),
    message=ANY_TEXT,
)
def test_the_open_member_drops_exactly_the_error_text_and_metadata(
    name: str, metadata: dict[str, Any], message: str
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(shutdown_on_exit=False)
    monitor = JobMonitor(tracer_provider=provider, clock=FakeClock())
    try:
        with pytest.raises(RuntimeError):
            fail_with(monitor, name, metadata, message)
        snapshot = monitor._health_snapshot()
        full = json.loads(b"".join(snapshot.parts()))["jobs"][name]
        for pretty in (False, True):
            opened = json.loads(b"".join(snapshot.parts(Variant(open=True, pretty=pretty))))
            assert opened["jobs"][name] == full | {"last_error": None, "metadata": {}}
    finally:
        monitor.shutdown()
        provider.shutdown()


def test_a_member_whose_variant_cannot_be_built_is_marked(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch, internal_errors: InternalErrors
) -> None:
    monitor.register("good")
    monitor.register("bad", critical=True)
    real = _health._pretty_member

    def pretty_member(member: bytes) -> bytes:
        if member.startswith(b'"bad":') and b"last_error" in member:
            raise ValueError("a bug")
        return real(member)

    monkeypatch.setattr(_health, "_pretty_member", pretty_member)
    snapshot = monitor._health_snapshot()
    document = json.loads(b"".join(snapshot.parts(Variant(pretty=True))))
    assert document["jobs"]["good"]["status"] == "pending"
    assert document["jobs"]["bad"] == {
        "job_name": "bad",
        "status": "pending",
        "critical": True,
        "consecutive_failures": 0,
        "failure_threshold": 3,
        "error": "this job's status could not be shown",
    }
    assert [where for where, _ in internal_errors.take()] == ["health document variant"]


def test_an_unavailable_row_stays_marked_in_the_open_variant(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch, internal_errors: InternalErrors
) -> None:
    monitor.register("bad")

    def member_of(job: _job.Job, now_ns: int) -> bytes:
        raise ValueError("cannot")

    monkeypatch.setattr("jobpulse._job.member_of", member_of)
    snapshot = monitor._health_snapshot()
    full = json.loads(b"".join(snapshot.parts()))["jobs"]["bad"]
    opened = json.loads(b"".join(snapshot.parts(Variant(open=True))))["jobs"]["bad"]
    assert opened == full
    assert full["error"] == "this job's status could not be shown"
    assert [where for where, _ in internal_errors.take()] == ["health document row"]


# -- through uvicorn -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_poller_through_uvicorn(make_monitor: MakeMonitor) -> None:
    monitor = make_monitor(clock=None)
    with monitor.run("reports/nightly"):
        pass
    fail(monitor, "swaps")
    app = Starlette(routes=[Mount("/ops", routes=routes(monitor, metrics=False))])
    with serving(app) as url, httpx.Client(base_url=url + "/ops") as client:
        first = client.get(HEALTH_PATH)
        assert first.status_code == 206
        etag = first.headers["etag"]
        assert_not_modified(client.get(HEALTH_PATH, headers={"If-None-Match": etag}), etag)
        head = client.head(HEALTH_PATH, headers={"If-None-Match": etag})
        assert_not_modified(head, etag)
        assert "content-length" not in head.headers or head.headers["content-length"] == "0"

        filtered = client.get(HEALTH_PATH, params={"state": "failed", "pretty": "1"})
        assert filtered.status_code == 206
        assert list(json.loads(filtered.content)["jobs"]) == ["swaps"]
        assert filtered.text.startswith('{\n  "status": "degraded",')
        tag = filtered.headers["etag"]
        response = client.get(
            HEALTH_PATH,
            params={"state": "failed", "pretty": "1"},
            headers={"If-None-Match": f'"other", {tag}'},
        )
        assert_not_modified(response, tag)
        bad = client.get(HEALTH_PATH, params={"state": "nope"})
        assert bad.status_code == 400
        assert bad.json()["valid_states"] == VALID_STATES

        with monitor.run("swaps"):
            pass
        changed = client.get(HEALTH_PATH, headers={"If-None-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
