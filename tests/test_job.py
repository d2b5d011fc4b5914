"""A job's state and its health rows, as a second view (the store's fleet view) uses them:
its own `Job` objects by name, fields changed and the version bumped, rows built by one call."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from jobpulse import JobState
from jobpulse._shared import Job, health_rows
from tests.conftest import InternalErrors

T0 = 1_767_225_600 * 1_000_000_000  # 2026-01-01 00:00 UTC


def _view(*names: str) -> dict[str, Job]:
    return {name: Job(name, T0, 60.0) for name in names}


def _member(row_member: bytes) -> dict[str, Any]:
    return cast("dict[str, Any]", json.loads(b"{" + row_member + b"}"))


def test_rows_follow_the_jobs_order_and_are_cached_per_version() -> None:
    view = _view("b", "a")
    first = health_rows([view[name] for name in sorted(view)], T0)
    assert [list(_member(row.member)) for row in first] == [["a"], ["b"]]
    assert [row.state for row in first] == [JobState.PENDING, JobState.PENDING]
    again = health_rows([view["a"], view["b"]], T0)
    assert again[0] is first[0]
    assert again[1] is first[1]

    job = view["b"]
    job.failure_count = job.consecutive_failures = 2
    job.last_outcome = JobState.FAILED
    job.critical = True
    job.version += 1
    changed = health_rows([view["a"], view["b"]], T0)
    assert changed[0] is first[0]  # unchanged job: its cached row
    assert changed[1] is not first[1]
    assert changed[1][:4] == (JobState.FAILED, True, 2, 3)
    document = _member(changed[1].member)
    assert document["b"]["status"] == "failed"
    assert document["b"]["failure_count"] == 2


def test_a_job_whose_row_cannot_be_built_gets_the_unavailable_row(
    monkeypatch: pytest.MonkeyPatch, internal_errors: InternalErrors
) -> None:
    view = _view("good", "bad")
    real = Job.to_record

    def to_record(job: Job, now_ns: int) -> object:
        if job.name == "bad":
            raise RuntimeError("a bug building the record")
        return real(job, now_ns)

    monkeypatch.setattr(Job, "to_record", to_record)
    bad, good = health_rows([view["bad"], view["good"]], T0)
    assert _member(bad.member) == {
        "bad": {
            "job_name": "bad",
            "status": "pending",
            "critical": False,
            "consecutive_failures": 0,
            "failure_threshold": 3,
            "error": "this job's status could not be shown",
        }
    }
    assert _member(good.member)["good"]["status"] == "pending"
    assert [where for where, _ in internal_errors.take()] == ["health document row"]
