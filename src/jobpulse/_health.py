"""Health policy (the spec's rules, per-job settings instead of a hard-coded list) and the
health document served at ``GET /api/v1/health/jobs``."""

from __future__ import annotations

import dataclasses
import enum
import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from jobpulse._job import HealthRow
from jobpulse._model import JobsSummary, JobStatus, dump_json, rfc3339

__all__ = ["PROCESS_VIEW", "HealthDocument", "HealthReport", "HealthStatus", "evaluate"]

#: `HealthReport.view` without a store.
PROCESS_VIEW: Mapping[str, Any] = MappingProxyType({"scope": "process"})


class HealthStatus(str, enum.Enum):
    """Overall health, with the HTTP status the endpoint answers it with."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]

    def __str__(self) -> str:
        return self.value


_HTTP_STATUS = {HealthStatus.HEALTHY: 200, HealthStatus.DEGRADED: 206, HealthStatus.UNHEALTHY: 503}


def evaluate(statuses: Mapping[str, JobStatus]) -> HealthStatus:
    """The spec's rules, with criticality and the failure threshold set per job.

    - unhealthy: any job stalled; a critical job with at least ``failure_threshold``
      consecutive failures; a critical job that missed its schedule;
    - degraded: any other job whose last run failed, or that missed its schedule;
    - healthy: otherwise (jobs that never ran are healthy).
    """
    return _judge(
        [
            (job.state.value, job.critical, job.consecutive_failures, job.failure_threshold, b"")
            for job in statuses.values()
        ]
    )


def _judge(rows: Iterable[HealthRow]) -> HealthStatus:
    """`evaluate`'s rules over health rows."""
    result = HealthStatus.HEALTHY
    for state, critical, failures, threshold, _ in rows:
        if state == "stalled":
            return HealthStatus.UNHEALTHY
        missed = state == "missed"
        if critical and (missed or failures >= threshold):
            return HealthStatus.UNHEALTHY
        if missed or failures > 0:
            result = HealthStatus.DEGRADED
    return result


@dataclass(frozen=True)
class HealthReport:
    """The health of every job at one moment. `to_dict` is the endpoint's JSON document."""

    status: HealthStatus
    timestamp: datetime
    jobs: Mapping[str, JobStatus]
    summary: JobsSummary
    duration_ms: float
    #: Whose view this is: ``{"scope": "process"}``, or with a store ``{"scope": "fleet",
    #: "store": "ok", "instances": [...]}`` (``"store": "degraded"`` and ``store_error``
    #: when this process's writes fail; ``"scope": "process"``, ``"store": "unavailable"``
    #: and ``store_error`` when the store could not be read: the process's own view).
    view: Mapping[str, Any] = dataclasses.field(default_factory=lambda: PROCESS_VIEW)

    @property
    def http_status(self) -> int:
        """200 healthy, 206 degraded, 503 unhealthy."""
        return self.status.http_status

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "timestamp": rfc3339(self.timestamp),
            **self.view,
            "jobs": {name: job.to_dict() for name, job in self.jobs.items()},
            "summary": self.summary.to_dict(),
            "duration_ms": round(self.duration_ms, 3),
        }

    def to_json(self) -> bytes:
        """`to_dict` as compact UTF-8 JSON, assembled from each job's cached member."""
        jobs = b",".join([job.json_member for job in self.jobs.values()])
        head, tail = _frame(self.status, self.timestamp, self.summary, self.duration_ms, self.view)
        return b"".join((head, jobs, tail))


class HealthDocument:
    """Builds the endpoint's document from `StatusRegistry.health_rows`.

    The ``jobs`` part of the last document, its health and its counts are kept and reused
    while every row is the very object it was (no job changed, none came or went): a
    steady poll then costs one pass over the jobs and no copy of their JSON. Thread-safe:
    the cache is one tuple, replaced whole.
    """

    def __init__(self) -> None:
        self._last: tuple[Sequence[HealthRow], HealthStatus, JobsSummary, bytes] | None = None

    def parts(
        self,
        rows: Sequence[HealthRow],
        now: datetime,
        started: float,
        view: Mapping[str, Any] = PROCESS_VIEW,
    ) -> tuple[HealthStatus, list[bytes]]:
        """The overall health, and the document as parts to send (or join) in order.
        `started` is when reading the view began (``time.perf_counter()``); `view` is the
        document's ``scope`` and what goes with it (see `HealthReport.view`)."""
        last = self._last
        if last is None or len(last[0]) != len(rows) or not all(map(operator.is_, last[0], rows)):
            status = _judge(rows)
            counts = JobsSummary.count([row[0] for row in rows], now)
            last = self._last = (rows, status, counts, b",".join([row[4] for row in rows]))
        _, status, counts, jobs = last
        summary = dataclasses.replace(counts, last_update_time=now)
        elapsed = (time.perf_counter() - started) * 1000.0
        head, tail = _frame(status, now, summary, elapsed, view)
        return status, [head, jobs, tail]


def _frame(
    status: HealthStatus,
    timestamp: datetime,
    summary: JobsSummary,
    duration_ms: float,
    view: Mapping[str, Any],
) -> tuple[bytes, bytes]:
    """What comes before and after the members of ``jobs`` in the document."""
    head = dump_json({"status": status.value, "timestamp": rfc3339(timestamp), **view})
    tail = dump_json({"summary": summary.to_dict(), "duration_ms": round(duration_ms, 3)})
    return head[:-1] + b',"jobs":{', b"}," + tail[1:]
