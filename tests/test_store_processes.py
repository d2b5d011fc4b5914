"""The store with real processes: uvicorn workers, writers and readers that are separate
processes, a worker killed with SIGKILL in the middle of a run, and a restart (the same
cases with monitors in one process and a fake clock are in tests/test_fleet.py).

The apps and scripts are in tests/store_app.py; every process gets the store, a short
flush interval and instance TTL through the environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import store_app
from tests.conftest import REQUIRE_SERVERS
from tests.demo_process import HEALTH_PATH, ROOT, AppProcess, poll

pytestmark = pytest.mark.slow

FLUSH_INTERVAL = 0.2
INSTANCE_TTL = 2.0
#: What a loaded machine may add to a bound the store promises (polling, HTTP, scheduling).
SLACK_SECONDS = 1.0
WAIT_SECONDS = 20.0
SCRIPT_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
POLLS = 50
#: How long the polls may take on a loaded machine.
POLLS_SECONDS = 40.0
#: uvicorn's line once it listens (with --workers, the supervisor's, before the workers start).
UVICORN_READY = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def require_uvicorn() -> None:
    if importlib.util.find_spec("uvicorn") is None:
        message = "uvicorn is not installed (pip install 'jobpulse[server]')"
        if REQUIRE_SERVERS:
            pytest.fail(f"{message}; JOBPULSE_REQUIRE_SERVERS=1 requires it", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of every process of a test: this one's less ``OTEL_*``, and the
    store in `tmp_path`."""
    roles = tmp_path / "roles"
    roles.mkdir()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    environment.update(
        {
            store_app.URL_VARIABLE: f"sqlite:///{tmp_path / 'jobs.db'}",
            store_app.FLUSH_VARIABLE: str(FLUSH_INTERVAL),
            store_app.TTL_VARIABLE: str(INSTANCE_TTL),
            store_app.ROLES_VARIABLE: str(roles),
        }
    )
    return environment


@dataclass
class Answer:
    code: int
    pid: int
    body: Any


class Server(AppProcess):
    """A uvicorn process serving an app of tests/store_app.py, asked through `client`."""

    name: str
    client: httpx.Client

    def wait_answering(self) -> Server:
        """Wait for uvicorn's ready line, which names the port, then for an answer (with
        --workers the supervisor binds the socket and the workers listen on it later)."""

        def url() -> str | None:
            _, err = self.output()
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{err}")
            match = UVICORN_READY.search(err)
            return match[1] if match else None

        self.base_url = poll(url, WAIT_SECONDS, f"{self.name}'s ready line")

        def answers() -> bool | None:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}")
            try:
                self.get()
            except httpx.TransportError:
                return None
            return True

        poll(answers, WAIT_SECONDS, f"{self.name} to answer")
        return self

    def get(self, path: str = HEALTH_PATH) -> Answer:
        response = self.client.get(self.base_url + path)
        return Answer(
            response.status_code, int(response.headers[store_app.PID_HEADER]), response.json()
        )

    def post(self, path: str) -> Any:
        response = self.client.post(self.base_url + path)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> None:
        """SIGTERM (uvicorn stops its workers and their lifespans shut the monitors down);
        SIGKILL if it has not exited in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def servers(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., Server]]:
    """Starts ``uvicorn --factory tests.store_app:FACTORY`` on 127.0.0.1 and a free port
    (uvicorn binds port 0 and names the port it got), without waiting for it (see
    `Server.wait_answering`); stops every server it started after the test."""
    require_uvicorn()
    started: list[Server] = []
    # A new connection per request: with several workers, any of them may accept it.
    client = httpx.Client(headers={"connection": "close"}, timeout=WAIT_SECONDS)

    def start(factory: str, name: str, *options: str) -> Server:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            f"tests.store_app:{factory}",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-access-log",
            *options,
        ]
        server = Server.launch(command, tmp_path, name, env)
        server.name, server.client = name, client
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
        client.close()


def run_script(env: Mapping[str, str], *arguments: str) -> Any:
    """``python -m tests.store_app ARGUMENTS``; the JSON line it prints."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.store_app", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"store_app {' '.join(arguments)}:\n{done.stderr}"
    return json.loads(done.stdout)


def counts(document: Mapping[str, Any]) -> dict[str, tuple[int, int, int]]:
    """Job -> (successes, failures, consecutive failures)."""
    return {
        name: (job["success_count"], job["failure_count"], job["consecutive_failures"])
        for name, job in document["jobs"].items()
    }


def alive_pids(document: Mapping[str, Any]) -> set[int]:
    return {instance["pid"] for instance in document["instances"] if instance["alive"]}


def others(document: Mapping[str, Any], reader_pid: int) -> dict[int, bool]:
    """Pid -> alive of the instances listed, less the reader (listed once it wrote, which
    it may not have done yet)."""
    listed = {instance["pid"]: instance["alive"] for instance in document["instances"]}
    assert listed.pop(reader_pid, True) is True
    return listed


def seconds_of(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_two_uvicorn_workers_answer_alike_with_the_fleets_sums(
    servers: Callable[..., Server], env: dict[str, str]
) -> None:
    app = servers("worker_app", "workers", "--workers", "2").wait_answering()
    # store_app.WORKER_RUNS summed over both roles. `import` (critical) failed once on one
    # worker: the fleet is degraded. Without the store one worker answers 206, the other
    # 200, each with its own counts.
    expected = {"sync": (6, 2, 0), "import": (0, 1, 1), "report": (2, 0, 0)}

    def complete() -> float | None:
        answer = app.get()
        if counts(answer.body) == expected and len(alive_pids(answer.body)) == 2:
            return time.time()
        return None

    completed_at = poll(complete, WAIT_SECONDS, f"both workers' runs in the store ({expected})")

    def rewritten() -> set[int] | None:
        # Each worker re-reads the store after its own next write: once both wrote after
        # the counts were complete, neither answers from an older read.
        instances = app.get().body["instances"]
        fresh = {
            i["pid"] for i in instances if i["alive"] and seconds_of(i["last_seen"]) > completed_at
        }
        return fresh if len(fresh) == 2 else None

    workers = poll(rewritten, WAIT_SECONDS, "a write of both workers after the runs ended")
    assert app.process.pid not in workers  # the supervisor runs no monitor

    answers: list[Answer] = []
    deadline = time.monotonic() + POLLS_SECONDS
    with ThreadPoolExecutor(4) as pool:
        while len(answers) < POLLS or {a.pid for a in answers} != workers:
            assert time.monotonic() < deadline, (
                f"{len(answers)} polls, answered by {sorted({a.pid for a in answers})}; "
                f"expected both of {sorted(workers)}"
            )
            answers.extend(pool.map(lambda _: app.get(), range(4)))
    seen = {(a.code, a.body["status"], json.dumps(a.body["jobs"], sort_keys=True)) for a in answers}
    by_pid = {pid: sum(1 for a in answers if a.pid == pid) for pid in workers}
    print(f"{len(answers)} polls, by worker pid: {by_pid}")
    assert len(seen) == 1, [(a.pid, a.code, counts(a.body)) for a in answers]
    first = answers[0]
    assert (first.code, first.body["status"], first.body["scope"]) == (206, "degraded", "fleet")
    assert counts(first.body) == expected
    assert all(alive_pids(a.body) == workers for a in answers)

    # A clean stop: each worker's last write adds nothing to the counts and marks it stopped.
    app.stop()
    assert app.process.returncode == 0, app.output()[1]
    reader = run_script(env, "read")
    after = reader["document"]
    assert counts(after) == expected
    assert others(after, reader["pid"]) == dict.fromkeys(workers, False)


def test_a_process_that_only_reads_sees_two_writers(env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "tests.store_app", "write"]
    writers = [
        subprocess.Popen(
            [*command, *specs], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for specs in (["shared:2:1", "alpha:1:0"], ["shared:3:0", "beta:0:2"])
    ]
    pids = []
    for writer in writers:
        out, err = writer.communicate(timeout=SCRIPT_TIMEOUT_SECONDS)
        assert writer.returncode == 0, err.decode()
        pids.append(json.loads(out)["pid"])

    report = run_script(env, "read")
    document = report["document"]
    assert (document["scope"], document["store"]) == ("fleet", "ok")
    assert counts(document) == {"shared": (5, 1, 0), "alpha": (1, 0, 0), "beta": (0, 2, 2)}
    assert document["status"] == "degraded"
    # The writers shut down: not alive.
    assert others(document, report["pid"]) == {pids[0]: False, pids[1]: False}


def history_of(server: Server, name: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = server.get(f"{HEALTH_PATH}/{name}").body["history"]
    return runs


def test_a_worker_killed_in_a_run_is_lost_once_for_two_readers(
    servers: Callable[..., Server],
) -> None:
    victim = servers("server_app", "victim")
    readers = [servers("server_app", f"reader-{n}") for n in (1, 2)]
    for server in (victim, *readers):
        server.wait_answering()
    held = victim.post("/hold/import")
    assert held["flushed"] is True

    def running_everywhere() -> bool | None:
        jobs = [reader.get().body["jobs"].get("import") for reader in readers]
        return all(job is not None and job["status"] == "running" for job in jobs) or None

    poll(running_everywhere, WAIT_SECONDS, "both readers to see the held run running")
    os.kill(held["pid"], signal.SIGKILL)
    killed = time.monotonic()
    victim.process.wait(STOP_TIMEOUT_SECONDS)

    def lost_somewhere() -> float | None:
        for reader in readers:
            job = reader.get().body["jobs"]["import"]
            if job["last_error_category"] == "lost":
                return time.monotonic() - killed
        return None

    seen_after = poll(lost_somewhere, WAIT_SECONDS, "a reader to see the run lost")
    print(f"SIGKILL to lost run in a reader's view: {seen_after:.3f}s")
    assert seen_after <= INSTANCE_TTL + FLUSH_INTERVAL + SLACK_SECONDS

    # The run was closed by a write of one reader; both readers write on after it, and
    # neither closes it again. The other reader may not have read the store since (it
    # reads it at most once per flush interval).
    history = poll(
        lambda: history_of(readers[0], "import") or None, WAIT_SECONDS, "the lost run's history"
    )
    assert [run["error_category"] for run in history] == ["lost"], history
    closed_at = seconds_of(history[0]["started_at"]) + history[0]["duration_ms"] / 1000

    def both_wrote_after_the_close() -> bool | None:
        instances = readers[0].get().body["instances"]
        fresh = {i["pid"] for i in instances if seconds_of(i["last_seen"]) > closed_at + 0.01}
        return {r.process.pid for r in readers} <= fresh or None

    poll(both_wrote_after_the_close, WAIT_SECONDS, "a write of both readers after the close")
    for reader in readers:
        answer = reader.get()
        job = answer.body["jobs"]["import"]
        assert (job["failure_count"], job["success_count"], job["status"]) == (1, 0, "failed")
        assert job["active_runs"] == 0
        assert f"pid {held['pid']}" in job["last_error"]
        assert [run["error_category"] for run in history_of(reader, "import")] == ["lost"]
        victim_instance = [i for i in answer.body["instances"] if i["pid"] == held["pid"]]
        assert [i["alive"] for i in victim_instance] == [False]
    # The store closed it at least instance_ttl after the victim's last heartbeat, and
    # within one flush interval of a reader's more (the delay is the store's own times).
    last_seen = seconds_of(victim_instance[0]["last_seen"])
    delay = closed_at - last_seen
    print(f"victim's last heartbeat to the close: {delay:.3f}s")
    assert INSTANCE_TTL <= delay + 0.002 <= INSTANCE_TTL + FLUSH_INTERVAL + SLACK_SECONDS / 2


def test_a_restart_keeps_failures_and_sees_the_slot_missed_while_down(
    env: dict[str, str],
) -> None:
    critical, scheduled = store_app.CRITICAL_JOB, store_app.SCHEDULED_JOB
    first_process = run_script(env, "deploy-before")
    assert first_process["flushed"] is True
    before = first_process["document"]
    assert counts(before)[critical] == (0, 2, 2)
    slot = seconds_of(before["jobs"][scheduled]["next_run_time"])
    grace = before["jobs"][scheduled]["grace_ms"] / 1000
    assert grace == store_app.GRACE_SECONDS
    assert before["jobs"][scheduled]["status"] == "success"
    # Down until the slot and its grace have passed: the wait is for the time itself.
    time.sleep(max(slot + grace - time.time(), 0.0))

    report = run_script(env, "deploy-after")
    first = report["before"]
    assert first["scope"] == "fleet"
    assert first["jobs"][scheduled]["status"] == "missed", first["jobs"][scheduled]
    assert first["jobs"][critical]["consecutive_failures"] == 2
    assert first["jobs"][critical]["critical"] is True
    assert (report["before_code"], first["status"]) == (206, "degraded")
    # Registered again (as the application does at its start), the slot is still missed,
    # and counted once for the fleet.
    registered = report["registered"]
    assert registered is not None
    assert registered["jobs"][scheduled]["status"] == "missed"
    # Every slot whose grace had passed (one, unless this machine is slow to start python).
    seen_at = seconds_of(registered["timestamp"])
    due = int((seen_at - grace - slot) // store_app.EVERY_SECONDS) + 1
    assert registered["jobs"][scheduled]["missed_count"] == due, (due, registered["jobs"])
    assert report["flushed"] is True
    then = report["after"]
    assert counts(then)[critical] == (0, 3, 3)
    assert (report["after_code"], then["status"]) == (503, "unhealthy")
