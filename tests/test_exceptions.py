"""The public exceptions: where they say they come from, and that they survive pickling."""

from __future__ import annotations

import pickle
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import jobpulse
from jobpulse import (
    InvalidJobError,
    JobLimitError,
    JobMonitor,
    JobpulseError,
    JobSkippedError,
    JobTimeoutError,
)

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = [JobpulseError, InvalidJobError, JobLimitError, JobSkippedError, JobTimeoutError]


@pytest.mark.parametrize("cls", PUBLIC)
def test_each_exception_belongs_to_the_public_module(cls: type[JobpulseError]) -> None:
    assert cls.__module__ == "jobpulse"
    assert getattr(jobpulse, cls.__name__) is cls


def test_a_traceback_names_the_public_module(monitor: JobMonitor) -> None:
    with pytest.raises(InvalidJobError) as caught:
        monitor.register("")
    text = "".join(traceback.format_exception(caught.value))
    assert text.endswith("jobpulse.InvalidJobError: job name must not be empty\n")
    assert "jobpulse._exceptions" not in text


def test_an_uncaught_error_prints_the_public_name() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import jobpulse; jobpulse.JobMonitor().register('x' * 201)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    last_line = result.stderr.splitlines()[-1]
    assert last_line.startswith("jobpulse.InvalidJobError: job name must be at most 200 characters")


@pytest.mark.parametrize(
    "error",
    [
        JobpulseError("base"),
        InvalidJobError("job name must not be empty"),
        JobLimitError("the monitor already tracks 1000 jobs"),
        JobTimeoutError("btc_transaction_indexing", 0.5),
        JobSkippedError("index", "abandoned_thread", "job 'index' was not started"),
    ],
)
def test_pickle_round_trip(error: JobpulseError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert copy.__dict__ == error.__dict__


def test_a_pickled_timeout_keeps_its_fields() -> None:
    copy = pickle.loads(pickle.dumps(JobTimeoutError("nightly", 2.5)))
    assert (copy.job_name, copy.timeout_seconds) == ("nightly", 2.5)
    assert str(copy) == "job 'nightly' timed out after 2.5s"
    assert isinstance(copy, TimeoutError)
