"""``jobpulse exec``: a command run as a monitored run of a job, written to a store.

The check-in of a crontab line or a Kubernetes CronJob, with no outside service: the run,
its outcome and the job's next expected run go to the store (``--store`` or
``JOBPULSE_STORE``), where ``jobpulse status``, the routes of any process on that store and
its status page show them; a schedule that stops firing shows as ``missed``.

What is checked before the command runs, and keeps it from running (exit 3): a store is
configured, the job's name, the schedule and the options are valid, the store can be opened
(a malformed URL, a wrong password, a file that cannot be made or is not a store, a store of
a newer version), the OTLP exporters are installed when ``OTEL_EXPORTER_OTLP_ENDPOINT`` asks
for them. What does not: a store that cannot be reached while the command runs (a Redis that
is down): the command runs, its exit status is passed through, and a warning says that the
run was not recorded. Once monitoring is set up right, it never keeps the host's work from
running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector
from opentelemetry.trace import Status, StatusCode

from jobpulse import InvalidJobError, JobMonitor, StoreError
from jobpulse._cli._process import Finished, SignalForwarder, run_command
from jobpulse._shared import (
    ERROR_CATEGORY,
    ERROR_TYPE,
    JOB_TIMED_OUT,
    TIMEOUT,
    Guard,
    parse_schedule,
    redact,
    safe_error_text,
    to_seconds,
    validate_name,
)

__all__ = [
    "DEFAULT_SERVICE",
    "EXIT_CODE",
    "FLUSH_SECONDS",
    "SIGNAL",
    "ExecError",
    "ExecOptions",
    "error_text",
    "execute",
    "host_timezone",
    "service_name",
    "stall_after",
]

#: The service an exec's runs belong to unless ``OTEL_SERVICE_NAME`` (or
#: ``OTEL_RESOURCE_ATTRIBUTES``) names one: the store's Redis keys and the spans carry it.
DEFAULT_SERVICE = "jobpulse-exec"
#: Error categories of the runs of a command: it exited with a code other than 0 (or could
#: not be started), or a signal killed it. A command stopped at its timeout is ``timeout``.
EXIT_CODE = "exit_code"
SIGNAL = "signal"
#: How long the run may take to reach the store once the command has ended, and again how
#: long the monitor's shutdown may take (its last write marks this process as stopped).
FLUSH_SECONDS = 2.0
#: The longest error text a run keeps (the store's ``last_error`` holds 1,024 characters).
ERROR_CHARS = 1000
#: The span attribute of the command's exit code (OpenTelemetry semantic conventions).
PROCESS_EXIT_CODE = "process.exit.code"
_OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_LOGGER = logging.getLogger("jobpulse")
_FLUSH_GUARD = Guard("exec: writing the run")
_SHUTDOWN_GUARD = Guard("exec: monitor shutdown")


class ExecError(Exception):
    """Why the command was not run (exit 3); printed with "the command was not run"."""


@dataclass(frozen=True)
class ExecOptions:
    name: str
    command: Sequence[str]
    store: str | None
    schedule: str | None = None
    timezone: str | None = None
    #: Seconds, as a number or a duration ("90s", "15m", "1h30m").
    timeout: str | None = None
    kill_after: str = "5"
    #: Default: the monitor's (or the timeout if longer); with a schedule and no timeout,
    #: its period (`stall_after`).
    stall_after: str | None = None
    critical: bool = False
    namespace: str = ""


def service_name() -> str:
    """``OTEL_SERVICE_NAME`` (or the service of ``OTEL_RESOURCE_ATTRIBUTES``), else
    `DEFAULT_SERVICE`."""
    named = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    return str(named) if named else DEFAULT_SERVICE


def host_timezone(
    localtime: str = "/etc/localtime", timezone_file: str = "/etc/timezone"
) -> str | None:
    """The IANA name of the host's time zone, the one ``cron`` reads crontab lines in: ``TZ``
    if it names one, else the zone `localtime` links to, else the one `timezone_file` names;
    None if none of them says (UTC is then assumed)."""
    from zoneinfo import ZoneInfo

    candidates = [os.environ.get("TZ", "").strip().removeprefix(":")]
    with contextlib.suppress(OSError):
        candidates.append(os.readlink(localtime).partition("zoneinfo/")[2])
    with contextlib.suppress(OSError):
        candidates.append(Path(timezone_file).read_text().strip())
    for candidate in candidates:
        if not candidate or candidate.startswith("/") or ".." in candidate:
            continue
        try:
            ZoneInfo(candidate)
        except (KeyError, ValueError, OSError):  # not found, not a key, a folder
            continue
        return candidate
    return None


def seconds(text: str, option: str, *, zero: bool = False) -> float:
    """Seconds from a number (``90``, ``0.5``) or a duration (``90s``, ``15m``, ``1h30m``);
    more than 0 (or 0 itself if `zero`), finite, at most 366 days. Raises `ExecError`."""
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and number == 0 and zero:
        return 0.0
    try:
        return to_seconds(text if number is None else number, option)
    except InvalidJobError as exc:
        raise ExecError(str(exc)) from None


def _registration_timezone(schedule: str | None, timezone: str | None) -> str | None:
    """The time zone to register the schedule with: `timezone` if given; for a calendar
    schedule (a cron expression, ``@daily``...) without a ``CRON_TZ=`` prefix, the host's
    (cron's); none for an interval. Raises `ExecError` for a bad schedule."""
    if schedule is None:
        if timezone is not None:
            raise ExecError("--timezone goes with a calendar --schedule (a cron expression)")
        return None
    try:
        parsed = parse_schedule(schedule, timezone)
    except (InvalidJobError, ImportError) as exc:
        raise ExecError(str(exc)) from None
    if timezone is not None or parsed.is_interval:
        return timezone
    if schedule.split()[0].startswith(("CRON_TZ=", "TZ=")):
        return None
    return host_timezone()


def stall_after(options: ExecOptions, timeout: float | None, timezone: str | None) -> float | None:
    """Seconds after which a run shows as stalled: ``--stall-after`` if given; else, with a
    schedule and no timeout, the schedule's period (a run longer than that overlaps the
    next); else None, the monitor's default (300 s, or the timeout if longer). Raises
    `ExecError`."""
    if options.stall_after is not None:
        return seconds(options.stall_after, "--stall-after")
    if options.schedule is None or timeout is not None:
        return None
    try:
        return parse_schedule(options.schedule, timezone).period_seconds
    except (InvalidJobError, ImportError) as exc:  # parsed once already
        raise ExecError(str(exc)) from None


def error_text(finished: Finished) -> str:
    """The error of a failed run: what ended it, then the last lines of its output,
    redacted, cut from the front so that the end of the output is what is kept (in at most
    `ERROR_CHARS` characters)."""
    if finished.not_started is not None:
        head = f"not started (exit status {finished.exit_status}): {finished.not_started}"
    elif finished.timed_out:
        head = "stopped at its timeout (SIGTERM, then SIGKILL to its process group)"
    elif finished.signal is not None:
        head = f"killed by signal {finished.signal} ({_signal_name(finished.signal)})"
    else:
        head = f"exited with code {finished.returncode}"
    head = safe_error_text(head, 300)
    if not finished.tail:
        return head
    joint = "; its output ended with:\n"
    tail = safe_error_text(finished.tail, 16 * 1024)  # redacted whole, then cut
    room = ERROR_CHARS - len(head) - len(joint)
    if len(tail) > room:
        tail = "…" + tail[len(tail) - room + 1 :]
    return f"{head}{joint}{tail}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _category(finished: Finished) -> str:
    if finished.timed_out:
        return TIMEOUT
    if finished.signal is not None:
        return SIGNAL
    return EXIT_CODE


def _open_monitor(options: ExecOptions, store: str) -> JobMonitor:
    """The monitor of the run, on `store`: `jobpulse.setup` when OTLP export is asked for
    (the run's span and metrics are exported), else a monitor of its own that exports
    nothing. Raises `ExecError` when the store cannot be opened or the exporters are
    missing."""
    try:
        if any(os.environ.get(name, "").strip() for name in _OTLP_VARIABLES):
            import jobpulse

            return jobpulse.setup(
                DEFAULT_SERVICE,
                namespace=options.namespace,
                prometheus=False,
                store=store,
                shutdown_timeout=FLUSH_SECONDS,
            )
        return JobMonitor(namespace=options.namespace, store=store, service_name=service_name())
    except (StoreError, ImportError, InvalidJobError) as exc:
        raise ExecError(str(exc)) from None


class _Printed(logging.Handler):
    """Prints jobpulse's own errors (a run past its ``stall_after``, say) on stderr while a
    command runs. Its warnings are not printed: what they say is the run's outcome, which
    the command's own output shows, or a store that fails, which `execute` sums up."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__(logging.ERROR)
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _say(self._stream, record.getMessage())
        except Exception:  # noqa: BLE001 - logging never raises into the host
            self.handleError(record)


def execute(options: ExecOptions, *, stdout: BinaryIO, stderr: BinaryIO) -> int:
    """Run the command as a monitored run (see the module's docstring); the exit status
    of ``jobpulse exec``. Raises `ExecError` when the command was not run."""
    if not options.store:
        raise ExecError(
            "no store: give --store URL or set JOBPULSE_STORE (e.g. sqlite:////var/lib/"
            "jobpulse/jobs.db)"
        )
    try:
        name = validate_name(options.name)
    except InvalidJobError as exc:
        raise ExecError(str(exc)) from None
    timeout = None if options.timeout is None else seconds(options.timeout, "--timeout")
    kill_after = seconds(options.kill_after, "--kill-after", zero=True)
    timezone = _registration_timezone(options.schedule, options.timezone)
    stall = stall_after(options, timeout, timezone)
    handler = _Printed(stderr)
    _LOGGER.addHandler(handler)
    propagate, _LOGGER.propagate = _LOGGER.propagate, False
    try:
        monitor = _open_monitor(options, options.store)
        try:
            monitor.register(
                name,
                critical=options.critical,
                timeout=timeout,
                stall_after=stall,
                schedule=options.schedule,
                timezone=timezone,
            )
        except InvalidJobError as exc:  # checked above: a rule of the registry's own
            monitor.shutdown()
            raise ExecError(str(exc)) from None
        # From here until the store has the run, the signals this process receives go to
        # the command (and once it has ended, wait for the run to be written).
        forwarder = SignalForwarder()
        forwarder.install()
        try:
            finished = _run(
                monitor, name, options.command, timeout, kill_after, forwarder, stdout, stderr
            )
        finally:
            try:
                recorded, reason = _close(monitor)
            finally:
                forwarder.restore()
    finally:
        _LOGGER.removeHandler(handler)
        _LOGGER.propagate = propagate
    if finished.not_started is not None:
        _say(stderr, finished.not_started)
    if not recorded:
        _say(
            stderr,
            f"warning: this run of {name!r} was not recorded: store {redact(options.store)} "
            f"did not take it within {FLUSH_SECONDS:g}s ({reason or 'no answer'})",
        )
    return finished.exit_status


def _run(
    monitor: JobMonitor,
    name: str,
    command: Sequence[str],
    timeout: float | None,
    kill_after: float,
    forwarder: SignalForwarder,
    stdout: BinaryIO,
    stderr: BinaryIO,
) -> Finished:
    with monitor.run(name) as run:
        finished = run_command(
            command,
            timeout=timeout,
            kill_after=kill_after,
            stdout=stdout,
            stderr=stderr,
            forwarder=forwarder,
        )
        run.set_metadata(exit_status=finished.exit_status)
        if not finished.succeeded:
            span = run.span
            category = _category(finished)
            span.set_attribute(ERROR_CATEGORY, category)
            span.set_attribute(ERROR_TYPE, category)
            if finished.returncode is not None:
                span.set_attribute(PROCESS_EXIT_CODE, finished.returncode)
            if finished.timed_out:
                span.set_attribute(JOB_TIMED_OUT, True)
            span.set_status(Status(StatusCode.ERROR, error_text(finished)))
    return finished


def _close(monitor: JobMonitor) -> tuple[bool, str | None]:
    """Write the run to the store (within `FLUSH_SECONDS`), then shut the monitor down
    (within as long again): whether the store took the run, and if not, why."""
    recorded, reason = False, None
    with _FLUSH_GUARD:
        recorded = monitor.flush(FLUSH_SECONDS)
        link = monitor._store
        reason = None if recorded or link is None else link.publisher.error
    with _SHUTDOWN_GUARD:
        monitor.shutdown()
    return recorded, reason


def _say(stream: BinaryIO, text: str) -> None:
    stream.write(f"jobpulse: {text}\n".encode("utf-8", "backslashreplace"))
    stream.flush()


def standard_streams() -> tuple[BinaryIO, BinaryIO]:
    """This process's standard output and error, as bytes, flushed: what was printed before
    comes before the command's output. One that was closed when this process started
    (``>&-``) is ``/dev/null``: monitoring never keeps the command from running."""
    return _binary(sys.stdout), _binary(sys.stderr)


def _binary(stream: TextIO | None) -> BinaryIO:
    if stream is None:
        return open(os.devnull, "wb")
    stream.flush()
    return stream.buffer
