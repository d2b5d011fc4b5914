"""examples/celery_app run as its docstring says: ``celery -A examples.celery_app worker
--beat`` with a prefork pool of two children on a real Redis, ``celery call`` sending the task
that fails, each process's view read from the log lines it writes, then SIGTERM.

The example is never imported here: it sets jobpulse up at import, once per process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

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


def group_is_gone(pgid: int, timeout: float) -> bool:
    """True once no process of group `pgid` is left (polled until `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
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
        if not key.startswith(("OTEL_", "CELERY_", "EXAMPLE_"))
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
