"""One monitor per process under ``opentelemetry-instrument``: the documented examples and
small programs run as real subprocesses under it (with opentelemetry-distro configuring the
SDK, exporting nothing), and what every `JobMonitor` of the process saw is read from its
output (tests/otel_instrumented.py): one monitor, with every job and skipped or missed run.
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
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import needs_celery
from tests.otel_instrumented import MARKER
from tests.prometheus_server import free_port, stop_process

pytestmark = pytest.mark.slow


ROOT = Path(__file__).resolve().parent.parent
OPENTELEMETRY_INSTRUMENT = str(Path(sys.executable).with_name("opentelemetry-instrument"))
RUNNER = str(ROOT / "tests" / "otel_instrumented.py")
_HEADING = re.compile(r"^#+ (.*)$", re.MULTILINE)


def instrumented_env(**more: str) -> dict[str, str]:
    """The environment of a process under opentelemetry-instrument that needs no collector."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        PYTHONPATH=str(ROOT),
        **more,
    )
    return env


def monitors_in(output: str) -> list[dict[str, Any]]:
    [line] = [line for line in output.splitlines() if line.startswith(MARKER)]
    monitors: list[dict[str, Any]] = json.loads(line[len(MARKER) :])
    return monitors


def run_instrumented(script: Path | str, **env: str) -> list[dict[str, Any]]:
    """Run `script` under opentelemetry-instrument; the monitors of its process."""
    result = subprocess.run(
        [OPENTELEMETRY_INSTRUMENT, sys.executable, RUNNER, str(script)],
        cwd=ROOT,
        env=instrumented_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "jobpulse internal error" not in result.stderr, result.stderr[-3000:]
    return monitors_in(result.stdout)


_SKIPPED_CELERY = re.compile(
    r"^Importing of jobpulse_celery failed, skipping it\nTraceback \(most recent call last\):\n"
    r"(?: .*\n)+"
    r"ImportError: jobpulse\.integrations\.celery needs celery .*'jobpulse\[celery\]'\n",
    re.MULTILINE,
)


def without_skipped_celery(output: str) -> str:
    """`output` less what opentelemetry-instrument logs in a process without Celery (the run
    on the lowest SDK installs none): that it skipped jobpulse's Celery instrumentor, with the
    traceback of the ImportError naming the extra. Where Celery is installed, nothing."""
    if importlib.util.find_spec("celery") is not None:
        return output
    return _SKIPPED_CELERY.sub("", output, count=1)


def documented_block(document: str, heading: str) -> str:
    """The first ```python block under `heading` in docs/`document`."""
    text = (ROOT / "docs" / document).read_text()
    start = next(match.end() for match in _HEADING.finditer(text) if match.group(1) == heading)
    block = re.search(r"^```python\n(.*?)^```", text[start:], re.MULTILINE | re.DOTALL)
    assert block is not None, f"no python block under {heading!r}"
    return block.group(1)


def test_the_every_scheduler_example_of_the_docs(tmp_path: Path) -> None:
    script = tmp_path / "every_scheduler.py"
    script.write_text(
        documented_block("apscheduler.md", "Every scheduler, or no code change at all")
    )
    [monitor] = run_instrumented(script)  # its own asserts hold, on its own monitor
    assert set(monitor["jobs"]) == {"hourly_report"}


@needs_celery
def test_the_setup_example_of_the_celery_docs(tmp_path: Path) -> None:
    script = tmp_path / "celery_setup.py"
    script.write_text(documented_block("celery.md", "Set up"))
    [monitor] = run_instrumented(script)
    assert monitor["jobs"]["shop.send_invoice"]["success_count"] == 1


def test_an_apscheduler_program_reports_misfires_and_refusals_to_its_one_monitor() -> None:
    [monitor] = run_instrumented(ROOT / "tests" / "aps_otel_app.py")
    jobs = monitor["jobs"]
    assert jobs["busy"]["success_count"] == 1
    assert jobs["busy"]["skipped_count"] == 1  # max_instances
    assert jobs["late"]["missed_count"] == 1  # APScheduler's misfire


@needs_celery
def test_a_celery_worker_reports_runs_and_skipped_runs_to_its_one_monitor(redis_url: str) -> None:
    [monitor] = run_instrumented(
        ROOT / "tests" / "celery_otel_app.py", JOBPULSE_TEST_BROKER=redis_url
    )
    add = monitor["jobs"]["tests.add"]
    assert (add["success_count"], add["skipped_count"]) == (1, 2)


def test_the_apscheduler_starlette_example(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "example.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [OPENTELEMETRY_INSTRUMENT, sys.executable, RUNNER, "examples/apscheduler_starlette.py"],
            cwd=ROOT,
            env=instrumented_env(PORT=str(port), JOB_INTERVAL="0.5"),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        jobs: dict[str, Any] = {}
        while not all(jobs.get(name, {}).get("success_count") for name in EXAMPLE_JOBS):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)  # an external process: polled
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/v1/health/jobs", timeout=5)
            except httpx.TransportError:
                continue
            jobs = response.json()["jobs"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        stop_process(process)
    text = without_skipped_celery(log.read_text())
    assert "Traceback" not in text
    [monitor] = monitors_in(text)
    assert set(monitor["jobs"]) == set(EXAMPLE_JOBS)


EXAMPLE_JOBS = ("refresh_prices", "expire_sessions")
