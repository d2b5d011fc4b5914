"""The blocks of docs/operators.md that are not Python, run as written: the crontab lines, the
shell checks, the Kubernetes CronJob's command and the exec probe's (the Python blocks are
run by test_docs). Each `jobpulse exec` runs the documented options for real against a
SQLite store of the test's; only the user's own command after ``--`` (a backup script, the
app's report module) is replaced by one that exists here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.applications import Starlette

from jobpulse import JobMonitor
from jobpulse.starlette import routes
from tests.uvicorn_server import serving

OPERATORS = Path(__file__).resolve().parent.parent / "docs" / "operators.md"
#: The console script beside this interpreter (the venv's), as a crontab's PATH finds it.
JOBPULSE = str(Path(sys.executable).parent / "jobpulse")
STAND_IN = [sys.executable, "-c", "pass"]


def blocks(language: str) -> list[str]:
    text = OPERATORS.read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "jobpulse", argv
    return subprocess.run(
        [JOBPULSE, *argv[1:]], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def with_stand_in(argv: list[str]) -> list[str]:
    """`argv` with the user's command after ``--`` replaced."""
    return [*argv[: argv.index("--") + 1], *STAND_IN]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a crontab line: no OTLP endpoint (nothing listens here), no colour."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "JOBPULSE_"))}
    return {**clean, "NO_COLOR": "1", "TZ": "UTC"}


def test_the_crontab_lines_check_in_and_the_shell_checks_read_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    (crontab,) = blocks("crontab")
    store = f"sqlite:///{tmp_path}/jobs.db"
    lines = [line for line in crontab.splitlines() if line.strip() and not line.startswith("#")]
    settings = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    assert settings["JOBPULSE_STORE"].startswith("sqlite:////")
    env = {**env, "JOBPULSE_STORE": store}  # the documented one is /var/lib/...
    jobs = [shlex.split(line)[5:] for line in lines if not re.match(r"^[A-Z_]+=", line)]
    assert [job[:3] for job in jobs] == [
        ["jobpulse", "exec", "nightly-backup"],
        ["jobpulse", "exec", "sync-prices"],
    ]
    for job in jobs:
        done = run(with_stand_in(job), env)
        assert done.returncode == 0, done.stderr
        assert done.stdout == done.stderr == ""  # a successful check-in says nothing

    (checks,) = [block for block in blocks("console") if "jobpulse status" in block]
    commands = [shlex.split(line) for line in checks.splitlines() if line.strip()]
    assert [command[:2] for command in commands] == [
        ["jobpulse", "status"],
        ["jobpulse", "history"],
    ]
    documented = "sqlite:////var/lib/jobpulse/jobs.db"
    status, history = (
        [store if word == documented else word for word in command] for command in commands
    )
    done = run(status, env)
    assert done.returncode == 0, done.stderr  # healthy: both ran, both expected later
    assert done.stdout.startswith("JOBS HEALTHY - 2 jobs: 2 ok")
    assert "nightly-backup" in done.stdout
    assert "sync-prices" in done.stdout
    done = run(history, env)
    assert done.returncode == 0, done.stderr
    assert "nightly-backup" in done.stdout


def cronjob_and_probe() -> tuple[dict[str, Any], dict[str, Any]]:
    cronjob, probe = (yaml.safe_load(block) for block in blocks("yaml"))
    return cronjob, probe


def test_the_cronjob_command_checks_in_for_the_app_service(
    env: dict[str, str], tmp_path: Path
) -> None:
    cronjob, _ = cronjob_and_probe()
    assert cronjob["kind"] == "CronJob"
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    variables = {variable["name"]: variable for variable in container["env"]}
    assert set(variables) == {
        "JOBPULSE_STORE",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
    store = f"sqlite:///{tmp_path}/jobs.db"
    env = {
        **env,
        "JOBPULSE_STORE": store,  # the documented one comes from a Secret
        "OTEL_SERVICE_NAME": variables["OTEL_SERVICE_NAME"]["value"],
    }
    done = run(with_stand_in(container["command"]), env)
    assert done.returncode == 0, done.stderr
    reader = JobMonitor(store=store)
    try:
        status = reader.status("nightly-report")
        assert status is not None
        assert (status.success_count, status.critical, status.timeout_seconds) == (1, True, 2700)
        assert status.schedule == "30 2 * * *"
        assert status.timezone == "Etc/UTC"
        assert {instance.service for instance in reader.instances()} >= {"icy-backend"}
    finally:
        reader.shutdown()


def test_the_exec_probe_passes_on_a_healthy_server(env: dict[str, str]) -> None:
    _, probe = cronjob_and_probe()
    command = probe["readinessProbe"]["exec"]["command"]
    monitor = JobMonitor()
    with monitor.run("nightly_report"):
        pass
    try:
        with serving(Starlette(routes=routes(monitor, metrics=False))) as base:
            argv = [base if word == "http://127.0.0.1:8000" else word for word in command]
            assert base in argv
            done = run(argv, env)
    finally:
        monitor.shutdown()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("JOBS HEALTHY - 1 job: 1 ok")
