"""The icy-backend demo (examples/icy_backend) as `make demo` runs it: a real process serving
real HTTP on 127.0.0.1, its jobs on a fast schedule, stopped by real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: `make demo` runs ``$(PY) -m examples.icy_backend`` (checked below) from the repository root.
DEMO_COMMAND = (sys.executable, "-m", "examples.icy_backend")
HEALTH_PATH = "/api/v1/health/jobs"
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
POLL_SECONDS = 0.15
READY = re.compile(r"health:\s+(http://\S+?)" + re.escape(HEALTH_PATH) + r"\s")

T = TypeVar("T")


@dataclass
class Demo:
    """A running demo process; its output goes to files, so a full pipe never blocks it."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    base_url: str = ""

    def output(self) -> tuple[str, str]:
        return (
            self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        )

    def stop(self, signum: signal.Signals) -> tuple[int, float]:
        """Send `signum`; the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout=15)
        return code, time.monotonic() - started


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `check` every POLL_SECONDS until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_SECONDS)


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """Start the demo with the FAST settings (overridden by keyword arguments) and wait for
    its ready line; a demo still running at the end of the test is killed."""
    demos: list[Demo] = []

    def start(**overrides: str) -> Demo:
        env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        env.update(FAST)
        env.update(overrides)
        index = len(demos)
        stdout_path = tmp_path / f"demo{index}.out"
        stderr_path = tmp_path / f"demo{index}.err"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                DEMO_COMMAND, cwd=ROOT, env=env, stdout=stdout, stderr=stderr
            )
        demo = Demo(process, stdout_path, stderr_path)
        demos.append(demo)

        def ready() -> str | None:
            out, err = demo.output()
            if process.poll() is not None:
                pytest.fail(f"the demo exited with {process.returncode}:\n{err}")
            match = READY.search(out)
            return match[1] if match else None

        demo.base_url = poll(ready, 30, "the demo's ready line")
        return demo

    yield start
    for demo in demos:
        if demo.process.poll() is None:
            demo.process.kill()
            demo.process.wait()


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


def test_demo_shows_runs_failures_and_a_stall_then_stops_on_sigint(
    start_demo: Callable[..., Demo],
) -> None:
    demo = start_demo()
    with httpx.Client(base_url=demo.base_url, timeout=5) as client:
        first = check_health(get(client, HEALTH_PATH))
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
