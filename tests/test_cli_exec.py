"""``jobpulse exec``: commands run as monitored runs written to a real store (a SQLite file
and a real redis-server), as processes of their own (``python -m jobpulse._cli``, and the
console script once), the way cron and a Kubernetes CronJob start them; then the same in
this process (`run`), where coverage sees them."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from jobpulse import JobState, JobStatus, StoreError
from jobpulse._cli import _exec, _process
from jobpulse._cli._commands import run
from jobpulse.store._readonly import FleetReader
from jobpulse.testing import FakeClock
from tests.conftest import default_interrupts
from tests.otlp_receiver import http_receiver
from tests.prometheus_server import free_port

JOBPULSE = Path(sys.executable).parent / "jobpulse"
MODULE = (sys.executable, "-m", "jobpulse._cli")
#: A Python one-liner as the command.
PY = (sys.executable, "-c")
DEADLINE_SECONDS = 30.0


def environment(**more: str) -> dict[str, str]:
    """This process's environment without jobpulse's and OpenTelemetry's settings."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JOBPULSE_", "OTEL_"))
    }
    return {**kept, **more}


def jobpulse_exec(
    store: str | None,
    name: str,
    *command: str,
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
    program: Sequence[str] = MODULE,
) -> subprocess.CompletedProcess[bytes]:
    store_options = () if store is None else ("--store", store)
    return subprocess.run(
        [*program, "exec", name, *store_options, *options, "--", *command],
        capture_output=True,
        env=environment() if env is None else env,
        timeout=60,
        check=False,
    )


def read_status(url: str, name: str, clock: FakeClock | None = None) -> JobStatus:
    reader = FleetReader(url, service="jobpulse-exec", clock=clock)
    try:
        status = reader.status(name)
    finally:
        reader.close()
    assert status is not None, f"no job {name!r} in {url}"
    return status


def _state_in_store(url: str, name: str) -> JobState | None:
    """The job's state as a reader of the store sees it, or None while it has no such job."""
    reader = FleetReader(url, service="jobpulse-exec")
    try:
        status = reader.status(name)
    finally:
        reader.close()
    return None if status is None else status.state


def gone(pid: int) -> bool:
    """True once process `pid` has exited (a zombie nobody reaped has exited too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_until(condition: Any, seconds: float = DEADLINE_SECONDS) -> bool:
    """Poll `condition` until it holds or `seconds` pass (another process's doing: nothing
    here to wait on)."""
    deadline = time.monotonic() + seconds
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.02)
    return True


# -- as processes ---------------------------------------------------------------------------


def test_a_command_that_succeeds(fleet_url: str) -> None:
    done = jobpulse_exec(
        fleet_url,
        "ingest",
        *PY,
        "import sys; print('to stdout'); print('to stderr', file=sys.stderr)",
        options=["--schedule", "@every 1h"],
        program=[str(JOBPULSE)],  # the console script
    )
    assert done.returncode == 0
    # Its output, and nothing else: cron mails whatever a job prints.
    assert (done.stdout, done.stderr) == (b"to stdout\n", b"to stderr\n")
    status = read_status(fleet_url, "ingest")
    assert status.state is JobState.SUCCESS
    assert (status.success_count, status.failure_count) == (1, 0)
    assert status.metadata == {"exit_status": 0}
    assert status.schedule == "@every 1h"
    assert status.next_run_time is not None
    assert status.last_run_time is not None
    assert status.next_run_time - status.last_run_time > timedelta(minutes=59)
    reader = FleetReader(fleet_url, service="jobpulse-exec")
    try:
        [instance] = reader.instances()
        assert (instance.service, instance.stopped) == ("jobpulse-exec", True)
        assert [run.outcome for run in reader.history("ingest")] == [JobState.SUCCESS]
    finally:
        reader.close()


def test_a_reader_sees_the_command_running(fleet_url: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    script = (
        "import pathlib, time\n"
        f"while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.02)\n"
    )
    with subprocess.Popen(
        [*MODULE, "exec", "long", "--store", fleet_url, "--", *PY, script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(),
    ) as process:
        try:

            def running() -> bool:
                try:
                    return read_status(fleet_url, "long").state is JobState.RUNNING
                except (StoreError, AssertionError):  # not written yet
                    return False

            assert wait_until(running)
            release.touch()
            assert process.wait(timeout=60) == 0
        finally:
            process.kill()
    assert read_status(fleet_url, "long").state is JobState.SUCCESS


def test_a_command_that_fails_keeps_the_end_of_its_output_redacted(fleet_url: str) -> None:
    script = (
        "import sys\n"
        "for i in range(30): print(f'line {i}')\n"
        "print('connecting with password=hunter2', file=sys.stderr)\n"
        "print('Authorization: Bearer abcdefghijklmnopqrstuvwxyz', file=sys.stderr)\n"
        "sys.exit(5)\n"
    )
    done = jobpulse_exec(fleet_url, "reports", *PY, script)
    assert done.returncode == 5
    # Passed through unchanged, secrets and all: only what jobpulse keeps is redacted.
    assert done.stdout == b"".join(f"line {i}\n".encode() for i in range(30))
    assert b"password=hunter2" in done.stderr
    status = read_status(fleet_url, "reports")
    assert status.state is JobState.FAILED
    assert status.last_error_category == "exit_code"
    error = status.last_error or ""
    lines = error.splitlines()
    assert lines[0] == "exited with code 5; its output ended with:"
    # The last 20 lines of both streams: 18 of stdout, then stderr's 2.
    assert lines[1:] == [
        *(f"line {i}" for i in range(12, 30)),
        "connecting with password=***",
        "Authorization: Bearer ***",
    ]
    assert "hunter2" not in error
    assert "abcdefghijklmnop" not in error
    assert status.metadata == {"exit_status": 5}


def test_a_long_output_keeps_its_end(fleet_url: str) -> None:
    script = "import sys\nfor i in range(5000): print(f'{i:04d} ' + 'x' * 60)\nsys.exit(1)\n"
    done = jobpulse_exec(fleet_url, "noisy", *PY, script)
    assert done.returncode == 1
    assert len(done.stdout) == 5000 * 66
    error = read_status(fleet_url, "noisy").last_error or ""
    assert len(error) <= 1024
    assert error.startswith("exited with code 1; its output ended with:\n…")
    assert error.endswith("4999 " + "x" * 60)


def test_a_command_killed_by_a_signal(fleet_url: str) -> None:
    done = jobpulse_exec(
        fleet_url, "killed", *PY, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert done.returncode == 128 + 9
    status = read_status(fleet_url, "killed")
    assert status.last_error_category == "signal"
    assert status.last_error == "killed by signal 9 (SIGKILL)"


@pytest.mark.slow
@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_a_command_past_its_timeout_is_killed_with_its_process_group(
    fleet_url: str, ignores_sigterm: bool
) -> None:
    trap = "trap '' TERM; " if ignores_sigterm else ""
    started = time.monotonic()
    done = jobpulse_exec(
        fleet_url,
        "slow",
        "sh",
        "-c",
        f"{trap}sleep 300 & echo $!; wait",
        options=["--timeout", "1", "--kill-after", "1"],
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 124
    grandchild = int(done.stdout)
    assert wait_until(lambda: gone(grandchild)), "the command's sleep outlived the timeout"
    assert elapsed < 20
    if ignores_sigterm:
        assert elapsed >= 2  # SIGKILL came after --kill-after
    status = read_status(fleet_url, "slow")
    assert status.last_error_category == "timeout"
    assert status.timeout_count == 1
    assert status.timeout_seconds == 1
    assert (status.last_error or "").startswith("stopped at its timeout")


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
def test_signals_sent_to_exec_reach_the_command(store_url: str, number: int) -> None:
    script = (
        "import signal, sys\n"
        "def handle(number, frame):\n"
        "    print(f'got {number}', flush=True)\n"
        "    sys.exit(40 + number)\n"
        "for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):\n"
        "    signal.signal(number, handle)\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    process = subprocess.Popen(
        [*MODULE, "exec", "waits", "--store", store_url, "--", *PY, script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(),
        preexec_fn=default_interrupts,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"  # its handlers are in place
        process.send_signal(number)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert (out, err) == (f"got {number}\n".encode(), b"")
    assert process.returncode == 40 + number
    assert read_status(store_url, "waits").last_error == (
        f"exited with code {40 + number}; its output ended with:\nready\ngot {number}"
    )


def test_exec_ends_when_its_own_output_is_closed(store_url: str) -> None:
    """``jobpulse exec x -- yes | head -1``: the command gets SIGPIPE, as it would alone."""
    with subprocess.Popen(
        [*MODULE, "exec", "yes", "--store", store_url, "--", "yes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=environment(),
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == b"y\n"
            process.stdout.close()
            assert process.wait(timeout=60) == 128 + signal.SIGPIPE
        finally:
            process.kill()
    assert read_status(store_url, "yes").last_error_category == "signal"


@pytest.mark.parametrize("timeout", [True, False])
def test_exec_ends_soon_after_its_command_when_its_own_output_is_blocked(
    store_url: str, timeout: bool
) -> None:
    """``jobpulse exec x -- yes | stuck-reader``: once the command is gone (its timeout, or
    SIGTERM sent to exec), exec does not wait on the reader to end."""
    options = ["--timeout", "1", "--kill-after", "0.5"] if timeout else []
    with subprocess.Popen(
        [*MODULE, "exec", "blocked", "--store", store_url, *options, "--", "yes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=environment(),
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.read(2) == b"y\n"  # running; from here nobody reads
            if not timeout:
                process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=DEADLINE_SECONDS) == (124 if timeout else 143)
        finally:
            process.kill()
    status = read_status(store_url, "blocked")
    assert status.last_error_category == ("timeout" if timeout else "signal")


@pytest.mark.parametrize("closed", [">&-", "2>&-"])
def test_exec_with_its_own_output_closed_runs_the_command(
    store_url: str, tmp_path: Path, closed: str
) -> None:
    ran = tmp_path / "ran"
    script = (
        f"import pathlib, sys; pathlib.Path({str(ran)!r}).touch(); print('out'); "
        "print('err', file=sys.stderr)"
    )
    exec_ = [*MODULE, "exec", "closed", "--store", store_url, "--", *PY, script]
    done = subprocess.run(
        ["sh", "-c", f'"$@" {closed}', "sh", *exec_],
        capture_output=True,
        env=environment(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert ran.exists()
    assert (done.stdout, done.stderr) == ((b"", b"err\n") if closed == ">&-" else (b"out\n", b""))
    assert read_status(store_url, "closed").state is JobState.SUCCESS


def test_output_passes_through_byte_for_byte(store_url: str) -> None:
    script = (
        "import sys; sys.stdout.buffer.write(bytes(range(256)) + b'no newline');"
        "sys.stderr.buffer.write(b'\\xff\\xfe\\r\\n')"
    )
    done = jobpulse_exec(store_url, "bytes", *PY, script)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        bytes(range(256)) + b"no newline",
        b"\xff\xfe\r\n",
    )


def test_without_a_store_the_command_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = ("touch", str(marker))
    done = jobpulse_exec(None, "backup", *command)
    assert done.returncode == 3
    assert done.stdout == b""
    assert done.stderr == (
        b"jobpulse exec: no store: give --store URL or set JOBPULSE_STORE (e.g. sqlite:////var/"
        b"lib/jobpulse/jobs.db); the command was not run\n"
    )
    for options in (
        ["--store", "postgres://db/jobs"],
        ["--store", f"sqlite:///{tmp_path}/jobs.db", "--schedule", "every five minutes"],
        ["--store", f"sqlite:///{tmp_path}/jobs.db", "--timeout", "0"],
        ["--store", f"sqlite:///{tmp_path}/jobs.db", "--nope"],
    ):
        refused = jobpulse_exec(None, "backup", *command, options=options)
        assert refused.returncode == 3, options
        assert refused.stderr.startswith((b"jobpulse exec: ", b"Usage:")), refused.stderr
    assert not marker.exists()
    env = environment(JOBPULSE_STORE=f"sqlite:///{tmp_path}/jobs.db")
    assert jobpulse_exec(None, "backup", *command, env=env).returncode == 0
    assert marker.exists()


def test_a_store_that_cannot_be_reached_still_runs_the_command(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    done = jobpulse_exec(url, "backup", *PY, "print('did the work'); raise SystemExit(4)")
    elapsed = time.monotonic() - started
    assert done.returncode == 4
    assert done.stdout == b"did the work\n"
    assert done.stderr.startswith(
        f"jobpulse: warning: this run of 'backup' was not recorded: store {url} did not take "
        "it within 2s (ConnectionError: Error 111 connecting to".encode()
    )
    assert elapsed < 10  # bounded: 2 x FLUSH_SECONDS and the start


@pytest.mark.slow
@pytest.mark.parametrize("critical", [False, True])
def test_a_crontab_line_that_stops_running_shows_as_missed(fleet_url: str, critical: bool) -> None:
    # 4 s and 1 s of grace: time enough, on a loaded machine, to read it before the slot.
    options = ["--schedule", "@every 4s", *(["--critical"] if critical else [])]
    assert jobpulse_exec(fleet_url, "tick", "true", options=options).returncode == 0
    status = read_status(fleet_url, "tick")
    assert status.state is JobState.SUCCESS
    assert status.last_run_time is not None
    assert status.next_run_time is not None
    assert status.next_run_time - status.last_run_time >= timedelta(seconds=4)
    assert status.grace_seconds == 1
    # Nothing runs it again: once its slot and grace are past, a reader sees it missed.
    due = status.next_run_time + timedelta(seconds=status.grace_seconds or 0)
    threading.Event().wait(max((due - datetime.now(timezone.utc)).total_seconds(), 0))
    assert wait_until(lambda: read_status(fleet_url, "tick").state is JobState.MISSED)
    checked = subprocess.run(
        [*MODULE, "status", "--store", fleet_url],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
        check=False,
    )
    assert checked.returncode == (2 if critical else 1)
    assert checked.stdout.startswith(
        f"JOBS {'UNHEALTHY' if critical else 'DEGRADED'} - 1 job: 1 missed |"
    )


def test_a_cron_schedule_follows_the_hosts_time_zone_and_a_reader_sees_it_missed(
    fleet_url: str,
) -> None:
    env = environment(TZ="Asia/Kolkata")  # UTC+05:30: a slot at :00 there is :30 in UTC
    assert (
        jobpulse_exec(
            fleet_url, "hourly", "true", options=["--schedule", "0 * * * *"], env=env
        ).returncode
        == 0
    )
    status = read_status(fleet_url, "hourly")
    assert status.schedule == "0 * * * *"
    assert status.timezone == "Asia/Kolkata"
    assert status.next_run_time is not None
    assert status.next_run_time.minute == 30
    # A reader whose clock is past the slot and its 6 minutes of grace.
    clock = FakeClock(start=status.next_run_time + timedelta(minutes=7))
    assert read_status(fleet_url, "hourly", clock).state is JobState.MISSED


@pytest.mark.slow
def test_the_run_is_exported_when_otlp_is_configured(store_url: str) -> None:
    with http_receiver() as receiver:
        env = environment(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_SERVICE_NAME="nightly-cron",
        )
        done = jobpulse_exec(
            store_url, "export", *PY, "print('password=hunter2'); raise SystemExit(6)", env=env
        )
        assert done.returncode == 6
        spans = receiver.store.wait_for_spans(lambda spans: any(s.name == "export" for s in spans))
    [span] = [span for span in spans if span.name == "export"]
    assert span.resource["service.name"] == "nightly-cron"
    assert span.attributes["job.name"] == "export"
    assert span.attributes["job.error.category"] == "exit_code"
    assert span.attributes["process.exit.code"] == 6
    assert span.status_code == 2
    assert span.status_message == "exited with code 6; its output ended with:\npassword=***"
    reader = FleetReader(store_url)
    try:
        assert [instance.service for instance in reader.instances()] == ["nightly-cron"]
    finally:
        reader.close()


# -- in this process ------------------------------------------------------------------------


@dataclass
class Ran:
    code: int
    out: bytes
    err: bytes


@pytest.fixture
def jobpulse_here(capsysbinary: pytest.CaptureFixture[bytes]) -> Any:
    """``jobpulse`` run in this process: its exit status and what it printed."""

    def invoke(*args: str) -> Ran:
        capsysbinary.readouterr()
        code = run(args)
        captured = capsysbinary.readouterr()
        return Ran(code, captured.out, captured.err)

    return invoke


@pytest.fixture(autouse=True)
def _no_signal_handlers_left() -> Iterator[None]:
    """Every test leaves the signal handlers and the wakeup fd as it found them."""
    numbers = (*_process.FORWARDED_SIGNALS, signal.SIGCHLD)
    before = {number: signal.getsignal(number) for number in numbers}
    yield
    assert {number: signal.getsignal(number) for number in numbers} == before
    assert signal.set_wakeup_fd(-1) == -1


def test_outcomes_in_this_process(jobpulse_here: Any, fleet_url: str, tmp_path: Path) -> None:
    ok = jobpulse_here("exec", "ok", "--store", fleet_url, "--", *PY, "print('fine')")
    assert (ok.code, ok.out, ok.err) == (0, b"fine\n", b"")
    failed = jobpulse_here(
        "exec", "failed", "--store", fleet_url, "--", "sh", "-c", "echo token=abc123 >&2; exit 9"
    )
    assert (failed.code, failed.err) == (9, b"token=abc123\n")
    killed = jobpulse_here(
        "exec", "killed", "--store", fleet_url, "--", "sh", "-c", "kill -TERM $$"
    )
    assert killed.code == 128 + 15
    missing = jobpulse_here("exec", "missing", "--store", fleet_url, "--", str(tmp_path / "nope"))
    assert missing.code == 127
    assert (
        missing.err
        == f"jobpulse: cannot run '{tmp_path / 'nope'}': No such file or directory\n".encode()
    )
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")  # not executable
    denied = jobpulse_here("exec", "denied", "--store", fleet_url, "--", str(script))
    assert denied.code == 126
    assert denied.err == f"jobpulse: cannot run '{script}': Permission denied\n".encode()
    assert read_status(fleet_url, "ok").state is JobState.SUCCESS
    assert read_status(fleet_url, "failed").last_error == (
        "exited with code 9; its output ended with:\ntoken=***"
    )
    assert read_status(fleet_url, "killed").last_error == "killed by signal 15 (SIGTERM)"
    assert read_status(fleet_url, "missing").last_error == (
        f"not started (exit status 127): cannot run '{tmp_path / 'nope'}': No such file or "
        "directory"
    )
    assert read_status(fleet_url, "denied").last_error_category == "exit_code"


def test_a_timeout_in_this_process(jobpulse_here: Any, store_url: str) -> None:
    started = time.monotonic()
    ran = jobpulse_here(
        "exec",
        "slow",
        "--store",
        store_url,
        "--timeout",
        "0.3",
        "--kill-after",
        "0",
        "--",
        "sh",
        "-c",
        "trap '' TERM; sleep 300 & echo $!; wait",
    )
    assert ran.code == 124
    assert time.monotonic() - started < 20
    assert wait_until(lambda: gone(int(ran.out)))
    status = read_status(store_url, "slow")
    assert (status.last_error_category, status.timeout_seconds) == ("timeout", 0.3)


def test_a_signal_to_this_process_reaches_the_command(
    jobpulse_here: Any, store_url: str, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    script = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGHUP, lambda number, frame: sys.exit(70))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"  # ends the test, failed, if the signal never comes
    )
    # Were the signal not forwarded, it would not end the test run either.
    previous = signal.signal(signal.SIGHUP, lambda number, frame: None)

    def hang_up() -> None:
        if wait_until(ready.exists):
            os.kill(os.getpid(), signal.SIGHUP)  # to jobpulse exec: this process

    sender = threading.Thread(target=hang_up)
    sender.start()
    try:
        ran = jobpulse_here("exec", "waits", "--store", store_url, "--", *PY, script)
    finally:
        sender.join()
        signal.signal(signal.SIGHUP, previous)
    assert ran.code == 70


def test_what_is_refused_before_the_command_runs(
    jobpulse_here: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    for options, error in (
        ((), "no store: give --store URL or set JOBPULSE_STORE"),
        (("--store", "redis://:pw@[::1"), "store 'redis://:***@[::1': Invalid IPv6 URL"),
        (("--store", store, "--timeout", "0"), "--timeout must be a positive, finite duration"),
        (("--store", store, "--timeout", "nan"), "--timeout must be a positive, finite duration"),
        (("--store", store, "--timeout", "soon"), "--timeout must be a duration such as"),
        (("--store", store, "--kill-after", "-1"), "--kill-after must be a positive"),
        (("--store", store, "--schedule", "@every"), "schedule '@every'"),
        (("--store", store, "--timezone", "UTC"), "--timezone goes with a calendar --schedule"),
        (
            ("--store", store, "--schedule", "@daily", "--timezone", "Nowhere/Town"),
            "timezone 'Nowhere/Town': no such IANA time zone",
        ),
    ):
        ran = jobpulse_here("exec", "backup", *options, "--", "touch", str(marker))
        assert ran.code == 3, options
        assert ran.out == b""
        assert ran.err.startswith(b"jobpulse exec: " + error.encode()), ran.err
        assert ran.err.endswith(b"; the command was not run\n")
    bad_name = jobpulse_here("exec", "bad\tname", "--store", store, "--", "touch", str(marker))
    assert bad_name.code == 3
    assert b"job name must not contain control" in bad_name.err
    assert not marker.exists()
    assert not (tmp_path / "jobs.db").exists()


def test_an_unreachable_store_in_this_process(jobpulse_here: Any) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    ran = jobpulse_here("exec", "backup", "--store", url, "--", "sh", "-c", "echo done; exit 2")
    assert (ran.code, ran.out) == (2, b"done\n")
    assert b"was not recorded" in ran.err


def test_the_run_is_exported_from_this_process(
    jobpulse_here: Any, store_url: str, otel_globals: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with http_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        ran = jobpulse_here("exec", "exported", "--store", store_url, "--", "true")
        assert ran.code == 0
        spans = receiver.store.wait_for_spans(lambda spans: len(spans) == 1)
    assert spans[0].resource["service.name"] == "jobpulse-exec"
    assert read_status(store_url, "exported").state is JobState.SUCCESS


def test_cron_schedules_and_time_zones(jobpulse_here: Any, store_url: str) -> None:
    for name, options, zone in (
        (
            "explicit",
            ("--schedule", "0 3 * * *", "--timezone", "America/New_York"),
            "America/New_York",
        ),
        ("prefixed", ("--schedule", "CRON_TZ=Asia/Tokyo 0 3 * * *"), "Asia/Tokyo"),
        ("interval", ("--schedule", "@every 10m"), None),
    ):
        assert jobpulse_here("exec", name, "--store", store_url, *options, "--", "true").code == 0
        assert read_status(store_url, name).timezone == zone


def test_when_a_run_shows_as_stalled(jobpulse_here: Any, store_url: str) -> None:
    """A run longer than its schedule's period overlaps the next one: stalled past it, not
    past the monitor's 300 s, unless --timeout or --stall-after says otherwise."""
    for name, options, stall_after in (
        ("every", ["--schedule", "@every 2s"], 2.0),
        ("hourly", ["--schedule", "@hourly"], 3600.0),
        ("timeout", ["--schedule", "@every 2s", "--timeout", "10"], 300.0),
        ("long-timeout", ["--timeout", "10m"], 600.0),
        ("explicit", ["--schedule", "@every 2s", "--stall-after", "45s"], 45.0),
        ("unscheduled", [], 300.0),
    ):
        ran = jobpulse_here("exec", name, "--store", store_url, *options, "--", "true")
        assert (ran.code, ran.err) == (0, b"")
        assert read_status(store_url, name).stall_after_seconds == stall_after, name
    refused = jobpulse_here("exec", "x", "--store", store_url, "--stall-after", "0", "--", "true")
    assert refused.code == 3
    assert b"--stall-after must be a positive, finite duration" in refused.err


def test_a_run_past_its_schedules_period_is_stalled_and_says_so(store_url: str) -> None:
    command = [*PY, "import sys; sys.stdin.read()"]  # until its input is closed
    with subprocess.Popen(
        [
            *MODULE,
            "exec",
            "overlaps",
            "--store",
            store_url,
            "--schedule",
            "@every 1s",
            "--",
            *command,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(),
    ) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()  # the stall alert, a second into the run
            assert line.startswith(b"jobpulse: job 'overlaps' stalled: running for ")
            assert line.endswith(b"past its stall_after of 1.0s\n")
            # The store has it once the exec process's publisher wrote (within a second).
            assert wait_until(lambda: _state_in_store(store_url, "overlaps") is JobState.STALLED)
            assert process.stdin is not None
            process.stdin.close()  # the command ends
            assert process.wait(timeout=DEADLINE_SECONDS) == 0
        finally:
            process.kill()


def test_the_hosts_time_zone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Europe/Berlin")
    named = tmp_path / "timezone"
    named.write_text("Africa/Nairobi\n")
    missing = str(tmp_path / "missing")
    monkeypatch.setenv("TZ", ":Europe/Paris")
    assert _exec.host_timezone(str(link), str(named)) == "Europe/Paris"
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")  # POSIX: not a name
    assert _exec.host_timezone(str(link), str(named)) == "Europe/Berlin"
    monkeypatch.delenv("TZ")
    assert _exec.host_timezone(missing, str(named)) == "Africa/Nairobi"
    named.write_text("../../etc/passwd\n")
    assert _exec.host_timezone(missing, str(named)) is None
    assert _exec.host_timezone(missing, missing) is None


def test_error_texts() -> None:
    finished = _process.Finished
    assert _exec.error_text(finished(1, returncode=1)) == "exited with code 1"
    assert _exec.error_text(finished(128 + 64, signal=64)).startswith("killed by signal 64 (")
    assert _exec.error_text(finished(128 + 99, signal=99)) == "killed by signal 99 (unknown)"
    long_tail = "\n".join(f"{index:03d} " + "y" * 96 for index in range(20))
    text = _exec.error_text(finished(124, timed_out=True, tail=long_tail))
    assert len(text) == _exec.ERROR_CHARS
    assert text.startswith(
        "stopped at its timeout (SIGTERM, then SIGKILL to its process "
        "group); its output ended with:\n…"
    )
    assert text.endswith("019 " + "y" * 96)


def test_the_tail_of_the_output() -> None:
    def tail(*chunks: bytes) -> str:
        read_end, write_end = os.pipe()
        os.close(write_end)
        with open(read_end, "rb") as pipe, open(os.devnull, "wb") as sink:
            pump = _process._Pump([(pipe, sink)])
            pump.finish(5)
            for chunk in chunks:
                pump._keep(chunk)
            return pump.tail()

    assert tail(b"a\r\n", b"progress 10%\rprogress 100%\n", b"\n\n") == "a\nprogress 100%"
    assert tail(b"\xff\xfe broken\n") == "\ufffd\ufffd broken"
    size = _process.TAIL_BUFFER_BYTES
    cut = tail(b"password=" + b"x" * size + b"\nlast line\n")
    assert cut == "last line"  # the first line, cut at its start, is left out
    huge = tail(b"y" * (size + 10))
    assert huge == f"[the last line of output is longer than {size} bytes]"


def test_signals_that_come_before_the_command_starts_reach_it() -> None:
    previous = signal.signal(signal.SIGTERM, lambda number, frame: None)  # were it not
    forwarder = _process.SignalForwarder()
    forwarder.install()
    try:
        signal.raise_signal(signal.SIGTERM)  # handled here: no command yet
        assert forwarder.received == [signal.SIGTERM]
        with subprocess.Popen(["sleep", "300"], start_new_session=True) as sleeper:
            forwarder.forward_to(sleeper.pid)
            assert sleeper.wait(timeout=60) == -signal.SIGTERM
    finally:
        forwarder.restore()
        signal.signal(signal.SIGTERM, previous)
    _process.kill_group(sleeper.pid, signal.SIGTERM)  # gone: no error


def test_off_the_main_thread_nothing_is_forwarded_and_the_command_still_runs() -> None:
    results: list[_process.Finished] = []

    def work() -> None:
        forwarder = _process.SignalForwarder()
        forwarder.install()  # does nothing here
        with open(os.devnull, "wb") as sink:
            results.append(
                _process.run_command(
                    ["sh", "-c", "exit 3"],
                    timeout=None,
                    kill_after=0,
                    stdout=sink,
                    stderr=sink,
                    forwarder=forwarder,
                )
            )
        forwarder.restore()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results[0].exit_status == 3


def test_jobpulse_errors_are_printed_while_a_command_runs() -> None:
    class Broken(io.BytesIO):
        def write(self, data: Any) -> int:
            raise OSError("gone")

    stream = io.BytesIO()
    handler = _exec._Printed(stream)
    record = logging.LogRecord(
        "jobpulse", logging.ERROR, __file__, 1, "job %r stalled", ("x",), None
    )
    handler.handle(record)
    assert stream.getvalue() == b"jobpulse: job 'x' stalled\n"
    broken = _exec._Printed(Broken())
    raised, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        broken.handle(record)  # logging's own error handling: nothing raised
    finally:
        logging.raiseExceptions = raised
