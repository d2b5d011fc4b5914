"""The ``jobpulse`` command's subcommands (click) and how they print (rich). Imported only
once `jobpulse._cli.main` has found both installed."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from jobpulse import __version__
from jobpulse._cli._exec import ExecError, ExecOptions, execute, service_name, standard_streams
from jobpulse._cli._render import (
    UNKNOWN_EXIT,
    clean,
    exit_code,
    history_renderable,
    status_renderable,
)
from jobpulse._cli._sources import (
    HttpSource,
    JobNotFound,
    Source,
    StoreSource,
    Unknown,
    url_credentials,
)
from jobpulse._redaction import REDACTED, redact

__all__ = ["cli", "run"]

#: Ctrl-C outside ``--watch`` (as shells report SIGINT).
INTERRUPTED_EXIT = 130
#: The width of what is printed when standard output is not a terminal (a file, a pipe, a
#: monitoring agent), unless ``COLUMNS`` says otherwise.
PIPE_WIDTH = 200
_MAX_LIMIT = 10_000


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (None: the process's); its exit status. A usage error
    exits 3 (UNKNOWN), not click's 2, which would read as UNHEALTHY."""
    try:
        result = cli.main(
            args=None if argv is None else list(argv),
            prog_name="jobpulse",
            standalone_mode=False,
        )
    except click.ClickException as exc:
        exc.show()
        return UNKNOWN_EXIT
    except click.Abort:  # Ctrl-C
        return INTERRUPTED_EXIT
    return result if isinstance(result, int) else 0


def _console() -> Console:
    """Colour only on a terminal and without ``NO_COLOR``; wide lines when not a terminal."""
    console = Console(highlight=False, no_color=bool(os.environ.get("NO_COLOR")))
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


#: Shorter secrets are not masked where they stand alone (they would garble the text); in a
#: URL, `redact` finds them by their place.
_MASKED_CHARS = 4
_C1_CONTROLS = re.compile(r"[\x7f-\x9f]")


def _secrets(url: str | None, token: str | None) -> tuple[str, ...]:
    """What must never be printed: the token, and the password of `url` (or its user info
    when that is all it has, as a token is), raw and percent-decoded."""
    found = [token or ""]
    if url:
        credentials = url_credentials(url)
        if credentials is not None:
            user, password = credentials
            found.append(password or user)
            authority = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0]
            userinfo = authority.rpartition("@")[0]
            found.append(userinfo.partition(":")[2] or userinfo)
    return tuple(secret for secret in found if len(secret) >= _MASKED_CHARS)


def _reason(reason: object, secrets: tuple[str, ...]) -> str:
    """`reason` as one printable line: redacted, the `secrets` masked, controls escaped."""
    text = redact(str(reason))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return clean(text)


def _unknown(reason: object, secrets: tuple[str, ...] = ()) -> int:
    click.echo(f"UNKNOWN: {_reason(reason, secrets)}", err=True)
    return UNKNOWN_EXIT


def _unexpected(exc: Exception) -> str:
    return f"jobpulse failed: {type(exc).__name__}: {exc}"


def _json(document: object) -> str:
    """`document` as indented JSON; C1 controls escaped too (JSON escapes only C0)."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return _C1_CONTROLS.sub(lambda match: f"\\u{ord(match[0]):04x}", text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="jobpulse")
def cli() -> None:
    """Look at the jobs jobpulse monitors, and run commands as monitored jobs.

    \b
    Exit status of status and history (the monitoring-plugin convention):
      0 healthy, 1 degraded, 2 unhealthy,
      3 unknown (cannot tell: unreachable, a bad answer, a usage error).
    """


def _source_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--url",
            metavar="URL",
            help="A jobpulse server: its base URL (with the prefix its routes are mounted "
            "under) or its health document's URL (.../api/v1/health/jobs).",
        ),
        click.option(
            "--store",
            metavar="URL",
            envvar="JOBPULSE_STORE",
            help="Read a store directly, read only: sqlite:///relative.db, "
            "sqlite:////absolute.db, redis://host:6379/0. [env: JOBPULSE_STORE]",
        ),
        click.option(
            "--token",
            metavar="TOKEN",
            envvar="JOBPULSE_TOKEN",
            help="Sent to --url as 'Authorization: Bearer TOKEN'. [env: JOBPULSE_TOKEN]",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=10.0,
            show_default=True,
            metavar="SECONDS",
            help="How long to wait for --url's answer.",
        ),
        click.option(
            "--service",
            metavar="NAME",
            help="The service whose Redis store to read (its keys' prefix). "
            "[default: OTEL_SERVICE_NAME, else jobpulse-exec]",
        ),
        click.option(
            "--namespace",
            default="",
            metavar="NAMESPACE",
            help="The namespace of that service's monitor (its keys' prefix).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _open_source(
    context: click.Context,
    url: str | None,
    store: str | None,
    token: str | None,
    timeout: float,
    service: str | None,
    namespace: str,
) -> Source:
    """The source the options name; `Unknown` when they name none, or both."""
    if url and store and context.get_parameter_source("store") is ParameterSource.ENVIRONMENT:
        store = None  # an explicit --url wins over the environment's store
    if url and store:
        raise Unknown("give --url or --store, not both")
    if url:
        return HttpSource(url, token=token, timeout=timeout)
    if store:
        return StoreSource(store, namespace=namespace, service=service or service_name())
    raise Unknown(
        "where are the jobs? give --url URL (a jobpulse server) or --store URL (its store, "
        "read only), or set JOBPULSE_STORE"
    )


def _on_source(
    context: click.Context,
    url: str | None,
    store: str | None,
    token: str | None,
    timeout: float,
    service: str | None,
    namespace: str,
    work: Callable[[Source, tuple[str, ...]], int],
) -> int:
    """`work` on the source the options name (closed after), with the secrets to mask; its
    exit status, or UNKNOWN's (3) for any failure, never a traceback's 1 (DEGRADED)."""
    secrets = _secrets(url, token)
    try:
        source = _open_source(context, url, store, token, timeout, service, namespace)
        try:
            return work(source, secrets)
        finally:
            source.close()
    except Unknown as exc:
        return _unknown(exc, secrets)
    except Exception as exc:  # noqa: BLE001 - a traceback's exit 1 would read as DEGRADED
        return _unknown(_unexpected(exc), secrets)


@cli.command()
@_source_options
@click.option("--json", "as_json", is_flag=True, help="Print the health document as JSON.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Draw the table again every SECONDS (default 2) until Ctrl-C, then exit 0.",
)
@click.pass_context
def status(
    context: click.Context,
    url: str | None,
    store: str | None,
    token: str | None,
    timeout: float,
    service: str | None,
    namespace: str,
    as_json: bool,
    watch: float | None,
) -> int:
    """The health of every job: a summary line, then a table.

    \b
    The first line is one line for a Nagios/Icinga check, e.g.
      JOBS DEGRADED - 12 jobs: 10 ok, 1 failed, 1 missed | jobs=12 ok=10 ...
    Exit status: 0 healthy, 1 degraded, 2 unhealthy, 3 unknown.
    """
    if watch is not None and as_json:
        raise click.UsageError("--watch draws the table: leave out --json")

    def show(source: Source, secrets: tuple[str, ...]) -> int:
        if watch is not None:
            return _watch(source, watch, secrets)
        document = source.health()
        if as_json:
            click.echo(_json(document))
        else:
            console = _console()
            console.print(status_renderable(document, fill=console.is_terminal), soft_wrap=True)
        return exit_code(document["status"])

    return _on_source(context, url, store, token, timeout, service, namespace, show)


def _watch(source: Source, seconds: float, secrets: tuple[str, ...]) -> int:
    """Draw the status every `seconds` until Ctrl-C (exit 0): in place on a terminal (rich
    Live), else one frame after another. A source that fails shows UNKNOWN until it
    answers again."""
    console = _console()

    def frame() -> RenderableType:
        try:
            return status_renderable(source.health(), fill=console.is_terminal)
        except Unknown as exc:
            reason: object = exc
        except Exception as exc:  # noqa: BLE001 - the next frame may do better
            reason = _unexpected(exc)
        return Text(f"UNKNOWN: {_reason(reason, secrets)}", style="bold magenta")

    try:
        if console.is_terminal:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                while True:
                    live.update(frame(), refresh=True)
                    time.sleep(seconds)  # the next frame is due then; Ctrl-C ends it
        else:
            while True:
                console.print(frame(), soft_wrap=True)
                console.print()
                console.file.flush()
                time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    return 0


@cli.command()
@click.argument("name")
@_source_options
@click.option(
    "--limit",
    type=click.IntRange(0, _MAX_LIMIT),
    default=20,
    show_default=True,
    help="How many runs, the last ones first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job's document as JSON.")
@click.pass_context
def history(
    context: click.Context,
    name: str,
    url: str | None,
    store: str | None,
    token: str | None,
    timeout: float,
    service: str | None,
    namespace: str,
    limit: int,
    as_json: bool,
) -> int:
    """One job: its health and its last runs, newest first.

    Exit status: the job's health (0 healthy, 1 degraded, 2 unhealthy), 3 if there is no
    job NAME or the source cannot be read.
    """

    def show(source: Source, secrets: tuple[str, ...]) -> int:
        try:
            document = source.job(name, limit)
        except JobNotFound:
            return _unknown(f"no job named {name!r} at {source.label}", secrets)
        if as_json:
            click.echo(_json(document))
        else:
            _console().print(history_renderable(document), soft_wrap=True)
        return exit_code(document["status"])

    return _on_source(context, url, store, token, timeout, service, namespace, show)


@cli.command(
    "exec",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Put -- before the command, so that its own options are not taken for these.",
)
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--store",
    metavar="URL",
    envvar="JOBPULSE_STORE",
    help="Where the run is written (required). [env: JOBPULSE_STORE]",
)
@click.option(
    "--schedule",
    metavar="SCHEDULE",
    help="When the job runs: '@every 5m', '@hourly', '30 2 * * *' (the crontab line's "
    "fields). A run that does not come by the next time (plus a grace) shows as missed.",
)
@click.option(
    "--timezone",
    metavar="ZONE",
    help="IANA zone of a cron --schedule. [default: the host's, as cron reads crontab]",
)
@click.option(
    "--timeout",
    metavar="DURATION",
    help="Stop the command after DURATION (seconds, or 90s, 15m, 1h30m): SIGTERM to its "
    "process group, SIGKILL after --kill-after; the run fails as a timeout, exit status 124.",
)
@click.option(
    "--kill-after",
    default="5",
    show_default=True,
    metavar="DURATION",
    help="Grace between SIGTERM and SIGKILL at --timeout.",
)
@click.option(
    "--stall-after",
    metavar="DURATION",
    help="Show a run still going after DURATION as stalled (and say so on stderr). "
    "[default: --timeout if given (at least 300 s); else the --schedule's period; else 300 s]",
)
@click.option(
    "--critical",
    is_flag=True,
    help="The job makes the health unhealthy when it fails 3 times "
    "in a row or misses its schedule (else degraded).",
)
@click.option(
    "--namespace",
    default="",
    metavar="NAMESPACE",
    help="The monitor's namespace (metric names, Redis keys).",
)
def exec_(
    name: str,
    command: tuple[str, ...],
    store: str | None,
    schedule: str | None,
    timezone: str | None,
    timeout: str | None,
    kill_after: str,
    stall_after: str | None,
    critical: bool,
    namespace: str,
) -> int:
    """Run COMMAND as a run of job NAME, written to the store.

    \b
    Its output passes through unchanged; its exit status is passed on:
      the command's exit code; 128+N if signal N killed it; 124 at --timeout;
      127 / 126 if it cannot be started (not found / not executable);
      3 if jobpulse's own options are wrong or no store is set (the command does not run).
    A store that cannot be reached does not stop the command: a warning says the run was
    not recorded.
    """
    options = ExecOptions(
        name=name,
        command=command,
        store=store,
        schedule=schedule,
        timezone=timezone,
        timeout=timeout,
        kill_after=kill_after,
        stall_after=stall_after,
        critical=critical,
        namespace=namespace,
    )
    stdout, stderr = standard_streams()
    try:
        return execute(options, stdout=stdout, stderr=stderr)
    except ExecError as exc:
        click.echo(f"jobpulse exec: {exc}; the command was not run", err=True)
        return UNKNOWN_EXIT
