"""Real processes of one test, each the leader of a session of its own, their output in files.

A Celery worker's pool children and embedded beat are in its session: a signal to the group
reaches them all, and the group being gone means none of them outlived it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ProcessGroup", "group_is_gone"]

POLL_SECONDS = 0.1


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
        time.sleep(POLL_SECONDS)  # another process's exit: nothing here to wait on


class ProcessGroup:
    """The processes a test started, by name; each one's output in ``<directory>/<name>.log``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, command: Sequence[str], env: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        with (self.directory / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        """The end of every process's output, for a failure's message."""
        return "\n".join(f"--- {name}\n{self.log(name)[-3000:]}" for name in self.processes)

    def kill_group(self, name: str) -> None:
        """``kill -9`` the process and its children (its session)."""
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to every group, each process waited for up to `timeout` seconds, then
        SIGKILL to any group with a process left."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if not group_is_gone(process.pid, timeout=5):
                with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                    os.killpg(process.pid, signal.SIGKILL)
