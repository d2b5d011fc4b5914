"""A store row folds a batch of finished runs as it would fold them one at a time."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from jobpulse.store._base import FleetRow
from jobpulse.store._merge import KEPT_FAILURE_ENDS, _failed, fold_runs, succeeded

_ENDS = st.integers(min_value=0, max_value=40)
# (start_ns, duration_ns, end_ns, category or None, error or None, timed out)
_RUNS = st.lists(
    st.tuples(
        st.just(0),
        st.just(1),
        _ENDS,
        st.sampled_from([None, None, "network"]),
        st.none(),
        st.just(False),
    ),
    max_size=30,
)


def _one_at_a_time(row: FleetRow, runs: list[tuple[int, int, int, str | None, None, bool]]) -> None:
    """The fold as it was: every run on its own, in the order they ended."""
    for run in sorted(runs, key=lambda run: run[2]):
        if run[3] is None:
            succeeded(row, run[2])
        else:
            _failed(row, run[2])


@settings(max_examples=1000)
@given(
    runs=_RUNS,
    last_success=st.none() | _ENDS,
    failure_ends=st.lists(_ENDS, max_size=KEPT_FAILURE_ENDS + 2).map(
        lambda ends: tuple(sorted(ends))
    ),
    consecutive=st.integers(min_value=0, max_value=70),
    full=st.booleans(),
)
def test_a_batch_folds_as_its_runs_one_at_a_time(
    runs: list[tuple[int, int, int, str | None, None, bool]],
    last_success: int | None,
    failure_ends: tuple[int, ...],
    consecutive: int,
    full: bool,
) -> None:
    if full:  # as many failure ends as a row keeps, or none kept (a streak seeded)
        failure_ends = tuple(range(20, 20 + KEPT_FAILURE_ENDS)) if failure_ends else ()
    row = FleetRow(
        "job",
        created_ns=0,
        updated_ns=0,
        last_success_ns=last_success,
        failure_ends=failure_ends[-KEPT_FAILURE_ENDS:],
        consecutive_failures=consecutive,
    )
    expected = dataclasses.replace(row)
    fold_runs(row, runs)
    _one_at_a_time(expected, runs)
    assert (row.last_success_ns, row.failure_ends, row.consecutive_failures) == (
        expected.last_success_ns,
        expected.failure_ends,
        expected.consecutive_failures,
    )
