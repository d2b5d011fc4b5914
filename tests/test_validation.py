from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from starlette.applications import Starlette

import jobpulse
from jobpulse import InvalidJobError, JobMonitor
from jobpulse._validation import (
    MAX_DURATION_SECONDS,
    to_seconds,
    validate_name,
    validate_positive_int,
)
from jobpulse.starlette import HEALTH_PATH, routes
from jobpulse.testing import FakeClock
from tests.test_starlette import client_for


@pytest.mark.parametrize(
    "name", ["btc_transaction_indexing", "a", "nightly report", "tâche-été", "x" * 200]
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        (None, "must be a str, not NoneType"),
        (42, "must be a str, not int"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("x" * 201, "at most 200 characters, got 201"),
        ("bad\nname", "control or unprintable characters: '\\n' at index 3"),
        ("tab\there", "'\\t' at index 3"),
        ("nul\x00", "'\\x00' at index 3"),
        ("esc\x1b[31m", "'\\x1b' at index 3"),
    ],
)
def test_invalid_names_name_the_rule(name: object, rule: str) -> None:
    with pytest.raises(InvalidJobError, match="job name") as caught:
        validate_name(name)
    assert rule in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_name_kind_is_in_the_message() -> None:
    with pytest.raises(ValueError, match="pending kind must not be empty"):
        validate_name("", "pending kind")


@pytest.mark.parametrize(
    ("value", "seconds"), [(1, 1.0), (0.25, 0.25), (timedelta(minutes=2), 120.0)]
)
def test_to_seconds(value: object, seconds: float) -> None:
    assert to_seconds(value, "timeout") == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "positive"),
        (-1, "positive"),
        (math.nan, "positive"),
        (math.inf, "positive"),
        (timedelta(0), "positive"),
        ("5", "got '5'"),
        (b"5s", "not bytes"),
        (True, "not bool"),
        (None, "not NoneType"),
    ],
)
def test_to_seconds_rejects(value: object, message: str) -> None:
    with pytest.raises(InvalidJobError, match=message) as caught:
        to_seconds(value, "timeout")
    assert str(caught.value).startswith("timeout must be")


def test_validate_positive_int() -> None:
    assert validate_positive_int(3, "failure_threshold") == 3
    with pytest.raises(InvalidJobError, match="failure_threshold must be at least 1, got 0"):
        validate_positive_int(0, "failure_threshold")
    with pytest.raises(InvalidJobError, match="must be an int, not float"):
        validate_positive_int(2.5, "failure_threshold")
    with pytest.raises(InvalidJobError, match="must be an int, not bool"):
        validate_positive_int(True, "failure_threshold")


# --- duration strings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("250us", 0.00025),
        ("1d", 86400.0),
        ("1d12h", 129600.0),
        (" 90s ", 90.0),
        ("+2m", 120.0),
        ("366d", 366 * 86400.0),
    ],
)
def test_duration_strings(text: str, seconds: float) -> None:
    assert to_seconds(text, "timeout") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("5", "got '5': a number needs a unit, e.g. '5s' (or pass the number itself)"),
        ("1.5", "got '1.5': a number needs a unit, e.g. '1.5s'"),
        ("ten seconds", "got 'ten seconds'"),
        ("5M", "got '5M'"),
        ("1h 30m", "got '1h 30m'"),
        ("", "got ''"),
        ("1" * 5000 + "s", "got '111"),  # never converted: int() refuses 4,300 digits
    ],
)
def test_bad_duration_strings_name_the_syntax(text: str, detail: str) -> None:
    with pytest.raises(InvalidJobError) as caught:
        to_seconds(text, "stall_after")
    message = str(caught.value)
    assert message.startswith(
        "stall_after must be a duration such as '90s', '15m', '1h30m' or '1d' (units: ns, us,"
        " ms, s, m, h, d)"
    )
    assert detail in message


@pytest.mark.parametrize("text", ["0", "0s", "-5m", "-1d"])
def test_duration_strings_must_be_positive(text: str) -> None:
    with pytest.raises(
        InvalidJobError, match=f"timeout must be a positive, finite duration, got '{text}'"
    ):
        to_seconds(text, "timeout")


# --- the upper bound, through the public API ---------------------------------------------------

LONGEST = timedelta(days=366)
TOO_LONG = timedelta(days=366, seconds=1)
JOB_SETTINGS = ["timeout", "stall_after", "grace", "schedule"]


def job_options(setting: str, value: object) -> dict[str, Any]:
    options: dict[str, Any] = {setting: value}
    if setting == "grace":
        options["schedule"] = "@every 1m"
    return options


def test_the_bound_is_366_days() -> None:
    assert MAX_DURATION_SECONDS == LONGEST.total_seconds() == 31_622_400


def too_long_settings() -> list[tuple[str, object]]:
    """Each job setting with values just past 366 days, in every form it takes."""
    cases: list[tuple[str, object]] = []
    for setting in JOB_SETTINGS:
        for value in (TOO_LONG, TOO_LONG.total_seconds(), int(TOO_LONG.total_seconds())):
            cases.append((setting, value))
    cases += [
        (setting, text)
        for setting in ("timeout", "stall_after", "grace")
        for text in ("366d1s", "8785h")
    ]
    cases += [("schedule", "@every 366d1s"), ("schedule", "@every 8785h")]
    return cases


@pytest.mark.parametrize(("setting", "value"), too_long_settings())
def test_job_settings_past_366_days_are_refused(
    monitor: JobMonitor, setting: str, value: object
) -> None:
    options = job_options(setting, value)
    with pytest.raises(InvalidJobError, match="at most 366 days") as caught:
        monitor.register("job", **options)
    assert str(caught.value).startswith(setting)
    with pytest.raises(InvalidJobError, match="at most 366 days"):
        monitor.job("decorated", **options)
    with pytest.raises(InvalidJobError, match="at most 366 days"):

        @monitor.job(**options)
        def job() -> None:
            pass

    assert monitor.statuses() == {}


@pytest.mark.parametrize("value", [TOO_LONG, TOO_LONG.total_seconds(), "366d1s"])
def test_monitor_stall_after_past_366_days_is_refused(value: object) -> None:
    with pytest.raises(
        InvalidJobError, match=r"^stall_after must be at most 366 days \(31622400 s\)"
    ):
        JobMonitor(stall_after=value)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match=r"^retention must be at most 366 days"):
        JobMonitor(retention=value)  # type: ignore[arg-type]


@pytest.mark.usefixtures("otel_globals")
def test_setup_refuses_stall_after_past_366_days_and_takes_366() -> None:
    with pytest.raises(InvalidJobError, match=r"^stall_after must be at most 366 days"):
        jobpulse.setup(prometheus=False, stall_after=TOO_LONG)
    monitor = jobpulse.setup(prometheus=False, stall_after=LONGEST)
    monitor.register("job")
    status = monitor.status("job")
    assert status is not None
    assert status.stall_after_seconds == LONGEST.total_seconds()


def test_a_job_at_every_largest_value_can_be_read_everywhere(
    make_monitor: Callable[..., JobMonitor], clock: FakeClock
) -> None:
    monitor = make_monitor(stall_after="366d", retention=LONGEST)
    longest = LONGEST.total_seconds()
    settings: dict[str, Any] = {
        "timeout": longest,
        "stall_after": LONGEST,
        "grace": "366d",
        "schedule": LONGEST,
    }
    monitor.register("registered", critical=True, **settings)

    @monitor.job("decorated", **settings)
    def decorated() -> None:
        pass

    decorated()  # in a thread of its own, bounded by its 366-day timeout
    monitor.register("default_stall")  # takes the monitor's 366 days
    client = client_for(Starlette(routes=routes(monitor, metrics=False)))
    assert len(monitor.history("decorated")) == 1
    assert client.get(HEALTH_PATH + "/decorated").json()["history"][0]["outcome"] == "success"
    with monitor.run("registered"):
        clock.advance(longest - 1)  # still running, not yet stalled
        for name in ("registered", "decorated", "default_stall"):
            status = monitor.status(name)
            assert status is not None
            assert status.stall_after_seconds == longest
        status = monitor.status("registered")
        assert status is not None
        assert status.next_run_time is not None
        assert status.timeout_seconds == status.grace_seconds == longest
        assert set(monitor.statuses()) == {"registered", "decorated", "default_stall"}
        assert monitor.health().http_status == 200
        health_status, body = monitor.health_json()
        assert health_status.http_status == 200
        assert json.loads(body)["jobs"]["registered"]["stall_after_ms"] == longest * 1000
        assert monitor.summary().running_jobs == 1
        assert client.get(HEALTH_PATH).status_code == 200
        assert client.get(HEALTH_PATH + "/registered").status_code == 200
        assert client.get(HEALTH_PATH + "/decorated").status_code == 200
        clock.advance(2)  # now it is stalled, 366 days after it started
        assert monitor.health().http_status == 503
        assert client.get(HEALTH_PATH).status_code == 503


def test_job_settings_take_duration_strings(monitor: JobMonitor) -> None:
    monitor.register("strings", timeout="10s", stall_after="15m", grace="30s", schedule="@every 1d")
    status = monitor.status("strings")
    assert status is not None
    assert (status.timeout_seconds, status.stall_after_seconds) == (10.0, 900.0)
    assert status.grace_seconds == 30.0
    assert status.schedule == "@every 24h"
    monitor.register("strings", stall_after="auto")
    assert monitor.status("strings").stall_after_auto is True  # type: ignore[union-attr]
    with pytest.raises(InvalidJobError, match="stall_after"):
        monitor.register("strings", stall_after="fifteen minutes")
