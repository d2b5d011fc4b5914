"""Running a command the way ``jobpulse exec`` does, standard library only.

The command runs in a session (and process group) of its own, so that a timeout reaches
whatever it started (a shell's children, a ``sleep`` in a script). Its standard output and
error are pipes that a thread copies to ours as the bytes come, unchanged, keeping their last
bytes for the error text of a failed run; its standard input is ours. SIGINT, SIGTERM,
SIGHUP and SIGQUIT sent to this process are sent on to the command's process group (as
``dumb-init`` does), except those this process was started ignoring (``nohup``).

When the command ends, what it left running may still hold its output pipes: they are read
for at most `DRAIN_SECONDS` more, then closed (a process still writing to them gets SIGPIPE,
as it would once ``cron`` stopped reading). The same bound holds when our own output is
blocked (a reader that stopped reading): the copy waits for room to write beside its stop
signal, so ``exec`` ends that long after its command, and what it could not pass on is
dropped.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, BinaryIO

__all__ = [
    "DRAIN_SECONDS",
    "FORWARDED_SIGNALS",
    "NOT_EXECUTABLE_EXIT_STATUS",
    "NOT_FOUND_EXIT_STATUS",
    "STOP_SECONDS",
    "TAIL_BUFFER_BYTES",
    "TAIL_LINES",
    "TIMEOUT_EXIT_STATUS",
    "Finished",
    "SignalForwarder",
    "kill_group",
    "run_command",
    "wait_interruptibly",
]

#: The signals sent on to the command.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: How many of the last lines of the command's output a failed run keeps.
TAIL_LINES = 20
#: How many of the last bytes of its output are kept to find those lines in.
TAIL_BUFFER_BYTES = 8192
#: How long the output pipes may stay open once the command has ended.
DRAIN_SECONDS = 1.0
#: How long the copy of the output may take to stop once told to.
STOP_SECONDS = 1.0
#: What ``jobpulse exec`` exits with when it stopped the command at its timeout (as GNU
#: ``timeout`` does).
TIMEOUT_EXIT_STATUS = 124
#: A command that could not be started: not found, or not executable (as shells say).
NOT_FOUND_EXIT_STATUS = 127
NOT_EXECUTABLE_EXIT_STATUS = 126
_READ_BYTES = 65536


@dataclass(frozen=True)
class Finished:
    """How the command ended.

    ``exit_status`` is what ``jobpulse exec`` exits with: the command's exit code, 128 + N
    if signal N killed it, `TIMEOUT_EXIT_STATUS` if it was stopped at its timeout, 127 or
    126 if it could not be started (not found, not executable). ``tail`` is the last lines
    of its output, both streams as they came, decoded as UTF-8 (not redacted).
    """

    exit_status: int
    returncode: int | None = None
    signal: int | None = None
    timed_out: bool = False
    not_started: str | None = None
    tail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.exit_status == 0 and not self.timed_out


class SignalForwarder:
    """Sends the `FORWARDED_SIGNALS` this process receives on to a process group, from
    `install` (on the main thread; elsewhere it does nothing) until `restore`. Signals that
    come before the group is known are sent once it is."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._pgid: int | None = None
        self._pending: list[int] = []
        #: Every signal handled, in order.
        self.received: list[int] = []

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in FORWARDED_SIGNALS:
            current = signal.getsignal(number)
            if current == signal.SIG_IGN:  # started under nohup, say: the command is too
                continue
            self._previous[number] = current
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received.append(number)
        if self._pgid is None:
            self._pending.append(number)
        else:
            kill_group(self._pgid, number)

    def forward_to(self, pgid: int) -> None:
        self._pgid = pgid
        pending, self._pending = self._pending, []
        for number in pending:
            kill_group(pgid, number)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, _handler(handler))
        self._previous = {}


def kill_group(pgid: int, number: int) -> None:
    """Send signal `number` to process group `pgid`; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, number)


class _Pump:
    """Copies the command's output pipes to their destinations as the bytes come, and keeps
    the last `TAIL_BUFFER_BYTES` of both, on a thread of its own that `finish` ends. Owns the
    pipes: closes each at its end of file, when its destination refuses more (a closed pipe:
    the command's next write then fails as it would have), or at `finish`."""

    def __init__(self, pipes: Sequence[tuple[IO[bytes], BinaryIO]]) -> None:
        self._pipes = pipes
        self._tail = bytearray()
        self._cut = False
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._loop, name="jobpulse-exec-output", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            for pipe, destination in self._pipes:
                selector.register(pipe, selectors.EVENT_READ, destination)
            selector.register(self._wake_read, selectors.EVENT_READ, None)
            try:
                while len(selector.get_map()) > 1:
                    for key, _ in selector.select():
                        if key.data is None:  # stop
                            return
                        if not self._copy(selector, key.fileobj, key.data):  # type: ignore[arg-type]
                            return
            finally:
                for pipe, _ in self._pipes:
                    pipe.close()
                os.close(self._wake_read)

    def _copy(
        self, selector: selectors.BaseSelector, pipe: IO[bytes], destination: BinaryIO
    ) -> bool:
        """Copy what `pipe` has to `destination`; False once told to stop."""
        data = os.read(pipe.fileno(), _READ_BYTES)
        if not data:
            selector.unregister(pipe)
            pipe.close()
            return True
        self._keep(data)
        try:
            return self._write(destination, data)
        except (OSError, ValueError):  # our own output is closed: so is the command's
            selector.unregister(pipe)
            pipe.close()
            return True

    def _write(self, destination: BinaryIO, data: bytes) -> bool:
        """Write `data` to `destination`: to its file descriptor, if it has one, a pipe's
        atomic size at a time once there is room (so that `finish` can stop a copy that a
        reader of ours holds up, and no lock of a Python stream is left held); else (a
        stream in memory) through the stream. False once told to stop (the rest is dropped)."""
        try:
            fd = destination.fileno()
        except (AttributeError, OSError, ValueError):
            destination.write(data)
            destination.flush()
            return True
        view = memoryview(data)
        while view:
            if not select.select([self._wake_read], [fd], [])[1]:
                return False
            view = view[os.write(fd, view[: select.PIPE_BUF]) :]
        return True

    def _keep(self, data: bytes) -> None:
        tail = self._tail
        tail += data
        excess = len(tail) - TAIL_BUFFER_BYTES
        if excess > 0:
            del tail[:excess]
            self._cut = True

    def finish(self, seconds: float) -> None:
        """Wait at most `seconds` for the end of both pipes, then stop reading them; returns
        within `seconds` plus `STOP_SECONDS` whatever our own output does. (A thread still
        in a write past that, to a terminal stopped with Ctrl-S say, is left to the end of
        the process: a daemon that holds no lock.)"""
        self._thread.join(seconds)
        if self._thread.is_alive():
            os.write(self._wake_write, b"x")
            self._thread.join(STOP_SECONDS)
        os.close(self._wake_write)

    def tail(self) -> str:
        """The last `TAIL_LINES` lines kept (call after `finish`)."""
        data = bytes(self._tail)
        if self._cut:
            # The first line kept is cut at its start: left out, since a secret cut in two
            # is no longer recognized by redaction.
            newline = data.find(b"\n")
            if newline < 0:
                return f"[the last line of output is longer than {TAIL_BUFFER_BYTES} bytes]"
            data = data[newline + 1 :]
        lines = []
        for line in data.decode("utf-8", "replace").split("\n"):
            line = line.rstrip("\r")
            # What a terminal shows of a line redrawn with carriage returns (progress bars).
            lines.append(line.rpartition("\r")[2])
        while lines and not lines[-1].strip():
            lines.pop()
        return "\n".join(lines[-TAIL_LINES:])


class _Deadline:
    """At `timeout` seconds unless the command has exited by then: SIGTERM to its process
    group, then SIGKILL to the group once the command has exited or `kill_after` seconds
    passed, whichever comes first (what it left behind is killed either way)."""

    def __init__(self, pgid: int, timeout: float, kill_after: float) -> None:
        self.exited = threading.Event()
        self.fired = False
        self._pgid = pgid
        self._timeout = timeout
        self._kill_after = kill_after
        self._thread = threading.Thread(target=self._run, name="jobpulse-exec-timeout", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.exited.wait(self._timeout):
            return
        self.fired = True
        kill_group(self._pgid, signal.SIGTERM)
        self.exited.wait(self._kill_after)
        kill_group(self._pgid, signal.SIGKILL)

    def stop(self) -> None:
        self.exited.set()
        self._thread.join()


def wait_interruptibly(process: subprocess.Popen[bytes]) -> int:
    """`process`'s exit status, waited for so that the Python handlers of the signals this
    process receives run at once: the kernel may deliver a signal to any thread, and a main
    thread blocked in ``waitpid`` would run them only once the command has ended. Here it
    waits on the wakeup file of `signal.set_wakeup_fd` (written by any signal, SIGCHLD
    included, wherever delivered). Off the main thread: a plain `Popen.wait`."""
    if threading.current_thread() is not threading.main_thread():
        return process.wait()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    previous_fd = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    previous_child = signal.signal(signal.SIGCHLD, _ignore)
    try:
        while True:
            returncode = process.poll()
            if returncode is not None:
                return returncode
            select.select([wake_read], [], [])
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_read, 512):
                    pass
    finally:
        signal.signal(signal.SIGCHLD, _handler(previous_child))
        signal.set_wakeup_fd(previous_fd)
        os.close(wake_read)
        os.close(wake_write)


def _handler(previous: object) -> signal.Handlers | Callable[[int, FrameType | None], object]:
    """A handler `signal.getsignal` returned, as `signal.signal` takes it back (None, for
    one installed outside Python, becomes the default)."""
    if previous is None:
        return signal.SIG_DFL
    return previous  # type: ignore[return-value]


def _ignore(number: int, frame: FrameType | None) -> None:
    """A handler that makes SIGCHLD write the wakeup file (SIG_DFL would not)."""


def run_command(
    argv: Sequence[str],
    *,
    timeout: float | None,
    kill_after: float,
    stdout: BinaryIO,
    stderr: BinaryIO,
    forwarder: SignalForwarder,
) -> Finished:
    """Run `argv` until it ends (see the module's docstring), its output copied to `stdout`
    and `stderr`; stopped at `timeout` seconds if given (`_Deadline`). `forwarder` must be
    installed already: it is pointed at the command's process group."""
    try:
        process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        status = (
            NOT_FOUND_EXIT_STATUS
            if isinstance(exc, FileNotFoundError)
            else NOT_EXECUTABLE_EXIT_STATUS
        )
        reason = f"cannot run {argv[0]!r}: {exc.strerror or exc}"
        return Finished(status, not_started=reason)
    assert process.stdout is not None
    assert process.stderr is not None
    forwarder.forward_to(process.pid)  # the leader of its own session: its pgid is its pid
    pump = _Pump([(process.stdout, stdout), (process.stderr, stderr)])
    deadline = None if timeout is None else _Deadline(process.pid, timeout, kill_after)
    returncode = wait_interruptibly(process)
    timed_out = False
    if deadline is not None:
        deadline.stop()  # kills what is left of the group if it fired
        timed_out = deadline.fired
    pump.finish(DRAIN_SECONDS)
    killed_by = -returncode if returncode < 0 else None
    if timed_out:
        status = TIMEOUT_EXIT_STATUS
    elif killed_by is not None:
        status = 128 + killed_by
    else:
        status = returncode
    return Finished(
        status,
        returncode=None if killed_by is not None else returncode,
        signal=killed_by,
        timed_out=timed_out,
        tail=pump.tail(),
    )
