"""The ``jobpulse`` command (extra ``cli``: ``pip install 'jobpulse[cli]'``).

::

    jobpulse status  [--url URL | --store URL] [--json] [--watch [SECONDS]]
    jobpulse history NAME [--url URL | --store URL] [--limit N] [--json]
    jobpulse exec    NAME [--store URL] [--schedule S] [--timeout T] [--stall-after T]
                     [--critical] -- COMMAND...

``status`` and ``history`` exit as monitoring plugins do (0 healthy, 1 degraded, 2
unhealthy, 3 unknown), so that either works as a Kubernetes exec probe or a Nagios/Icinga
check; ``exec`` runs a command as a monitored run of a job, written to a store, and exits
with the command's status. See `jobpulse._cli._commands` and docs/operators.md.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["MISSING_EXTRA", "main"]

#: What the command says, exiting 3, when click or rich is missing.
MISSING_EXTRA = "jobpulse's command needs: pip install 'jobpulse[cli]'"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script ``jobpulse``: exits with the command's status."""
    try:
        import click  # noqa: F401
        import rich  # noqa: F401
    except ImportError:
        sys.stderr.write(MISSING_EXTRA + "\n")
        sys.exit(3)
    from jobpulse._cli._commands import run

    for stream in (sys.stdout, sys.stderr):
        # A job's name the terminal's encoding (PYTHONIOENCODING=ascii, LANG=C) cannot show
        # is printed escaped, not a traceback.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    sys.exit(run(argv))
