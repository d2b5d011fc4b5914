"""The one module that integrations and the store import from the core.

Everything an integration (``jobpulse.integrations.*``) or the store (``jobpulse.store``)
shares with the core and that is not public API is named here: span attribute keys, error
categories, limits, the span-adopter hook, and the core's helpers they build on. They import
from the core only ``jobpulse`` (the public API) and this module, never a private name of
another module; ``tests/test_layout.py`` checks that.

The constants are defined here, and the core modules import them from here, so each has one
definition. The functions and classes are defined in their own modules and named here.

Import order matters: the constants come first, before this module imports the modules that
import them (``jobpulse/__init__.py`` imports this module first of all). The modules the store
may need while the monitor itself is being imported are named before ``_monitor``.
"""

from __future__ import annotations

# -- span attribute keys (also the attributes of metric points) -------------------------------

#: The job a span is a run of: what makes a span a job run.
JOB_NAME = "job.name"
#: A metric point's outcome ("success" or "failed").
STATUS = "status"
#: Why a due run was skipped, on the skipped counter.
REASON = "reason"
#: OpenTelemetry semantic conventions for runs of a scheduled job.
FAAS_TRIGGER = "faas.trigger"
FAAS_CRON = "faas.cron"
#: OpenTelemetry semantic convention: the function a run calls.
CODE_FUNCTION = "code.function.name"
ERROR_TYPE = "error.type"
ERROR_CATEGORY = "job.error.category"
JOB_TIMED_OUT = "job.timed_out"
#: A run that another process of this host ran and could not end (a prefork child killed by
#: a time limit, or lost): that process's pid. With a store, the run that process left open
#: is this one, not a second run lost with its process.
JOB_RAN_IN_PID = "job.ran_in.pid"
#: The run's metadata as JSON (see `encode_metadata`).
JOB_METADATA = "job.metadata"
#: Span event added to a run when it passes its job's ``stall_after``.
STALLED_EVENT = "job.stalled"
#: Span attribute: a job run for the status view only, never handed to exporters.
JOB_RECORD_ONLY = "job.record_only"
#: Attribute of a function decorated with `JobMonitor.job`: its job name.
JOB_NAME_ATTRIBUTE = "_jobpulse_job"

# -- error categories -----------------------------------------------------------------------

TIMEOUT = "timeout"
NETWORK = "network"
DATABASE = "database"
EXTERNAL_API = "external_api"
PANIC = "panic"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
UNKNOWN = "unknown"
#: Every category `classify_exception` can return.
CATEGORIES = (TIMEOUT, NETWORK, DATABASE, EXTERNAL_API, PANIC, CANCELLED, INTERRUPTED, UNKNOWN)
#: The category of a run whose span was dropped without ending, and its error text.
LOST = "lost"
LOST_ERROR = "the run's span was dropped without being ended"

# -- limits ---------------------------------------------------------------------------------

#: The longest job name (and other names) accepted.
MAX_NAME_CHARS = 200

# -- the core's helpers (defined in their own modules) -----------------------------------------
# Below the constants on purpose: these modules import the constants above from here. The
# first block (the view, a job's state and health rows, schedules, history: what a fleet view
# builds on) does not import the monitor, so it is bound before the monitor is imported.

from jobpulse._clock import Clock
from jobpulse._errors import (
    classify_exception,
    classify_names,
    describe_exception,
    qualified_type_name,
    safe_error_text,
)
from jobpulse._exceptions import StoreError, StoreVersionError
from jobpulse._fork import after_fork_in_child
from jobpulse._guard import Guard
from jobpulse._history import WINDOW_NS, HistoryStats, RunHistory
from jobpulse._job import (
    HealthRow,
    Job,
    LocalJob,
    PendingRows,
    collect_rows,
    finish_rows,
    run_fields,
    run_records,
)
from jobpulse._metadata import encode as encode_metadata
from jobpulse._model import JobState, JobStatus, RunRecord, from_ns, rfc3339
from jobpulse._redaction import redact
from jobpulse._registry import StatusRegistry
from jobpulse._schedule import MissedSlots, Schedule, missed_slots, parse_schedule
from jobpulse._validation import to_seconds, validate_name
from jobpulse._watchdog import Watchdog

# isort: split
from jobpulse._monitor import NESTED, RunToken, record_failure
from jobpulse._processor import span_attribute
from jobpulse._sampling import SpanAdopter, add_span_adopter, remove_span_adopter
from jobpulse._setup import setup_monitor

__all__ = [
    "CANCELLED",
    "CATEGORIES",
    "CODE_FUNCTION",
    "DATABASE",
    "ERROR_CATEGORY",
    "ERROR_TYPE",
    "EXTERNAL_API",
    "FAAS_CRON",
    "FAAS_TRIGGER",
    "INTERRUPTED",
    "JOB_METADATA",
    "JOB_NAME",
    "JOB_NAME_ATTRIBUTE",
    "JOB_RAN_IN_PID",
    "JOB_RECORD_ONLY",
    "JOB_TIMED_OUT",
    "LOST",
    "LOST_ERROR",
    "MAX_NAME_CHARS",
    "NESTED",
    "NETWORK",
    "PANIC",
    "REASON",
    "STALLED_EVENT",
    "STATUS",
    "TIMEOUT",
    "UNKNOWN",
    "WINDOW_NS",
    "Clock",
    "Guard",
    "HealthRow",
    "HistoryStats",
    "Job",
    "JobState",
    "JobStatus",
    "LocalJob",
    "MissedSlots",
    "PendingRows",
    "RunHistory",
    "RunRecord",
    "RunToken",
    "Schedule",
    "SpanAdopter",
    "StatusRegistry",
    "StoreError",
    "StoreVersionError",
    "Watchdog",
    "add_span_adopter",
    "after_fork_in_child",
    "classify_exception",
    "classify_names",
    "collect_rows",
    "describe_exception",
    "encode_metadata",
    "finish_rows",
    "from_ns",
    "missed_slots",
    "parse_schedule",
    "qualified_type_name",
    "record_failure",
    "redact",
    "remove_span_adopter",
    "rfc3339",
    "run_fields",
    "run_records",
    "safe_error_text",
    "setup_monitor",
    "span_attribute",
    "to_seconds",
    "validate_name",
]
