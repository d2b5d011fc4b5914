"""One bad value never takes the health document down: whatever text users give (names where
allowed, metadata keys and values, error messages), the document parses as JSON and its code
follows the health rules; a job whose row cannot be built is served with an error marker."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from jobpulse import InvalidJobError, JobMonitor, _job
from jobpulse._health import evaluate
from jobpulse.testing import FakeClock
from tests.conftest import InternalErrors

# Any text at all: lone surrogates (what os.fsdecode gives for undecodable bytes), NUL and
# other controls, bidi overrides, and the occasional very long string.
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=300) | st.sampled_from(
    ["\udcff\udc80", "\x00", "\u202egnp.exe", "x" * 1_000_000, "\ud800", "\u2028\u2029"]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)


class Broken(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)


def _fail(monitor: JobMonitor, name: str, metadata: dict[str, Any], message: str) -> None:
    with monitor.run(name) as run:
        run.set_metadata(metadata)
        raise Broken(message)


def _document(monitor: JobMonitor) -> tuple[int, dict[str, Any]]:
    status, body = monitor.health_json()
    return status.http_status, json.loads(body)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=ANY_TEXT,
    metadata=st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=6),
    message=ANY_TEXT,
    critical=st.booleans(),
    failures=st.integers(0, 4),
)
def test_any_text_gives_a_json_document_that_follows_the_rules(
    name: str, metadata: dict[str, Any], message: str, critical: bool, failures: int
) -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    monitor = JobMonitor(tracer_provider=provider, clock=FakeClock())
    try:
        try:
            monitor.register(name, critical=critical)
        except InvalidJobError:
            name = "fallback"  # names are validated: an invalid one is refused up front
            monitor.register(name, critical=critical)
        monitor.register("steady")
        with monitor.run("steady") as run:
            run.set_metadata(metadata)
        for _ in range(failures):
            with pytest.raises(Broken):
                _fail(monitor, name, metadata, message)
        code, document = _document(monitor)
        assert set(document["jobs"]) == {name, "steady"}
        assert code == evaluate(monitor.statuses()).http_status
        assert code == (503 if critical and failures >= 3 else 206 if failures else 200)
        assert document["jobs"]["steady"]["status"] == "success"
        json.dumps(monitor.health().to_dict())  # the snapshots are as clean
    finally:
        monitor.shutdown()
        provider.shutdown()


def test_a_job_whose_row_cannot_be_built_is_served_with_a_marker(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch, internal_errors: InternalErrors
) -> None:
    monitor.register("good")
    monitor.register("bad", critical=True)
    for _ in range(3):
        with pytest.raises(ValueError, match="declined"), monitor.run("bad"):
            raise ValueError("declined")
    real = _job.member_of

    def member_of(job: _job.Job, now_ns: int) -> bytes:
        if job.name == "bad":
            raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
        return real(job, now_ns)

    monkeypatch.setattr("jobpulse._job.member_of", member_of)
    code, document = _document(monitor)
    assert code == 503  # the bad job still counts: critical, 3 failures in a row
    assert document["jobs"]["good"]["status"] == "pending"
    assert document["jobs"]["bad"] == {
        "job_name": "bad",
        "status": "failed",
        "critical": True,
        "consecutive_failures": 3,
        "failure_threshold": 3,
        "error": "this job's status could not be shown",
    }
    assert document["summary"]["total_jobs"] == 2
    assert [where for where, _ in internal_errors.take()] == ["health document row"]


def test_a_row_that_cannot_be_built_is_reported_with_no_lock_held(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch, internal_errors: InternalErrors
) -> None:
    """Reporting logs (with a traceback, through the application's handlers): while the
    view's lock is held, every job's start and end would wait for that."""
    monitor.register("good")
    monitor.register("bad")
    real = _job.member_of

    def member_of(job: _job.Job, now_ns: int) -> bytes:
        if job.name == "bad":
            raise RuntimeError("a bug building the member")
        return real(job, now_ns)

    locked: list[bool] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            locked.append(monitor._registry._lock.locked())

    monkeypatch.setattr("jobpulse._job.member_of", member_of)
    spy = Spy(logging.ERROR)
    logging.getLogger("jobpulse").addHandler(spy)
    try:
        code, document = _document(monitor)
    finally:
        logging.getLogger("jobpulse").removeHandler(spy)
    assert code == 200
    assert document["jobs"]["bad"]["error"] == "this job's status could not be shown"
    assert locked == [False]
    assert [where for where, _ in internal_errors.take()] == ["health document row"]
