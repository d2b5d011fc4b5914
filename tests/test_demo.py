"""The icy-backend demo (examples/icy_backend) as `make demo` runs it: a real process serving
real HTTP on 127.0.0.1, its jobs on a fast schedule, stopped by real signals."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import jobpulse
from jobpulse.store import SQLiteStore
from tests.demo_process import (
    DEMO_COMMAND,
    HEALTH_PATH,
    ROOT,
    Demo,
    poll,
    start_demo,
    store_url,
)

pytestmark = pytest.mark.slow

#: The spec's jobs, and whether each is critical.
JOBS = {
    "btc_transaction_indexing": True,
    "icy_transaction_indexing": True,
    "icy_swap_transaction_indexing": False,
    "swap_request_processing": True,
    "pending_btc_transaction_processing": False,
}
STALLING_JOB = "pending_btc_transaction_processing"
#: The password in the demo's bitcoind URL, which some of its errors quote.
SECRET = "b7c-n0de-s3cret"
#: A run every second, 40% of them failing, every 3rd run of the stalling job hanging for
#: 3 s (its stall_after is 2 s); any free port.
FAST = {
    "INDEX_INTERVAL": "1",
    "DEMO_SEED": "7",
    "DEMO_FAILURE_RATE": "0.4",
    "DEMO_STALL_EVERY": "3",
    "HOST": "127.0.0.1",
    "PORT": "0",
}
HEALTH_OF_HTTP_STATUS = {200: "healthy", 206: "degraded", 503: "unhealthy"}


@pytest.fixture(name="start_demo")
def start_demo_fixture(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """Start the demo with the FAST settings (overridden by keyword arguments) and wait for
    its ready line; a demo still running at the end of the test is killed."""
    demos: list[Demo] = []

    def start(**overrides: str) -> Demo:
        demo = start_demo(tmp_path, {**FAST, **overrides}, name=f"demo{len(demos)}")
        demos.append(demo)
        return demo

    yield start
    for demo in demos:
        demo.kill()


def get(client: httpx.Client, path: str) -> httpx.Response:
    response = client.get(path)
    assert SECRET not in response.text
    return response


def check_health(response: httpx.Response) -> dict[str, Any]:
    """The health document, checked against the rules that hold at every moment."""
    document: dict[str, Any] = response.json()
    assert document["status"] == HEALTH_OF_HTTP_STATUS[response.status_code]
    jobs: dict[str, dict[str, Any]] = document["jobs"]
    assert set(jobs) == set(JOBS)
    states = [job["status"] for job in jobs.values()]
    if "stalled" in states:
        assert response.status_code == 503
    if response.status_code == 206:
        assert any(job["consecutive_failures"] > 0 for job in jobs.values())
    # The scheduler runs every job on the schedule it registered: nothing is ever missed.
    assert all(job["missed_count"] == 0 for job in jobs.values()), jobs
    return document


def first_document(client: httpx.Client) -> dict[str, Any]:
    """The first health document that has the demo's jobs. With a store, the document is the
    store's: the jobs the demo registered at start are in it from its first write, up to a
    flush interval (1 s) after it listens."""

    def jobs_written() -> httpx.Response | None:
        response = get(client, HEALTH_PATH)
        return response if response.json()["jobs"] else None

    return check_health(poll(jobs_written, 5, "the first write to the store"))


def test_demo_shows_runs_failures_and_a_stall_then_stops_on_sigint(
    start_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    demo = start_demo()
    banner, _ = demo.output()
    assert f"store:    {store_url(tmp_path, 'demo0')} (from JOBPULSE_STORE)" in banner
    with httpx.Client(base_url=demo.base_url, timeout=5) as client:
        first = first_document(client)
        assert first["scope"] == "fleet"
        assert first["store"] == "ok"
        for name, critical in JOBS.items():
            job = first["jobs"][name]
            assert job["job_name"] == name
            assert job["critical"] is critical
            assert job["schedule"] == "@every 1s"
            assert job["stall_after_ms"] == 2000
        first_successes = sum(job["success_count"] for job in first["jobs"].values())

        seen_codes: set[int] = set()
        seen: set[str] = set()

        def everything_seen() -> bool | None:
            document = check_health(response := get(client, HEALTH_PATH))
            seen_codes.add(response.status_code)
            jobs = document["jobs"].values()
            if sum(job["success_count"] for job in jobs) >= first_successes + 10:
                seen.add("runs")
            if any(job["failure_count"] > 0 and job["last_error"] for job in jobs):
                seen.add("failures")
            if document["jobs"][STALLING_JOB]["status"] == "stalled":
                seen.add("stall")
            if document["jobs"][STALLING_JOB]["skipped_count"] > 0:
                seen.add("skipped")  # APScheduler refused a tick while the stalled run went on
            if any("icy-indexer:***@btc-node" in (job["last_error"] or "") for job in jobs):
                seen.add("redacted")
            expected = {"runs", "failures", "stall", "skipped", "redacted"}
            return True if {206, 503} <= seen_codes and seen == expected else None

        poll(everything_seen, 25, "runs, failures, a stall, a skip, a redacted error, 206, 503")

        job_response = get(client, f"{HEALTH_PATH}/btc_transaction_indexing")
        assert job_response.status_code in HEALTH_OF_HTTP_STATUS
        job_document = job_response.json()
        assert job_document["status"] == HEALTH_OF_HTTP_STATUS[job_response.status_code]
        assert job_document["job"]["job_name"] == "btc_transaction_indexing"
        assert job_document["history"]
        assert {run["outcome"] for run in job_document["history"]} <= {"success", "failed"}
        assert get(client, f"{HEALTH_PATH}/no_such_job").status_code == 404
        page = get(client, "/jobs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert all(f">{name}<" in page.text for name in JOBS)

        metrics = get(client, "/metrics")
        assert metrics.status_code == 200
        runs = re.compile(
            r"^icy_backend_background_job_runs_total\{(?=[^}]*job_name=\"btc_transaction_indexing\")"
            r"(?=[^}]*status=\"success\")[^}]*\} [1-9]",
            re.MULTILINE,
        )
        assert runs.search(metrics.text), metrics.text
        for kind in ("btc", "icy", "swap"):
            assert f'icy_backend_background_jobs_pending{{kind="{kind}"}}' in metrics.text
        assert "icy_backend_background_job_duration_seconds_bucket" in metrics.text

    code, seconds = demo.stop(signal.SIGINT)
    out, err = demo.output()
    assert code == 0, err
    assert seconds < 5
    assert "Traceback" not in err
    assert SECRET not in out + err
    assert "job 'pending_btc_transaction_processing' stalled" in err
    assert '"job.name": "btc_transaction_indexing"' in out  # spans, printed to stdout
    assert err.rstrip().endswith("icy_backend: stopped")


def test_demo_stops_on_sigterm_cancelling_a_hung_run(start_demo: Callable[..., Demo]) -> None:
    # Every run of the stalling job hangs for 6 s: SIGTERM must not wait for it.
    demo = start_demo(INDEX_INTERVAL="2", DEMO_STALL_EVERY="1", DEMO_CONSOLE_SPANS="0")
    with httpx.Client(base_url=demo.base_url, timeout=5) as client:
        first_document(client)

        def stalled() -> bool | None:
            document = get(client, HEALTH_PATH).json()
            return True if document["jobs"][STALLING_JOB]["status"] == "stalled" else None

        poll(stalled, 15, f"{STALLING_JOB} to stall")

    code, seconds = demo.stop(signal.SIGTERM)
    out, err = demo.output()
    assert code == 0, err
    assert seconds < 1.5  # the hung run had 2 s to go
    assert "Traceback" not in err
    assert f"job '{STALLING_JOB}' failed after" in err
    assert "(cancelled, " in err
    assert '"job.name"' not in out  # DEMO_CONSOLE_SPANS=0
    assert err.rstrip().endswith("icy_backend: stopped")


def test_make_demo_runs_the_command_tested_here() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].splitlines()[1]
    assert recipe.strip() == "$(PY) -m " + DEMO_COMMAND[-1]


def counts(jobs: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    return {name: (job["success_count"], job["failure_count"]) for name, job in jobs.items()}


def test_a_restarted_demo_keeps_its_counts_and_history_in_its_store(
    start_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    path = tmp_path / "shared.db"
    settings = {"JOBPULSE_STORE": f"sqlite:///{path}", "DEMO_STALL_EVERY": "0"}
    first = start_demo(**settings, DEMO_CONSOLE_SPANS="0")
    with httpx.Client(base_url=first.base_url, timeout=5) as client:

        def enough_runs() -> bool | None:
            jobs = counts(get(client, HEALTH_PATH).json()["jobs"])
            return True if set(jobs) == set(JOBS) and min(map(sum, jobs.values())) >= 4 else None

        poll(enough_runs, 20, "4 runs of every job")
    code, _ = first.stop(signal.SIGINT)
    assert code == 0

    # What the first demo left in its store, its last write at shutdown included.
    store = SQLiteStore(path)
    try:
        read = store.read(None, now_ns=time.time_ns(), instance_ttl_ns=10_000_000_000)
    finally:
        store.close()
    before = {row.name: (row.success_count, row.failure_count) for row in read.rows}
    runs_before = {
        name: sum(len(runs) for batch, runs in read.runs if batch == name) for name in before
    }
    assert set(before) == set(JOBS)
    assert min(map(sum, before.values())) >= 4
    assert runs_before == {name: sum(pair) for name, pair in before.items()}
    (instance,) = read.instances
    assert instance.pid == first.process.pid
    assert instance.stopped

    second = start_demo(**settings, DEMO_CONSOLE_SPANS="0")
    with httpx.Client(base_url=second.base_url, timeout=5) as client:
        # At once, before the new process wrote anything: what the store holds.
        document = get(client, HEALTH_PATH).json()
        assert document["scope"] == "fleet"
        assert set(document["jobs"]) == set(JOBS)
        for name, (successes, failures) in counts(document["jobs"]).items():
            assert successes >= before[name][0], name
            assert failures >= before[name][1], name

        def both_instances() -> dict[int, bool] | None:
            listed = get(client, HEALTH_PATH).json()["instances"]
            alive = {item["pid"]: item["alive"] for item in listed}
            return alive if second.process.pid in alive else None

        alive = poll(both_instances, 5, "the restarted demo's first write")
        assert alive == {first.process.pid: False, second.process.pid: True}
        job = get(client, f"{HEALTH_PATH}/btc_transaction_indexing?limit=10000").json()
        assert len(job["history"]) >= runs_before["btc_transaction_indexing"]
    code, _ = second.stop(signal.SIGINT)
    assert code == 0


def test_demo_without_a_store_when_the_variable_is_empty(
    start_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    demo = start_demo(JOBPULSE_STORE="", DEMO_CONSOLE_SPANS="0")
    banner, _ = demo.output()
    assert "store:    none (JOBPULSE_STORE is empty)" in banner
    with httpx.Client(base_url=demo.base_url, timeout=5) as client:
        document = get(client, HEALTH_PATH).json()
    assert document["scope"] == "process"
    assert "instances" not in document
    assert not list(tmp_path.glob("*.db"))


def test_demo_stops_on_a_store_it_cannot_open(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["JOBPULSE_STORE"] = f"postgres://icy:{SECRET}@db/jobs"
    demo = Demo.launch(DEMO_COMMAND, tmp_path, "bad-store", env)
    try:
        code = demo.process.wait(timeout=30)
    finally:
        demo.kill()
    out, err = demo.output()
    assert code == 2, err
    assert "icy-backend demo: store 'postgres://icy:***@db/jobs': unsupported URL scheme" in err
    assert SECRET not in out + err
    assert "Traceback" not in err


@pytest.mark.usefixtures("otel_globals")
def test_demo_runs_without_its_default_store_if_it_cannot_be_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from examples.icy_backend.app import _setup
    from examples.icy_backend.settings import DemoSettings

    (tmp_path / "read-only").write_text("a file where the folder would be")
    settings = dataclasses.replace(
        DemoSettings.from_environ({"DEMO_CONSOLE_SPANS": "0"}),
        store=f"sqlite:///{tmp_path}/read-only/icy_backend.db",
    )
    named = dataclasses.replace(settings, store_from_environment=True)
    with pytest.raises(jobpulse.StoreError, match="cannot create the folder"):
        _setup(named)  # a store the user named is not silently dropped
    with caplog.at_level(logging.WARNING, logger="icy_backend"):
        monitor, opened = _setup(settings)
    assert opened is False
    assert monitor._store is None
    assert "cannot create the folder" in caplog.text
    assert "running without a store" in caplog.text
    monitor.shutdown()
