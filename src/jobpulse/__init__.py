"""jobpulse: monitor background jobs with OpenTelemetry.

Every run of a job is a span; a span processor keeps a status view of every job (pending,
running, success, failed, stalled, missed), a watchdog flags runs that hang and schedules
that stop firing, and `JobMonitor.health` turns the view into the health document. See
README.md and docs/.
"""

# First: the core modules import their shared constants from it (see its docstring).
from jobpulse import _shared  # noqa: F401
from jobpulse._exceptions import (
    InvalidJobError,
    JobLimitError,
    JobpulseError,
    JobSkippedError,
    JobTimeoutError,
    StoreError,
    StoreVersionError,
)
from jobpulse._health import HealthReport, HealthStatus
from jobpulse._model import JobsSummary, JobState, JobStatus, RunRecord
from jobpulse._monitor import JobMonitor, JobRun, set_metadata
from jobpulse._processor import JobStatusProcessor
from jobpulse._redaction import RedactingFilter, add_redaction_pattern, redact
from jobpulse._sampling import JobAwareSampler
from jobpulse._setup import setup
from jobpulse._version import __version__

__all__ = [
    "HealthReport",
    "HealthStatus",
    "InvalidJobError",
    "JobAwareSampler",
    "JobLimitError",
    "JobMonitor",
    "JobRun",
    "JobSkippedError",
    "JobState",
    "JobStatus",
    "JobStatusProcessor",
    "JobTimeoutError",
    "JobpulseError",
    "JobsSummary",
    "RedactingFilter",
    "RunRecord",
    "StoreError",
    "StoreVersionError",
    "__version__",
    "add_redaction_pattern",
    "redact",
    "set_metadata",
    "setup",
]
