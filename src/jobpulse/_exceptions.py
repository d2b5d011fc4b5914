"""The exceptions jobpulse raises.

Every one derives from `JobpulseError`, and also from the built-in exception a caller would
naturally catch for the same mistake::

    JobpulseError
    ├── InvalidJobError     (also ValueError)    a bad job name, setting, namespace or pending count
    ├── JobLimitError       (also RuntimeError)  registering a job past the monitor's `max_jobs`
    ├── JobSkippedError     (also RuntimeError)  a call of a job refused (its hung run still runs)
    ├── JobTimeoutError     (also TimeoutError)  a run passed its job's `timeout`
    └── StoreError          (also OSError)       a store that cannot be opened: a bad URL, an
        └── StoreVersionError                    unwritable path, a corrupted file; written by a
                                                 newer schema version (StoreVersionError)

A job's own exceptions are never wrapped: they are recorded and re-raised unchanged.

Each class says it belongs to ``jobpulse`` (its ``__module__``), where it is imported from, so
that tracebacks and logs print ``jobpulse.InvalidJobError``, not this private module's name;
pickle finds the classes there too.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "InvalidJobError",
    "JobLimitError",
    "JobSkippedError",
    "JobTimeoutError",
    "JobpulseError",
    "StoreError",
    "StoreVersionError",
]


class JobpulseError(Exception):
    """Base class of every exception raised by jobpulse itself."""


class InvalidJobError(JobpulseError, ValueError):
    """A job name, job setting, namespace or pending count broke one of the rules."""


class JobLimitError(JobpulseError, RuntimeError):
    """The monitor already tracks `max_jobs` jobs; the new one was not registered."""


class JobTimeoutError(JobpulseError, TimeoutError):
    """A run did not finish within its job's `timeout`.

    Raised to the caller at the deadline. An async job is cancelled; a sync job's thread
    cannot be stopped and is abandoned (see `JobMonitor.job`).
    """

    def __init__(self, job_name: str, timeout_seconds: float) -> None:
        super().__init__(f"job {job_name!r} timed out after {timeout_seconds:g}s")
        self.job_name = job_name
        self.timeout_seconds = timeout_seconds

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from `args` (the message alone), which this __init__ refuses:
        # without this, a pickled timeout (a process pool's, a result backend's) fails to load.
        return type(self), (self.job_name, self.timeout_seconds), self.__dict__


class JobSkippedError(JobpulseError, RuntimeError):
    """A call of a job was refused and counted as skipped (``skipped_count``, the
    ``background_job.skipped_runs`` counter with label ``reason``).

    Raised by a sync job with a ``timeout`` while its run abandoned at an earlier timeout
    is still running in its thread: Python cannot stop a thread, so each job leaves at
    most one behind.
    """

    def __init__(self, job_name: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.job_name = job_name
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.job_name, self.reason, str(self)), self.__dict__


class StoreError(JobpulseError, OSError):
    """A store could not be opened or used. The message names the store's URL or path,
    never its password."""


class StoreVersionError(StoreError):
    """The store was written by a newer version of jobpulse (a schema this one cannot read)."""


for _public in (
    JobpulseError,
    InvalidJobError,
    JobLimitError,
    JobSkippedError,
    JobTimeoutError,
    StoreError,
    StoreVersionError,
):
    _public.__module__ = "jobpulse"
del _public
