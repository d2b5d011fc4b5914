"""Health policy (the spec's rules, per-job settings instead of a hard-coded list) and the
health document served at ``GET /api/v1/health/jobs``."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobpulse._model import JobsSummary, JobState, JobStatus, dump_json, rfc3339

__all__ = ["HealthReport", "HealthStatus", "evaluate"]


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
    stalled, missed_state = JobState.STALLED, JobState.MISSED  # enum lookups are slow in a loop
    result = HealthStatus.HEALTHY
    for status in statuses.values():
        state = status.state
        if state is stalled:
            return HealthStatus.UNHEALTHY
        missed = state is missed_state
        failures = status.consecutive_failures
        if status.critical and (missed or failures >= status.failure_threshold):
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

    @property
    def http_status(self) -> int:
        """200 healthy, 206 degraded, 503 unhealthy."""
        return self.status.http_status

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "timestamp": rfc3339(self.timestamp),
            "jobs": {name: job.to_dict() for name, job in self.jobs.items()},
            "summary": self.summary.to_dict(),
            "duration_ms": round(self.duration_ms, 3),
        }

    def to_json(self) -> bytes:
        """`to_dict` as compact UTF-8 JSON, assembled from each job's cached member."""
        head = dump_json({"status": self.status.value, "timestamp": rfc3339(self.timestamp)})
        tail = dump_json(
            {"summary": self.summary.to_dict(), "duration_ms": round(self.duration_ms, 3)}
        )
        parts = [head[:-1], b',"jobs":{']
        for job in self.jobs.values():
            parts += (job.json_member, b",")
        if self.jobs:
            parts.pop()
        parts += (b"},", tail[1:])
        return b"".join(parts)
