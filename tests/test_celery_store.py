"""A Celery deployment seen whole from its web app, through a Redis store: real processes.

One ``redis-server`` is the broker and the store. A prefork worker with 2 children, beat
(a process of its own, or embedded in the worker) and a Starlette app under uvicorn all run
tests/celery_store_app.py, which sets jobpulse up with the store of ``JOBPULSE_STORE``.
The web app runs no task, and its health document shows every task run in every child,
beat's entries with their next run, a stalled run, a missed entry, and, once the worker is
killed with ``kill -9`` in the middle of a task, that run lost.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery

from tests.demo_process import HEALTH_PATH, ROOT
from tests.process_group import ProcessGroup
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

FLUSH_SECONDS = 0.5
TTL_SECONDS = 3.0
#: What a loaded 2-core machine may add to a bound (polling, HTTP, process scheduling).
SLACK_SECONDS = 2.0
WAIT_SECONDS = 60.0
CELERY = str(Path(sys.executable).parent / "celery")
UVICORN_READY = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


class Deployment(ProcessGroup):
    """The processes of one test, each in a session of its own (a worker's children die
    with it at a ``kill -9`` of its group), their output in files."""

    def __init__(self, directory: Path, broker: str) -> None:
        super().__init__(directory)
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        self.env.update(
            {
                "JOBPULSE_STORE": broker,  # the broker's Redis, and its database
                "JOBPULSE_TEST_BROKER": broker,
                "JOBPULSE_TEST_FLUSH": str(FLUSH_SECONDS),
                "JOBPULSE_TEST_TTL": str(TTL_SECONDS),
                "PYTHONPATH": str(ROOT),
            }
        )
        self.web_url = ""
        self.client = httpx.Client(timeout=10)

    def run(self, name: str, *command: str, **extra: str) -> None:
        self.start(name, command, {**self.env, **extra}, ROOT)

    def start_web(self) -> None:
        self.run(
            "web",
            sys.executable,
            *("-m", "uvicorn", "tests.celery_store_app:web", "--host", "127.0.0.1"),
            *("--port", "0", "--no-access-log"),
            JOBPULSE_TEST_ROLE="web",
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while not (match := UVICORN_READY.search(self.log("web"))):
            assert self.processes["web"].poll() is None, self.log("web")
            assert time.monotonic() < deadline, "uvicorn did not start:\n" + self.log("web")
            time.sleep(0.1)  # another process's output: nothing to wait on
        self.web_url = match[1]

    def start_worker(self, *options: str) -> None:
        self.run(
            "worker",
            CELERY,
            *("-A", "tests.celery_store_app", "worker", "--pool", "prefork"),
            *("--concurrency", "2", "-Q", "shop", "-E", "--loglevel", "INFO"),
            *("-n", "shop@%h", *options),
        )

    def start_beat(self) -> None:
        self.run(
            "beat",
            CELERY,
            *("-A", "tests.celery_store_app", "beat", "--loglevel", "INFO"),
            *("-s", str(self.directory / "beat-schedule")),
        )

    def document(self) -> tuple[int, dict[str, Any]]:
        response = self.client.get(self.web_url + HEALTH_PATH)
        return response.status_code, response.json()

    def wait_for(self, what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The web app's document once `check` holds for it (at most `WAIT_SECONDS`)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            _, body = self.document()
            if check(body):
                return body
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; the document: {body}\n{self.logs()}")
            time.sleep(0.2)  # other processes' writes: nothing here to wait on

    def stop(self, timeout: float = 15.0) -> None:
        self.client.close()
        super().stop(timeout)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[Deployment, Celery]]:
    server = RedisServer(tmp_path)
    broker = server.start()
    deployment = Deployment(tmp_path, broker)
    client = Celery("client", broker=broker)  # sends tasks; no jobpulse in this process
    try:
        yield deployment, client
    finally:
        deployment.stop()
        client.close()
        server.kill()


def job(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = body["jobs"].get(name, {})
    return found


def alive(body: dict[str, Any]) -> int:
    return sum(1 for instance in body.get("instances", ()) if instance["alive"])


def test_the_web_app_sees_every_child_beat_a_stall_a_missed_entry_and_a_lost_run(
    deployment: tuple[Deployment, Celery],
) -> None:
    processes, client = deployment
    processes.start_web()
    processes.start_worker()
    processes.start_beat()
    for _ in range(5):
        client.send_task("shop.charge_cards", queue="shop")
    client.send_task("shop.export", args=(0.2,), queue="shop")
    client.send_task("shop.export", args=(600,), queue="shop")  # hangs
    body = processes.wait_for(
        "the fleet's whole view",
        lambda body: (
            job(body, "shop.charge_cards").get("failure_count") == 5
            and job(body, "shop.export").get("status") == "stalled"
            and job(body, "beat:forgotten").get("status") == "missed"
            and job(body, "beat:tick").get("next_run_time") is not None
            and job(body, "shop.tick").get("success_count", 0) >= 1
            and alive(body) >= 5
        ),  # the web app, the worker, its 2 children, beat
    )
    code, body = processes.document()
    assert code == 503  # a stalled run
    assert body["scope"] == "fleet"
    assert body["store"] == "ok"
    pids = {instance["pid"] for instance in body["instances"] if instance["alive"]}
    assert len(pids) >= 5
    charge = job(body, "shop.charge_cards")
    assert charge["last_error_category"] == "network"
    assert charge["consecutive_failures"] == 5
    export = job(body, "shop.export")
    assert (export["success_count"], export["stalled_runs"]) == (1, 1)

    killed = time.monotonic()
    processes.kill_group("worker")  # the worker and its children, in the middle of the hang
    body = processes.wait_for(
        "the hung run lost",
        lambda body: job(body, "shop.export").get("last_error_category") == "lost",
    )
    seen = time.monotonic() - killed
    assert seen <= TTL_SECONDS + 2 * FLUSH_SECONDS + SLACK_SECONDS, seen
    export = job(body, "shop.export")
    assert (export["success_count"], export["failure_count"]) == (1, 1)
    assert export["status"] == "failed"
    assert export["stalled_runs"] == 0


def test_beat_embedded_in_the_worker_is_seen_too(deployment: tuple[Deployment, Celery]) -> None:
    processes, client = deployment
    processes.start_web()
    processes.start_worker("--beat", "-s", str(processes.directory / "beat-schedule"))
    client.send_task("shop.charge_cards", queue="shop")
    body = processes.wait_for(
        "beat's entries and the runs",
        lambda body: (
            job(body, "beat:forgotten").get("status") == "missed"
            and job(body, "beat:tick").get("next_run_time") is not None
            and job(body, "shop.tick").get("success_count", 0) >= 1
            and job(body, "shop.charge_cards").get("failure_count") == 1
        ),
    )
    assert body["scope"] == "fleet"
