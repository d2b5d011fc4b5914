from __future__ import annotations

import math
from datetime import timedelta

import pytest

from jobpulse import InvalidJobError
from jobpulse._validation import to_seconds, validate_name, validate_positive_int


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
        ("5", "not str"),
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
