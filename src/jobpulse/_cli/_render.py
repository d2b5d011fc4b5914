"""What ``jobpulse status`` and ``jobpulse history`` print: a one-line summary first (the
line a Nagios or Icinga check shows), then a table (rich). Everything is built from the
documents the routes serve, whichever the source, so the table and ``--json`` agree.

The summary line::

    JOBS DEGRADED - 12 jobs: 10 ok, 1 failed, 1 missed | jobs=12 ok=10 running=0 ...

``JOBS`` and the document's status in capitals, the number of jobs in each state (those
with none left out; ``ok`` is the state ``success``), and after ``|`` the same counts as
Nagios performance data, every state always there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = [
    "ERROR_CHARS",
    "EXIT_CODES",
    "STATES",
    "clean",
    "exit_code",
    "history_renderable",
    "history_summary",
    "status_renderable",
    "status_summary",
]

#: The exit code of each health status (the monitoring-plugin convention); anything else
#: (the state cannot be told) is 3, UNKNOWN.
EXIT_CODES = {"healthy": 0, "degraded": 1, "unhealthy": 2}
UNKNOWN_EXIT = 3
#: The states of a job, in the order the summary counts them, with the word it uses.
STATES = (
    ("success", "ok"),
    ("running", "running"),
    ("pending", "pending"),
    ("failed", "failed"),
    ("missed", "missed"),
    ("stalled", "stalled"),
)
_STATE_STYLES = {
    "success": "green",
    "running": "cyan",
    "pending": "dim",
    "failed": "red",
    "missed": "yellow",
    "stalled": "bold red",
}
#: The longest last error a table shows when it is not as wide as a terminal.
ERROR_CHARS = 100
_HEALTH_STYLES = {"healthy": "bold green", "degraded": "bold yellow", "unhealthy": "bold red"}
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(value: object) -> str:
    """`value` as text with every C0 and C1 control character (newline and tab too) written
    as an escape (``\\x1b``): a document comes from a server, and a job name or an error
    must not move the cursor, retitle the terminal or fake a line."""
    text = value if isinstance(value, str) else str(value)
    if _CONTROLS.search(text) is None:
        return text
    return _CONTROLS.sub(lambda match: f"\\x{ord(match[0]):02x}", text)


def exit_code(status: object) -> int:
    return EXIT_CODES.get(status, UNKNOWN_EXIT) if isinstance(status, str) else UNKNOWN_EXIT


def status_summary(document: Mapping[str, Any]) -> Text:
    """The summary line of a health document."""
    jobs = document["jobs"]
    counts = dict.fromkeys((state for state, _ in STATES), 0)
    for job in jobs.values():
        state = job.get("status")
        if state in counts:
            counts[state] += 1
    status = clean(document["status"])
    line = Text(f"JOBS {status.upper()}", style=_HEALTH_STYLES.get(status, ""))
    words = [f"{counts[state]} {word}" for state, word in STATES if counts[state]]
    line.append(f" - {len(jobs)} job{'' if len(jobs) == 1 else 's'}")
    if words:
        line.append(": " + ", ".join(words))
    if document.get("store") == "unavailable":
        line.append(" (store unavailable: one process's view)")
    elif document.get("store") == "degraded":
        line.append(" (the store does not take the server's writes)")
    performance = " ".join(
        [f"jobs={len(jobs)}", *(f"{word}={counts[state]}" for state, word in STATES)]
    )
    line.append(f" | {performance}")
    return line


def status_renderable(document: Mapping[str, Any], *, fill: bool = False) -> RenderableType:
    """The summary line, then a table of every job (if there is one). With `fill` (on a
    terminal), the table is as wide as the console and the last error takes the room the
    other columns leave; else the last error is cut at `ERROR_CHARS` characters."""
    summary = status_summary(document)
    jobs = document["jobs"]
    if not jobs:
        return summary
    now = _time(document.get("timestamp"))
    table = Table(box=None, pad_edge=False, header_style="bold", expand=fill)
    table.add_column("JOB", overflow="fold", min_width=8)
    table.add_column("STATUS", min_width=7)
    table.add_column("LAST RUN", no_wrap=True)
    table.add_column("DURATION", justify="right", no_wrap=True)
    table.add_column("NEXT RUN", no_wrap=True)
    table.add_column("OK", justify="right", no_wrap=True)
    table.add_column("FAILED", justify="right", no_wrap=True)
    table.add_column("IN A ROW", justify="right", no_wrap=True)
    table.add_column(
        "LAST ERROR",
        overflow="ellipsis",
        no_wrap=True,
        ratio=1 if fill else None,
        max_width=None if fill else ERROR_CHARS,
    )
    for name, job in jobs.items():
        failures = job.get("consecutive_failures") or 0
        table.add_row(
            Text(clean(name)),
            _state(job),
            Text(_relative(_time(job.get("last_run_time")), now)),
            Text(_duration(job.get("last_duration_ms"))),
            Text(_relative(_time(job.get("next_run_time")), now)),
            Text(clean(job.get("success_count") or 0)),
            Text(clean(job.get("failure_count") or 0)),
            Text(clean(failures), style="red" if failures else ""),
            Text(_error(job), style="red"),
        )
    return Group(summary, table)


def history_summary(document: Mapping[str, Any]) -> Text:
    """The summary line of one job's document: its health, state, failures in a row and
    last error category."""
    job = document["job"]
    status = clean(document["status"])
    line = Text(f"JOB {status.upper()}", style=_HEALTH_STYLES.get(status, ""))
    line.append(f" - {clean(job.get('job_name'))}: {clean(job.get('status'))}")
    failures = clean(job.get("consecutive_failures") or 0)
    if failures != "0":
        line.append(f", {failures} failed in a row")
        if job.get("last_error_category"):
            line.append(f" ({clean(job['last_error_category'])})")
    runs = document["history"]
    line.append(f" | runs={len(runs)} failures_in_a_row={failures}")
    return line


def history_renderable(document: Mapping[str, Any]) -> RenderableType:
    """The summary line, the job's last error (if its last run failed), then its runs,
    newest first."""
    parts: list[RenderableType] = [history_summary(document)]
    job = document["job"]
    error = job.get("last_error")
    if job.get("consecutive_failures") and error:
        lines = "\n".join(clean(line) for line in str(error).splitlines())
        parts.append(Text(f"last error: {lines}", style="red"))
    runs = document["history"]
    if runs:
        now = _time(document.get("timestamp"))
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("STARTED", no_wrap=True)
        table.add_column("", no_wrap=True)
        table.add_column("DURATION", justify="right", no_wrap=True)
        table.add_column("OUTCOME", no_wrap=True)
        table.add_column("CATEGORY", no_wrap=True)
        for run in runs:
            started = _time(run.get("started_at"))
            outcome = clean(run.get("outcome"))
            table.add_row(
                Text(clean(run.get("started_at") or "")),
                Text(_relative(started, now), style="dim"),
                Text(_duration(run.get("duration_ms"))),
                Text(outcome, style=_STATE_STYLES.get(outcome, "")),
                Text(clean(run.get("error_category") or "")),
            )
        parts.append(table)
    return Group(*parts)


def _state(job: Mapping[str, Any]) -> Text:
    state = clean(job.get("status"))
    text = Text(state, style=_STATE_STYLES.get(state, ""))
    if job.get("critical"):
        text.append(" (critical)", style="dim")
    return text


def _error(job: Mapping[str, Any]) -> str:
    """The last error's category and its last line (an exec's error ends with its output)."""
    error = job.get("last_error")
    if not job.get("consecutive_failures") or not isinstance(error, str):
        return ""
    lines = [line for line in error.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    category = job.get("last_error_category")
    return clean(f"{category}: {last}" if category else last)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    # A time without its offset (not what jobpulse writes) is read as UTC, as jobpulse's are.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _relative(moment: datetime | None, now: datetime | None) -> str:
    """``12s ago``, ``in 3m``, ``2h ago``, ``4d ago``: from the document's own time, so that
    clocks that differ between the server and here change nothing."""
    if moment is None:
        return "-"
    if now is None:
        return moment.isoformat()
    seconds = (moment - now).total_seconds()
    amount = _amount(abs(seconds))
    if amount == "0s":
        return "now"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def _amount(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def _duration(milliseconds: object) -> str:
    if (
        not isinstance(milliseconds, (int, float))
        or isinstance(milliseconds, bool)
        or not math.isfinite(milliseconds)  # JSON's NaN and Infinity, as Python reads them
    ):
        return "-"
    if milliseconds < 1000:
        return f"{milliseconds:.0f}ms" if milliseconds >= 1 else f"{milliseconds:.2f}ms"
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
