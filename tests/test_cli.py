"""``jobpulse status`` and ``jobpulse history``: from a store read directly (SQLite and a
real Redis) and from a real uvicorn server, with the monitoring-plugin exit codes. Most run
the command in this process (`run`, as the console script does); those marked so run it as
a process of its own (tests/test_cli_exec.py runs ``jobpulse exec`` that way)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import runpy
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

import jobpulse
from jobpulse import JobMonitor
from jobpulse._cli import MISSING_EXTRA, main
from jobpulse._cli import _commands as commands
from jobpulse._cli import _render as render
from jobpulse._cli import _sources as sources
from jobpulse._cli._commands import run
from jobpulse._cli._sources import HEALTH_PATH, StoreSource, health_url
from jobpulse.starlette import routes
from tests.conftest import default_interrupts
from tests.prometheus_server import free_port
from tests.uvicorn_server import serving

JOBPULSE = Path(sys.executable).parent / "jobpulse"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def first_line(self) -> str:
        return self.out.splitlines()[0]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def invoke(*args: str) -> Ran:
        capsys.readouterr()
        code = run(args)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return invoke


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JOBPULSE_TOKEN", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)


def environment(**more: str) -> dict[str, str]:
    """This process's environment without jobpulse's and OpenTelemetry's settings."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JOBPULSE_", "OTEL_")) and key not in ("NO_COLOR", "FORCE_COLOR")
    }
    return {**kept, **more}


def fail(monitor: JobMonitor, name: str, times: int = 1, message: str = "boom") -> None:
    for _ in range(times):
        with pytest.raises(RuntimeError), monitor.run(name):
            raise RuntimeError(message)


@pytest.fixture
def writer(fleet_url: str) -> Iterator[JobMonitor]:
    """A monitor writing to the test's store (real time: the command reads in real time)."""
    monitor = JobMonitor(store=fleet_url, service_name="jobpulse-exec")
    yield monitor
    monitor.shutdown()


def test_status_from_a_store_exits_by_the_fleets_health(
    cli: Any, fleet_url: str, writer: JobMonitor
) -> None:
    with writer.run("ingest"):
        pass
    assert writer.flush()
    ok = cli("status", "--store", fleet_url)
    assert (ok.code, ok.err) == (0, "")
    assert ok.first_line == (
        "JOBS HEALTHY - 1 job: 1 ok | jobs=1 ok=1 running=0 pending=0 failed=0 missed=0 stalled=0"
    )
    assert re.search(r"^ingest +success +now ", ok.out, re.MULTILINE)

    fail(writer, "reports", message="cannot write report: password=hunter2")
    assert writer.flush()
    degraded = cli("status", "--store", fleet_url)
    assert degraded.code == 1
    assert degraded.first_line.startswith("JOBS DEGRADED - 2 jobs: 1 ok, 1 failed | jobs=2 ok=1 ")
    assert "unknown: RuntimeError: cannot write report: password=***" in degraded.out
    assert "hunter2" not in degraded.out

    writer.register("payments", critical=True)
    fail(writer, "payments", times=3)
    assert writer.flush()
    unhealthy = cli("status", "--store", fleet_url)
    assert unhealthy.code == 2
    assert unhealthy.first_line.startswith("JOBS UNHEALTHY - 3 jobs: 1 ok, 2 failed |")
    assert re.search(r"^payments +failed \(critical\) .* 0 +3 +3 ", unhealthy.out, re.M)

    document = cli("status", "--store", fleet_url, "--json")
    assert document.code == 2
    body = json.loads(document.out)
    assert body["status"] == "unhealthy"
    assert body["scope"] == "fleet"
    assert body["store"] == "ok"
    assert [instance["service"] for instance in body["instances"]] == ["jobpulse-exec"]
    assert set(body["jobs"]) == {"ingest", "payments", "reports"}
    assert body["jobs"]["payments"]["consecutive_failures"] == 3
    assert body["summary"]["total_jobs"] == 3
    # The same document a server's route serves (with the same store).
    assert set(body) == set(writer.health().to_dict())


def test_an_empty_store_is_healthy(cli: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    JobMonitor(store=url).shutdown()  # makes the file, with no job
    ran = cli("status", "--store", url)
    assert (ran.code, ran.out.strip()) == (
        0,
        "JOBS HEALTHY - 0 jobs | jobs=0 ok=0 running=0 pending=0 failed=0 missed=0 stalled=0",
    )


def test_history_from_a_store(cli: Any, fleet_url: str, writer: JobMonitor) -> None:
    writer.register("backup", critical=True)
    for index in range(3):
        with writer.run("backup"):
            pass
        if index == 1:
            fail(writer, "backup", message="Traceback...\nOSError: disk full")
    fail(writer, "backup", message="Traceback...\nValueError: bad row")
    assert writer.flush()
    ran = cli("history", "backup", "--store", fleet_url)
    assert ran.code == 1
    assert ran.first_line == (
        "JOB DEGRADED - backup: failed, 1 failed in a row (unknown) | runs=5 failures_in_a_row=1"
    )
    lines = ran.out.splitlines()
    assert lines[1] == "last error: RuntimeError: Traceback..."
    rows = [line for line in lines if re.match(r"^\d{4}-", line)]
    outcomes = [re.findall(r" (success|failed)\b *(\w*) *$", row)[0] for row in rows]
    assert outcomes == [
        ("failed", "unknown"),
        ("success", ""),
        ("failed", "unknown"),
        ("success", ""),
        ("success", ""),
    ]
    limited = cli("history", "backup", "--store", fleet_url, "--limit", "2", "--json")
    body = json.loads(limited.out)
    assert limited.code == 1
    assert [run["outcome"] for run in body["history"]] == ["failed", "success"]
    assert body["job"]["job_name"] == "backup"
    assert body["status"] == "degraded"
    assert cli("history", "backup", "--store", fleet_url, "--limit", "0").code == 1

    unknown = cli("history", "nope", "--store", fleet_url)
    assert unknown.code == 3
    assert unknown.out == ""
    assert unknown.err == f"UNKNOWN: no job named 'nope' at {fleet_url}\n"


def test_a_redis_store_is_read_by_its_service_and_namespace(
    cli: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"ns{uuid.uuid4().hex[:8]}"
    monitor = JobMonitor(store=redis_url, namespace=namespace, service_name="billing")
    try:
        fail(monitor, "invoices")
        assert monitor.flush()
    finally:
        monitor.shutdown()
    found = cli("status", "--store", redis_url, "--service", "billing", "--namespace", namespace)
    assert found.code == 1
    assert found.first_line.startswith("JOBS DEGRADED - 1 job: 1 failed |")
    # Another service's keys (jobpulse-exec's, by default): no store there.
    elsewhere = cli("status", "--store", redis_url, "--namespace", namespace)
    assert elsewhere.code == 3
    assert "holds no jobpulse store" in elsewhere.err
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing")
    assert cli("history", "invoices", "--store", redis_url, "--namespace", namespace).code == 1


def test_the_module_runs_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["jobpulse", "--version"])
    monkeypatch.delitem(sys.modules, "jobpulse._cli.__main__", raising=False)
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("jobpulse._cli", run_name="__main__")
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"jobpulse, version {jobpulse.__version__}\n"


def test_where_to_read_must_be_given_once(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    neither = cli("status")
    assert neither.code == 3
    assert neither.err.startswith("UNKNOWN: where are the jobs? give --url URL")
    both = cli("status", "--url", "http://127.0.0.1:9", "--store", "sqlite:///x.db")
    assert (both.code, both.err) == (3, "UNKNOWN: give --url or --store, not both\n")
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    JobMonitor(store=url).shutdown()
    monkeypatch.setenv("JOBPULSE_STORE", url)
    assert cli("status").code == 0  # the store of the environment
    # An explicit --url wins over the environment's store.
    closed = f"http://127.0.0.1:{free_port()}"
    refused = cli("status", "--url", closed)
    assert refused.code == 3
    assert refused.err == f"UNKNOWN: cannot reach {closed}{HEALTH_PATH}: Connection refused\n"


def test_a_missing_sqlite_file_is_unknown_and_stays_missing(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    for command in (("status",), ("history", "backup")):
        ran = cli(*command, "--store", f"sqlite:///{path}")
        assert ran.code == 3
        assert ran.err.startswith(f"UNKNOWN: store sqlite:///{path}: no such file {path}")
    assert not path.exists()


def test_a_store_that_cannot_be_read_is_unknown(cli: Any, redis_url: str) -> None:
    port = free_port()
    ran = cli("status", "--store", f"redis://:secret@127.0.0.1:{port}/0")
    assert ran.code == 3
    assert ran.err.startswith(
        f"UNKNOWN: store redis://:***@127.0.0.1:{port}/0 cannot be read: ConnectionError:"
    )
    assert "secret" not in ran.err
    bad = cli("status", "--store", "postgres://db/jobs")
    assert bad.code == 3
    assert "unsupported URL scheme 'postgres'" in bad.err


def test_usage_errors_exit_3_not_2(cli: Any) -> None:
    for args in (
        ("status", "--nope"),
        ("status", "--store", "sqlite:///x.db", "--watch", "--json"),
        ("history", "x", "--store", "sqlite:///x.db", "--limit", "-1"),
        ("history",),
        ("nope",),
    ):
        ran = cli(*args)
        assert ran.code == 3, args
        assert "Error:" in ran.err
    assert cli("--help").code == 0
    version = cli("--version")
    assert (version.code, version.out) == (0, f"jobpulse, version {jobpulse.__version__}\n")


# -- colour -------------------------------------------------------------------------------


def test_colour_only_on_a_terminal_and_without_no_color(
    cli: Any, fleet_url: str, writer: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail(writer, "reports")
    assert writer.flush()
    plain = cli("status", "--store", fleet_url)
    assert not ANSI.search(plain.out)
    monkeypatch.setenv("FORCE_COLOR", "1")  # as on a terminal
    coloured = cli("status", "--store", fleet_url)
    assert "\x1b[1;33mJOBS DEGRADED" in coloured.out
    assert "\x1b[31mfailed" in coloured.out
    monkeypatch.setenv("NO_COLOR", "1")
    uncoloured = cli("status", "--store", fleet_url)
    assert not re.search(r"\x1b\[[0-9;]*3[0-7]m", uncoloured.out)
    assert ANSI.sub("", uncoloured.out) == ANSI.sub("", coloured.out)


# -- --watch ------------------------------------------------------------------------------


@pytest.mark.parametrize("terminal", [False, True])
def test_watch_draws_again_until_ctrl_c_then_exits_0(
    cli: Any,
    fleet_url: str,
    writer: JobMonitor,
    monkeypatch: pytest.MonkeyPatch,
    terminal: bool,
) -> None:
    if terminal:
        monkeypatch.setenv("FORCE_COLOR", "1")
    with writer.run("ingest"):
        pass
    assert writer.flush()
    calls = 0
    health = StoreSource.health

    def counted(self: StoreSource) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:  # the store fails once: shown, and the watch goes on
            self._url = "sqlite:///nowhere.db"
            self._reader = None
        if calls == 3:
            raise KeyboardInterrupt  # Ctrl-C
        return health(self)

    monkeypatch.setattr(StoreSource, "health", counted)
    ran = cli("status", "--store", fleet_url, "--watch", "0.1")
    assert ran.code == 0
    text = ANSI.sub("", ran.out)
    assert "JOBS HEALTHY - 1 job: 1 ok" in text
    assert "UNKNOWN: store sqlite:///nowhere.db: no such file" in text


def test_watch_ends_with_ctrl_c_as_a_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    JobMonitor(store=url).shutdown()
    process = subprocess.Popen(
        [sys.executable, "-m", "jobpulse._cli", "status", "--store", url, "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(),
        preexec_fn=default_interrupts,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the first frame is out: the loop runs
        assert first.startswith(b"JOBS HEALTHY - 0 jobs")
        process.send_signal(2)  # SIGINT, as Ctrl-C sends
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert b"Traceback" not in err


# -- a real server --------------------------------------------------------------------------


TOKEN = "s3cret-token"
#: What a server that is not jobpulse may answer: values JSON allows and jobpulse never
#: writes (NaN, Infinity, a time without its offset), and escape sequences.
_JOB = {
    "job_name": "j",
    "status": "success",
    "consecutive_failures": 0,
    "last_run_time": "2026-01-01T00:00:00.000Z",
    "last_duration_ms": 5.0,
    "success_count": 1,
    "failure_count": 0,
}
_ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mFAKE OK\x9b0m"


def _raw(**job: object) -> dict[str, Any]:
    name = str(job.pop("job_name", "j"))
    return {
        "status": "healthy",
        "timestamp": "2026-01-01T00:01:00.000Z",
        "jobs": {name: {**_JOB, "job_name": name, **job}},
    }


RAW = {
    "nan": _raw(last_duration_ms=float("nan")),
    "infinity": _raw(last_duration_ms=float("inf")),
    "naive": _raw(last_run_time="2026-01-01T00:00:00"),
    "escapes": _raw(
        job_name="\x1b[2J\x1b[32mall good",
        status="failed",
        consecutive_failures=1,
        last_error_category="\x1b[1mx",
        last_error=f"first\n{_ESCAPES}",
    ),
}
RAW_RUN = {
    "started_at": "2026-01-01T00:00:00",
    "duration_ms": float("-inf"),
    "outcome": "success\x1b[8m",
    "error_category": "\x9b2J",
}


@dataclass
class Server:
    monitor: JobMonitor
    base: str


@pytest.fixture
def server() -> Iterator[Server]:
    """A real uvicorn server on 127.0.0.1 with jobpulse's routes under ``/ops`` (open) and
    ``/secure`` (a token), a redirect to ``/secure`` and a route that answers text."""
    monitor = JobMonitor()

    async def moved(request: Any) -> RedirectResponse:
        return RedirectResponse(f"/secure{HEALTH_PATH}")

    async def text(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    def answer(status: int, content: object) -> Any:
        async def endpoint(request: Any) -> JSONResponse:
            return JSONResponse(content, status_code=status)

        return endpoint

    async def huge(request: Any) -> PlainTextResponse:
        return PlainTextResponse("x" * 2000)

    async def slow(request: Any) -> PlainTextResponse:
        await asyncio.sleep(1.0)  # past the client's 0.2 s timeout
        return PlainTextResponse("late")

    async def raw(request: Any) -> Response:
        """A document as a hostile or odd server writes it (`RAW`), for status and history."""
        document = RAW[request.path_params["key"]]
        if "name" in request.path_params:
            name = next(iter(document["jobs"]))
            document = {
                "status": document["status"],
                "timestamp": document["timestamp"],
                "job": document["jobs"][name],
                "history": [RAW_RUN],
            }
        return Response(json.dumps(document), media_type="application/json")

    app = Starlette(
        routes=[
            Mount("/ops", routes=routes(monitor, metrics=False)),
            Mount("/secure", routes=routes(monitor, metrics=False, auth=TOKEN)),
            Route(f"/moved{HEALTH_PATH}", moved),
            Route(f"/text{HEALTH_PATH}", text),
            Route(f"/forbidden{HEALTH_PATH}", answer(403, {"error": "forbidden"})),
            Route(f"/broken{HEALTH_PATH}", answer(500, {"error": "db down: password=x1"})),
            Route(f"/odd{HEALTH_PATH}/{{name}}", answer(200, {"status": "healthy"})),
            Route(f"/huge{HEALTH_PATH}", huge),
            Route(f"/slow{HEALTH_PATH}", slow),
            Route(f"/raw/{{key}}{HEALTH_PATH}", raw),
            Route(f"/raw/{{key}}{HEALTH_PATH}/{{name}}", raw),
        ]
    )
    try:
        with serving(app, "uvicorn-cli-test") as base:
            yield Server(monitor, base)
    finally:
        monitor.shutdown()


@pytest.mark.slow
def test_status_and_history_from_a_real_server(cli: Any, server: Server) -> None:
    monitor, base = server.monitor, server.base
    with monitor.run("ingest"):
        pass
    ok = cli("status", "--url", f"{base}/ops")
    assert (ok.code, ok.err) == (0, "")
    assert ok.first_line.startswith("JOBS HEALTHY - 1 job: 1 ok |")
    # The document's own URL works as well as the base URL, with a trailing slash too.
    assert cli("status", "--url", f"{base}/ops{HEALTH_PATH}/").code == 0

    fail(monitor, "reports", message="password=hunter2 was wrong")
    degraded = cli("status", "--url", f"{base}/ops")
    assert degraded.code == 1
    assert "unknown: RuntimeError: password=*** was wrong" in degraded.out

    monitor.register("payments", critical=True)
    fail(monitor, "payments", times=3)
    unhealthy = cli("status", "--url", f"{base}/ops", "--json")  # a 503 answer
    assert unhealthy.code == 2
    body = json.loads(unhealthy.out)
    assert body["status"] == "unhealthy"
    assert body["scope"] == "process"
    assert body["jobs"]["payments"]["consecutive_failures"] == 3

    history = cli("history", "payments", "--url", f"{base}/ops", "--limit", "2")
    assert history.code == 2
    assert history.first_line.startswith("JOB UNHEALTHY - payments: failed, 3 failed in a row")
    assert len([line for line in history.out.splitlines() if "failed   unknown" in line]) == 2
    as_json = json.loads(cli("history", "reports", "--url", f"{base}/ops", "--json").out)
    assert as_json["job"]["last_error"] == "RuntimeError: password=*** was wrong"
    unknown = cli("history", "nope", "--url", f"{base}/ops")
    assert (unknown.code, unknown.err) == (
        3,
        f"UNKNOWN: no job named 'nope' at {base}/ops{HEALTH_PATH}\n",
    )
    odd = cli("history", "a b/c?d", "--url", f"{base}/ops")  # quoted into one path segment
    assert odd.err == f"UNKNOWN: no job named 'a b/c?d' at {base}/ops{HEALTH_PATH}\n"


@pytest.mark.slow
def test_a_server_with_a_token(cli: Any, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    fail(server.monitor, "reports", message="disk full")
    secure = f"{server.base}/secure"
    # The health document is open (for probes); its error texts are not.
    open_document = json.loads(cli("status", "--url", secure, "--json").out)
    assert open_document["jobs"]["reports"]["last_error"] is None
    refused = cli("history", "reports", "--url", secure)
    assert refused.code == 3
    assert refused.err == (
        f"UNKNOWN: {secure}{HEALTH_PATH}/reports?limit=20 answered 401 unauthorized: give its "
        "token with --token or JOBPULSE_TOKEN\n"
    )
    wrong = cli("history", "reports", "--url", secure, "--token", "nope")
    assert wrong.err.endswith("refused the token (401 unauthorized)\n")
    monkeypatch.setenv("JOBPULSE_TOKEN", TOKEN)
    allowed = cli("history", "reports", "--url", secure)
    assert allowed.code == 1
    assert "last error: RuntimeError: disk full" in allowed.out
    shown = json.loads(cli("status", "--url", secure, "--json").out)
    assert shown["jobs"]["reports"]["last_error"] == "RuntimeError: disk full"
    # A redirect is followed without the token.
    moved = json.loads(cli("status", "--url", f"{server.base}/moved", "--json").out)
    assert moved["jobs"]["reports"]["last_error"] is None
    assert cli("history", "reports", "--url", f"{server.base}/moved").code == 3


@pytest.mark.slow
def test_answers_that_are_not_health_documents_are_unknown(
    cli: Any, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "MAX_ANSWER_BYTES", 1000)
    base = server.base
    for url, reason in (
        (
            f"{base}/elsewhere",
            f"{base}/elsewhere{HEALTH_PATH} answered 404: no jobpulse health route there",
        ),
        (f"{base}/text", f"{base}/text{HEALTH_PATH} did not answer a jobpulse health document"),
        ("ftp://example.com", "--url must be an http:// or https:// URL, got 'ftp://example.com'"),
        ("https://user:pw@", "--url must be an http:// or https:// URL, got 'https://user:***@'"),
        ("http://u:pw@h:x/", "--url must be an http:// or https:// URL, got 'http://u:***@h:x/'"),
        (f"{base}/forbidden", f"{base}/forbidden{HEALTH_PATH} answered 403 forbidden"),
        (f"{base}/broken", f"{base}/broken{HEALTH_PATH} answered HTTP 500 (db down: password=***)"),
        (f"{base}/huge", f"the answer of {base}/huge{HEALTH_PATH} is larger than 1000 bytes"),
    ):
        ran = cli("status", "--url", url)
        assert (ran.code, ran.out, ran.err) == (3, "", f"UNKNOWN: {reason}\n")
    odd = cli("history", "x", "--url", f"{base}/odd")
    assert (
        odd.err == f"UNKNOWN: {base}/odd{HEALTH_PATH}/x?limit=20 did not answer a job's document\n"
    )
    late = cli("status", "--url", f"{base}/slow", "--timeout", "0.2")
    assert late.err == f"UNKNOWN: no answer from {base}/slow{HEALTH_PATH} within 0.2s\n"


@pytest.mark.slow
def test_status_exit_codes_as_processes_against_a_real_server(server: Server) -> None:
    """What a Kubernetes exec probe or a Nagios check runs: the console script once, the
    module for the rest."""
    monitor = server.monitor

    def check(command: Sequence[str], url: str = f"{server.base}/ops") -> tuple[int, str]:
        done = subprocess.run(
            [*command, "status", "--url", url],
            capture_output=True,
            text=True,
            env=environment(),
            timeout=60,
            check=False,
        )
        return done.returncode, (done.stdout.splitlines() or [done.stderr])[0]

    module = [sys.executable, "-m", "jobpulse._cli"]
    with monitor.run("ingest"):
        pass
    assert check([str(JOBPULSE)]) == (
        0,
        "JOBS HEALTHY - 1 job: 1 ok | jobs=1 ok=1 running=0 pending=0 failed=0 missed=0 stalled=0",
    )
    fail(monitor, "reports")
    assert check(module)[0] == 1
    monitor.register("payments", critical=True)
    fail(monitor, "payments", times=3)
    assert check(module)[0] == 2
    closed = f"http://127.0.0.1:{free_port()}"
    assert check(module, closed) == (
        3,
        f"UNKNOWN: cannot reach {closed}{HEALTH_PATH}: Connection refused\n",
    )


def test_without_click_or_rich_the_command_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for missing in ("click", "rich"):
        monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
        with pytest.raises(SystemExit) as exited:
            main(["status"])
        assert exited.value.code == 3
        assert capsys.readouterr().err == MISSING_EXTRA + "\n"
        monkeypatch.undo()
    assert MISSING_EXTRA == "jobpulse's command needs: pip install 'jobpulse[cli]'"
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0


def test_health_url_takes_a_base_url_or_the_documents() -> None:
    document = f"http://host:8000{HEALTH_PATH}"
    assert health_url("http://host:8000") == document
    assert health_url("http://host:8000/") == document
    assert health_url(document) == document
    assert health_url(document + "/") == document
    assert health_url("https://host/ops/?x=1#y") == f"https://host/ops{HEALTH_PATH}?x=1"
    from jobpulse._http import HEALTH_PATH as served

    assert served == HEALTH_PATH


# -- what the tables show -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("milliseconds", "shown"),
    [
        (None, "-"),
        (True, "-"),
        (0.25, "0.25ms"),
        (12.4, "12ms"),
        (1500, "1.5s"),
        (61_000, "1m01s"),
        (3_725_000, "1h02m"),
    ],
)
def test_durations(milliseconds: object, shown: str) -> None:
    assert render._duration(milliseconds) == shown


@pytest.mark.parametrize(
    ("moment", "shown"),
    [
        (None, "-"),
        ("not a time", "-"),
        ("2026-01-01T12:00:00.400Z", "now"),
        ("2026-01-01T11:59:48.000Z", "12s ago"),
        ("2026-01-01T12:03:00.000Z", "in 3m"),
        ("2026-01-01T09:55:00.000Z", "2h05m ago"),
        ("2025-12-29T11:00:00.000Z", "3d01h ago"),
    ],
)
def test_relative_times_are_from_the_documents_own_time(moment: object, shown: str) -> None:
    now = render._time("2026-01-01T12:00:00.000Z")
    assert render._relative(render._time(moment), now) == shown
    assert render._relative(now, None) == "2026-01-01T12:00:00+00:00"


def test_a_summary_notes_a_store_the_server_cannot_use() -> None:
    document: dict[str, Any] = {"status": "healthy", "jobs": {}, "store": "unavailable"}
    assert str(render.status_summary(document)).startswith(
        "JOBS HEALTHY - 0 jobs (store unavailable: one process's view) |"
    )
    document["store"] = "degraded"
    assert "(the store does not take the server's writes)" in str(render.status_summary(document))
    assert render.exit_code("healthy") == 0
    assert render.exit_code("nonsense") == 3
    assert render.exit_code(None) == 3


# -- what a server, its URL or a token may hold ---------------------------------------------


@pytest.mark.slow
def test_a_urls_password_is_sent_as_basic_and_never_printed(cli: Any, server: Server) -> None:
    fail(server.monitor, "reports", message="disk full")
    host = server.base.removeprefix("http://")
    allowed = cli("history", "reports", "--url", f"http://ops:{TOKEN}@{host}/secure")
    assert allowed.code == 1
    assert "last error: RuntimeError: disk full" in allowed.out
    password = "pw-s3cret/x@y"  # percent-encoded in the URL, as it must be
    quoted = "pw-s3cret%2Fx%40y"
    closed = f"127.0.0.1:{free_port()}"
    for url, reason in (
        (
            f"http://ops:{quoted}@{host}/secure",
            f"{server.base}/secure{HEALTH_PATH}/reports"
            "?limit=20 refused the URL's user and password (401 unauthorized)",
        ),
        (
            f"http://ops:{quoted}@{closed}/",
            f"cannot reach http://{closed}{HEALTH_PATH}/reports?limit=20: Connection refused",
        ),
        (f"http://ops:{quoted}@127.0.0.1/", None),  # port 80
        (
            f"http://ops:{quoted}@a..b/",
            f"cannot request http://a..b{HEALTH_PATH}/reports"
            "?limit=20: encoding with 'idna' codec failed (UnicodeError: label empty or too long)",
        ),
        (f"http://ops:{quoted}@host.invalid/", None),  # a name that never resolves
        (f"http://{quoted}@{closed}/", None),  # the token as the whole user info
        (f"http://ops:{password}@{closed}/", None),  # not encoded: the parsers disagree
    ):
        ran = cli("history", "reports", "--url", url, "--timeout", "5")
        assert ran.code == 3, url
        assert ran.out == ""
        if reason is not None:
            assert ran.err == f"UNKNOWN: {reason}\n"
        for secret in (password, quoted, "s3cret"):
            assert secret not in ran.err
        assert cli("status", "--url", url, "--timeout", "5").err.count("s3cret") == 0


@pytest.mark.parametrize("token", ["tok\nX-Injected: 1", "tök€n", "tok\x7f", "tok\r\n"])
def test_a_token_a_header_cannot_carry_is_unknown(
    cli: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBPULSE_TOKEN", token)
    url = f"http://127.0.0.1:{free_port()}"
    for command in (("status",), ("history", "x")):
        ran = cli(*command, "--url", url)
        assert (ran.code, ran.out) == (3, "")
        assert ran.err == "UNKNOWN: the token holds characters an HTTP header cannot carry\n"


@pytest.mark.slow
def test_values_jobpulse_never_writes_are_shown_or_unknown(cli: Any, server: Server) -> None:
    for key in ("nan", "infinity", "naive"):
        ran = cli("status", "--url", f"{server.base}/raw/{key}")
        assert (ran.code, ran.err) == (0, ""), key
        duration = "-" if key != "naive" else "5ms"
        assert re.search(rf"^j +success +1m ago +{duration} ", ran.out, re.M), ran.out
        history = cli("history", "j", "--url", f"{server.base}/raw/{key}")
        assert (history.code, history.err) == (0, "")
        assert re.search(r"^2026-01-01T00:00:00 +1m ago +- ", history.out, re.M)


@pytest.mark.slow
def test_control_characters_from_a_server_are_escaped(cli: Any, server: Server) -> None:
    url = f"{server.base}/raw/escapes"
    printed = [
        cli("status", "--url", url).out,
        cli("history", "\x1b[2J\x1b[32mall good", "--url", url).out,
        cli("status", "--url", url, "--json").out,
        cli("history", "\x1b[2J\x1b[32mall good", "--url", url, "--json").out,
    ]
    for text in printed:
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", text), repr(text)
    table, history = printed[0], printed[1]
    assert "\\x1b[2J\\x1b[32mall good  failed" in table
    assert "\\x1b[1mx: \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mFAKE OK\\x9b0m" in table
    assert "last error: first\n\\x1b]0;pwned\\x07" in history
    assert re.search(r"success\\x1b\[8m +\\x9b2J", history)
    assert json.loads(printed[2])["jobs"]["\x1b[2J\x1b[32mall good"]["last_error"].endswith(
        "\x9b0m"
    )


def test_an_unexpected_error_is_one_unknown_line(
    cli: Any, fleet_url: str, writer: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    with writer.run("ingest"):
        pass
    assert writer.flush()

    def broken(*args: object, **kwargs: object) -> Any:
        raise RuntimeError("bug with password=hunter2\nand a second line")

    reason = "jobpulse failed: RuntimeError: bug with password=***\\x0aand a second line"
    monkeypatch.setattr(commands, "status_renderable", broken)
    monkeypatch.setattr(commands, "history_renderable", broken)
    for args in (("status",), ("history", "ingest")):
        ran = cli(*args, "--store", fleet_url)
        assert (ran.code, ran.out, ran.err) == (3, "", f"UNKNOWN: {reason}\n")
    monkeypatch.setattr(commands, "_json", broken)
    assert cli("status", "--store", fleet_url, "--json").err == f"UNKNOWN: {reason}\n"


def test_a_name_the_output_encoding_cannot_show_is_escaped(
    fleet_url: str, writer: JobMonitor
) -> None:
    with writer.run("café-€"):
        pass
    assert writer.flush()
    done = subprocess.run(
        [str(JOBPULSE), "status", "--store", fleet_url],
        capture_output=True,
        env=environment(PYTHONIOENCODING="ascii"),
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert re.search(rb"^caf\\xe9-\\u20ac +success ", done.stdout, re.M)


class _Trickle(BaseHTTPRequestHandler):
    """Headers at once, then one byte of the body every 0.1 s (30 s at most)."""

    protocol_version = "HTTP/1.1"
    stop = threading.Event()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        deadline = time.monotonic() + 30
        try:
            while not self.stop.wait(0.1) and time.monotonic() < deadline:
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:  # the client gave up
            pass


def test_the_timeout_bounds_the_whole_answer(cli: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    thread = threading.Thread(target=server.serve_forever, name="trickle-server", daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        started = time.monotonic()
        ran = cli("status", "--url", base, "--timeout", "1")
        assert (ran.code, ran.out) == (3, "")
        assert ran.err == f"UNKNOWN: no answer from {base}{HEALTH_PATH} within 1s\n"
        assert time.monotonic() - started < 15  # the server would trickle for 30 s
    finally:
        _Trickle.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()
        _Trickle.stop.clear()
