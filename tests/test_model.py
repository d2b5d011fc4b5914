"""The health document's numbers written by hand: exactly what json.dumps writes for the
rounded values, which is what they were before they were written by hand."""

from __future__ import annotations

import math
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from jobpulse import _model


def _repr_ms(seconds: float | None) -> str:
    return "null" if seconds is None else repr(round(seconds * 1000.0, 3))


def _repr_rate(rate: float | None) -> str:
    return "null" if rate is None else repr(round(rate, 4))


# Every float there is (by bit pattern), and more where the fast path ends (1e12 ms).
_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2e9, max_value=2e9),
    st.floats(min_value=0.99e9, max_value=1.01e9),
    st.floats(min_value=-1e-3, max_value=1e-3),
    st.integers(min_value=0, max_value=2**64 - 1).map(
        lambda bits: struct.unpack("<d", bits.to_bytes(8, "little"))[0]
    ),
)


@settings(max_examples=5000)
@given(_FLOATS)
@example(0.0)
@example(-0.0)
@example(-1e-7)  # rounds to -0.0
@example(5e-7)  # 0.0005 ms
@example(2.5e-6)
@example(1e9)  # 1e12 ms: the first value past the fast path
@example(999_999_999.999_999_9)
@example(-999_999_999.999_999_9)
@example(1e300)
@example(5e-324)
@example(math.nan)
@example(math.inf)
@example(-math.inf)
def test_ms_are_written_as_repr_of_round(seconds: float) -> None:
    assert _model._json_ms(seconds) == _repr_ms(seconds)


@settings(max_examples=5000)
@given(_FLOATS)
@example(0.0)
@example(-0.0)
@example(1.0)
@example(2 / 3)
@example(0.00005)
@example(1e11)
@example(99_999_999_999.999_99)
@example(math.nan)
@example(-math.inf)
def test_rates_are_written_as_repr_of_round(rate: float) -> None:
    assert _model._json_rate(rate) == _repr_rate(rate)


def test_exact_ties_round_half_to_even() -> None:
    # odd / 16 is exactly halfway between two values of 3 places: both ways of writing it
    # must round it the same way (to even), not away from zero.
    ties = 0
    for odd in range(1, 20_000, 2):
        ms = odd / 16
        seconds = ms / 1000.0
        ties += seconds * 1000.0 == ms
        assert _model._json_ms(seconds) == _repr_ms(seconds)
        assert _model._json_rate(ms) == _repr_rate(ms)
    assert ties > 1000
    assert _model._json_ms(0.0625 / 1000.0) == "0.062"


def test_other_types_keep_their_repr() -> None:
    class Seconds(float):
        pass

    for value in (None, 0, 1, 7, True, -3, Seconds(1.5), 10**20):
        assert _model._json_ms(value) == _repr_ms(value)
        assert _model._json_rate(value) == _repr_rate(value)
