"""examples/celery_app run as its docstring says: ``celery -A examples.celery_app worker
--beat`` with a prefork pool of two children on a real Redis, ``celery call`` sending the task
that fails, each process's view read from the log lines it writes, then SIGTERM.

Then as docker-compose.yml runs it, with the commands and environment of its services
``celery-worker``, ``celery-beat`` and ``celery-web`` (the hosts and ports made local) on a
redis-server of the test's own, the broker on database 0 and the store on database 1: the web
app's health document shows the worker's task runs and beat's entry, and the worker's and the
web app's healthchecks pass.

The example is never imported here: it sets jobpulse up at import, once per process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from celery import Celery

from tests.process_group import ProcessGroup, group_is_gone
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: The ``celery`` command of the environment running the tests.
CELERY = str(Path(sys.executable).parent / "celery")
APP = ("-A", "examples.celery_app")
#: Not database 0 of the other Celery tests: queues and task events are per database.
DATABASE = 7
#: Beat sends ``refresh_prices`` every 2 s; each process looks at its view every 0.5 s.
FAST = {"EXAMPLE_BEAT_SECONDS": "2", "EXAMPLE_VIEW_SECONDS": "0.5"}
BEAT_JOB = "beat:refresh-prices"
VIEW_LINE = re.compile(r"jobpulse view of ([\w-]+) \(pid (\d+)\): (\{.*\})$", re.MULTILINE)
WAIT_SECONDS = 45.0
POLL_SECONDS = 0.2

View = dict[str, Any]
Views = dict[tuple[str, int], View]


def latest_views(log: str) -> Views:
    """The last view each process logged, by (role, pid); only complete lines are read."""
    complete = log[: log.rfind("\n") + 1]
    return {(role, int(pid)): json.loads(view) for role, pid, view in VIEW_LINE.findall(complete)}


def jobs_of(views: Views, role: str, job: str) -> list[dict[str, Any]]:
    """`job` in each view of a process of `role` that has it."""
    return [
        view["jobs"][job]
        for (name, _), view in views.items()
        if name == role and job in view["jobs"]
    ]


def arrived(views: Views) -> bool:
    """A pool child counted a successful ``refresh_prices`` and a failed ``export_report``,
    and beat's view counted a successful run of its entry (whether it missed one is checked
    afterwards)."""
    refreshed = jobs_of(views, "worker-child", "refresh_prices")
    exported = jobs_of(views, "worker-child", "export_report")
    beat = jobs_of(views, "beat", BEAT_JOB)
    return (
        any(job["success_count"] >= 1 for job in refreshed)
        and any(job["failure_count"] >= 1 for job in exported)
        and any(job["success_count"] >= 1 for job in beat)
    )


def wait_for(
    process: subprocess.Popen[bytes], log_path: Path, condition: Callable[[Views], bool]
) -> Views:
    """The processes' latest views once `condition` holds for them; fails the test if the
    worker exits or WAIT_SECONDS pass first."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        log = log_path.read_text(errors="replace")
        views = latest_views(log)
        if condition(views):
            return views
        if process.poll() is not None:
            pytest.fail(f"the worker exited with {process.returncode}:\n{log[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {WAIT_SECONDS:g} s; views {views}\n{log[-4000:]}")
        time.sleep(POLL_SECONDS)


#: The example as written, and under opentelemetry-instrument (whose entry points instrument
#: the integration before the example's own call does: one monitor all the same).
LAUNCHERS = {
    "plain": (),
    "opentelemetry-instrument": (str(Path(CELERY).with_name("opentelemetry-instrument")),),
}
OTEL_NO_EXPORT = {
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_the_example_worker_with_beat_shows_its_runs_and_stops_on_sigterm(
    redis_url: str, tmp_path: Path, launcher: str
) -> None:
    broker = f"{redis_url.rsplit('/', 1)[0]}/{DATABASE}"
    client = redis.Redis.from_url(broker)
    try:
        client.flushdb()
    finally:
        client.close()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "CELERY_", "EXAMPLE_", "JOBPULSE_"))
    }
    env.update(FAST, CELERY_BROKER_URL=broker)
    if LAUNCHERS[launcher]:
        env.update(OTEL_NO_EXPORT)
    log_path = tmp_path / "worker.log"
    worker_command = [
        *LAUNCHERS[launcher], CELERY, *APP, "worker", "--beat", "--pool=prefork",
        "--concurrency=2", "--loglevel=INFO",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        # A session of its own: whatever is left of it at the end is killed as a group.
        worker = subprocess.Popen(
            worker_command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        call = subprocess.run(
            [CELERY, *APP, "call", "export_report", "--kwargs", '{"failure_rate": 1}'],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert call.returncode == 0, call.stderr
        task_id = call.stdout.strip()

        views = wait_for(worker, log_path, arrived)

        [(beat_role, beat_view)] = [(key, view) for key, view in views.items() if key[0] == "beat"]
        assert set(beat_view["jobs"]) == {BEAT_JOB}  # the tasks' runs are the workers' views
        beat_job = beat_view["jobs"][BEAT_JOB]
        assert beat_job["status"] != "missed"
        assert beat_job["missed_count"] == 0
        assert beat_job["failure_count"] == 0
        children = {pid for role, pid in views if role == "worker-child"}
        assert 1 <= len(children) <= 2
        assert beat_role[1] not in children
        [failed] = jobs_of(views, "worker-child", "export_report")
        assert failed["status"] == "failed"
        assert failed["last_error_category"] == "network"  # a ConnectionError
        for role, _ in views:
            assert role in ("worker-child", "beat")  # the prefork parent recorded nothing
        for view in views.values():
            if "refresh_prices" in view["jobs"]:
                assert view["jobs"]["refresh_prices"]["failure_count"] == 0

        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        output = log_path.read_text(errors="replace")
        assert code == 0, output[-4000:]
        assert "Warm shutdown" in output
        assert group_is_gone(worker.pid, timeout=10), "a pool child or beat outlived the worker"
        assert f"Task export_report[{task_id}] raised unexpected: ConnectionError" in output
        assert "missed its scheduled run" not in output
        assert "jobpulse internal error" not in output
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if not group_is_gone(worker.pid, timeout=0):
            os.killpg(worker.pid, signal.SIGKILL)


# -- the deployment of docker-compose.yml, with a store ------------------------------------

COMPOSE = ROOT / "docker-compose.yml"
HEALTH_PATH = "/api/v1/health/jobs"
UVICORN_READY = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:(\d+))")
#: The processes of one deployment: the worker's main process, its 2 children, beat, the web.
INSTANCES = 5


def compose_service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services[name]


def local(words: list[str], redis_address: str, web_port: int | None = None) -> list[str]:
    """A compose command run here: this environment's python and celery, the test's Redis,
    and the web app on 127.0.0.1 (at a free port, or at `web_port`)."""
    replaced: list[str] = []
    for word in words:
        if word == "celery":
            word = CELERY
        elif word == "python":
            word = sys.executable
        elif word == "--host=0.0.0.0":
            word = "--host=127.0.0.1"
        elif word.startswith("--port="):
            word = "--port=0"
        word = word.replace("redis:6379", redis_address)
        if web_port is not None:
            word = re.sub(r"127\.0\.0\.1:\d+/", f"127.0.0.1:{web_port}/", word)
        replaced.append(word)
    return replaced


def compose_environment(name: str, redis_address: str) -> dict[str, str]:
    """The service's environment less OpenTelemetry's (no collector here), on the test's
    Redis, over this process's (less any setting of the example's or jobpulse's)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "CELERY_", "EXAMPLE_", "JOBPULSE_"))
    }
    env.update(FAST)
    for key, value in compose_service(name).get("environment", {}).items():
        if not key.startswith("OTEL_"):
            env[key] = str(value).replace("redis:6379", redis_address)
    return env


class Deployment(ProcessGroup):
    """The compose services as processes, each in a session of its own; output in files."""

    def __init__(self, directory: Path, redis_address: str) -> None:
        super().__init__(directory)
        self.redis_address = redis_address

    def run(self, name: str) -> subprocess.Popen[bytes]:
        command = local(compose_service(name)["command"], self.redis_address)
        return self.start(name, command, compose_environment(name, self.redis_address), ROOT)

    def web_url(self, deadline: float) -> tuple[str, int]:
        """The web app's base URL and port, once uvicorn says it listens."""
        while not (match := UVICORN_READY.search(self.log("celery-web"))):
            if self.processes["celery-web"].poll() is not None or time.monotonic() > deadline:
                pytest.fail("the web app did not start:\n" + self.logs())
            time.sleep(POLL_SECONDS)  # another process's output: nothing to wait on
        return match[1], int(match[2])


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of the test's own: its ``127.0.0.1:PORT``."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    url = server.start()
    try:
        yield url.removeprefix("redis://").partition("/")[0]
    finally:
        server.kill()


def seen_whole(document: Mapping[str, Any]) -> bool:
    """The web app's document has the worker's runs, beat's entry and every process."""
    jobs: dict[str, dict[str, Any]] = document.get("jobs", {})
    refreshed = jobs.get("refresh_prices", {})
    exported = jobs.get("export_report", {})
    beat = jobs.get(BEAT_JOB, {})
    alive = [instance for instance in document.get("instances", []) if instance["alive"]]
    return (
        refreshed.get("success_count", 0) >= 1
        and exported.get("failure_count") == 1
        and beat.get("success_count", 0) >= 1
        and beat.get("next_run_time") is not None
        and len(alive) >= INSTANCES
    )


def counted(log: str, role: str, job: str) -> bool:
    """Whether a process of `role` logged a view with a successful run of `job`."""
    return any(found["success_count"] >= 1 for found in jobs_of(latest_views(log), role, job))


def healthcheck(name: str, redis_address: str, web_port: int) -> subprocess.CompletedProcess[str]:
    """Run the service's compose healthcheck here, as Docker would in its container."""
    kind, *words = compose_service(name)["healthcheck"]["test"]
    env = compose_environment(name, redis_address)
    env["HOSTNAME"] = socket.gethostname()  # the worker's node is celery@<hostname>
    if kind == "CMD-SHELL":
        (text,) = words
        command = ["sh", "-c", text.replace("$$", "$")]
        env["PATH"] = f"{Path(CELERY).parent}{os.pathsep}{env.get('PATH', '')}"
    else:
        assert kind == "CMD"
        command = local(words, redis_address, web_port)
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_compose_deployment_is_seen_whole_from_its_web_app(
    tmp_path: Path, compose_redis: str
) -> None:
    deployment = Deployment(tmp_path, compose_redis)
    client = Celery("client", broker=f"redis://{compose_redis}/0")  # no jobpulse here
    http = httpx.Client(timeout=10)
    try:
        started = time.monotonic()
        deadline = started + WAIT_SECONDS
        web = deployment.run("celery-web")
        worker = deployment.run("celery-worker")
        beat = deployment.run("celery-beat")
        client.send_task("export_report", kwargs={"failure_rate": 1})
        base_url, web_port = deployment.web_url(deadline)

        while True:
            response = http.get(base_url + HEALTH_PATH)
            document: dict[str, Any] = response.json()
            if seen_whole(document):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"not seen within {WAIT_SECONDS:g} s: {document}\n{deployment.logs()}")
            for name, process in deployment.processes.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}:\n{deployment.logs()}")
            time.sleep(POLL_SECONDS)  # other processes' writes: nothing here to wait on

        assert document["scope"] == "fleet"
        assert document["store"] == "ok"
        alive = {instance["pid"] for instance in document["instances"] if instance["alive"]}
        assert {web.pid, worker.pid, beat.pid} <= alive  # and the worker's pool children
        assert {instance["service"] for instance in document["instances"]} == {"celery-example"}
        failed = document["jobs"]["export_report"]
        assert (failed["status"], failed["last_error_category"]) == ("failed", "network")
        beat_job = document["jobs"][BEAT_JOB]
        assert (beat_job["missed_count"], beat_job["failure_count"]) == (0, 0)
        assert document["jobs"]["refresh_prices"]["failure_count"] == 0

        # Beat's own log line shows the tasks' runs too: with a store, its view is the fleet's.
        while not counted(deployment.log("celery-beat"), "beat", "refresh_prices"):
            if time.monotonic() > deadline:
                pytest.fail("beat never logged the runs:\n" + deployment.log("celery-beat"))
            time.sleep(POLL_SECONDS)

        for name in ("celery-worker", "celery-web"):
            result = healthcheck(name, compose_redis, web_port)
            assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"

        deployment.stop()
        assert worker.returncode == 0, deployment.log("celery-worker")[-4000:]
        # uvicorn raises SIGTERM again once it stopped: its lifespan ran, the monitor is shut.
        assert web.returncode in (0, -signal.SIGTERM), deployment.log("celery-web")[-4000:]
        assert "Application shutdown complete" in deployment.log("celery-web")
        for name in deployment.processes:
            assert "jobpulse internal error" not in deployment.log(name)
    finally:
        http.close()
        client.close()
        deployment.stop()
