"""RunHistory: the 24-hour window by end time, capacity evictions, and percentiles from
histograms that stay exact under every way a run can leave."""

from __future__ import annotations

import copy
import math
import random
import struct
from collections.abc import Callable

import pytest

from jobpulse._exceptions import InvalidJobError
from jobpulse._history import WINDOW_NS, HistoryStats, RunHistory

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 3600 * NS
T0 = 472_222 * HOUR  # an hour boundary in late 2023, as epoch nanoseconds
TOLERANCE = 0.045  # the histograms promise 2**(1/16) - 1, about 4.4%


def float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def assert_close(reported: float | None, exact: float) -> None:
    assert reported is not None
    assert abs(reported - exact) <= TOLERANCE * exact, (reported, exact)


def assert_histograms_match(history: RunHistory) -> None:
    """The histograms count exactly the held runs, all of them and the successful ones."""
    records = history.records()
    assert sum(history._all_counts) == len(records) == len(history)
    assert sum(history._ok_counts) == sum(1 for _, _, code in records if code == 0)


def filled(durations_seconds: list[float], code: int = 0) -> RunHistory:
    history = RunHistory(capacity=len(durations_seconds) + 1)
    for index, seconds in enumerate(durations_seconds):
        start = T0 + index * NS
        history.add(start, round(seconds * NS), code, start)
    return history


def test_empty_history_has_no_figures() -> None:
    history = RunHistory()
    assert len(history) == 0
    assert history.records() == []
    assert history.stats() == HistoryStats(0, 0, None, None, None, None)
    assert history.success_percentile(0.5) == (0, None)
    assert history.dropped(T0) == 0
    assert history.prune(T0) is False


def test_records_come_back_in_insertion_order() -> None:
    history = RunHistory()
    history.add(T0, 1_500_000_000, 0, T0 + 2 * NS)
    history.add(T0 + NS, 250_000_000, 7, T0 + 2 * NS)
    history.add(T0 - 5 * NS, 8 * NS, 255, T0 + 3 * NS)
    assert len(history) == 3
    assert history.records() == [(T0, 1.5, 0), (T0 + NS, 0.25, 7), (T0 - 5 * NS, 8.0, 255)]


def test_durations_are_kept_as_float32_seconds() -> None:
    history = RunHistory()
    history.add(T0, 1_000_000, 0, T0)
    assert history.records() == [(T0, float32(0.001), 0)]


def test_a_run_is_windowed_by_its_end() -> None:
    history = RunHistory()
    now = T0 + 25 * HOUR
    history.add(T0, 2 * HOUR, 0, now)  # started 25 h ago, ended 23 h ago
    assert len(history) == 1
    assert history.prune(now) is False
    assert history.prune(T0 + 2 * HOUR + WINDOW_NS) is False  # ended exactly 24 h ago
    assert len(history) == 1
    assert history.prune(T0 + 2 * HOUR + WINDOW_NS + 1) is True
    assert len(history) == 0
    assert history.records() == []
    assert history.stats().runs == 0
    assert history.prune(T0 + 30 * HOUR) is False


def test_add_prunes_the_runs_that_left_the_window() -> None:
    history = RunHistory()
    history.add(T0, MINUTE, 0, T0 + MINUTE)
    history.add(T0 + HOUR, MINUTE, 1, T0 + HOUR + MINUTE)
    history.add(T0 + 25 * HOUR, MINUTE, 0, T0 + 25 * HOUR + MINUTE)
    assert history.records() == [(T0 + HOUR, 60.0, 1), (T0 + 25 * HOUR, 60.0, 0)]
    assert history.dropped(T0 + 25 * HOUR) == 0  # leaving the window is not an eviction


def test_a_stale_run_added_last_is_pruned_with_the_rest() -> None:
    history = RunHistory()
    history.add(T0, MINUTE, 0, T0 + MINUTE)
    history.add(T0 - 3 * HOUR, MINUTE, 0, T0 + 25 * HOUR)
    assert len(history) == 0


def test_pruning_stops_at_the_first_live_run() -> None:
    """Runs arrive in end order; one that ended out of order waits behind a live one."""
    history = RunHistory()
    history.add(T0, 2 * HOUR, 0, T0 + 2 * HOUR)
    history.add(T0, MINUTE, 0, T0 + 2 * HOUR)
    assert history.prune(T0 + MINUTE + WINDOW_NS + 1) is False
    assert len(history) == 2
    assert history.prune(T0 + 2 * HOUR + WINDOW_NS + 1) is True
    assert len(history) == 0


def test_negative_duration_counts_as_zero() -> None:
    history = RunHistory()
    history.add(T0, -5 * NS, 0, T0)
    assert history.records() == [(T0, 0.0, 0)]
    assert history.stats().p50_seconds == 2.0**-14
    assert history.prune(T0 + WINDOW_NS) is False
    assert history.prune(T0 + WINDOW_NS + 1) is True


def test_dead_prefix_is_compacted_as_runs_age_out() -> None:
    history = RunHistory(capacity=100_000)
    expected: list[tuple[int, float, int]] = []
    compactions = 0
    for index in range(20_000):
        start = T0 + index * MINUTE
        code = index % 3
        history.add(start, 30 * NS, code, start + 30 * NS)
        expected.append((start, 30.0, code))
        # A run is kept while it ended at most 24 h ago: the newest 1,441, one a minute.
        assert len(history) == min(index + 1, 1441)
        if history._head == 0 and index >= 1441:
            compactions += 1
        assert len(history._starts) <= 2 * len(history)
        assert len(history._starts) == len(history._durations) == len(history._codes)
    assert compactions > 10
    assert history.records() == expected[-1441:]
    assert_histograms_match(history)
    assert history.prune(T0 + 20_000 * MINUTE + WINDOW_NS) is True
    assert len(history) == 0
    assert len(history._starts) == 0


def test_capacity_keeps_the_newest_runs_and_counts_the_evicted() -> None:
    history = RunHistory(capacity=3)
    for index in range(5):
        start = T0 + index * MINUTE
        history.add(start, NS, 0, start + NS)
    assert [start for start, _, _ in history.records()] == [
        T0 + index * MINUTE for index in (2, 3, 4)
    ]
    assert history.dropped(T0 + 5 * MINUTE) == 2
    assert_histograms_match(history)


def test_dropped_counts_leave_after_24_hours_to_the_hour() -> None:
    history = RunHistory(capacity=1)
    history.add(T0 + 10 * MINUTE, MINUTE, 0, T0 + 11 * MINUTE)
    history.add(T0 + 11 * MINUTE, MINUTE, 0, T0 + 12 * MINUTE)  # evicts the first
    assert history.dropped(T0 + 12 * MINUTE) == 1
    assert history.prune(T0 + 23 * HOUR + 59 * MINUTE) is False
    assert history.dropped(T0 + 23 * HOUR + 59 * MINUTE) == 1
    # The evicted run ended in hour T0; 24 hours on, that hour is out of the window.
    assert history.dropped(T0 + 24 * HOUR) == 0
    assert history.prune(T0 + 24 * HOUR) is True
    assert history.prune(T0 + 24 * HOUR) is False
    assert len(history) == 1


def test_dropped_sums_hours_and_reuses_a_slot_a_day_later() -> None:
    history = RunHistory(capacity=1)

    def run_ending(end: int) -> None:
        history.add(end - MINUTE, MINUTE, 0, end)

    run_ending(T0 + 5 * MINUTE)
    for end in (T0 + 10 * MINUTE, T0 + 20 * MINUTE, T0 + HOUR + 5 * MINUTE):
        run_ending(end)  # each evicts the one before
    assert history.dropped(T0 + HOUR + 5 * MINUTE) == 3  # two in hour 0, one in hour 1
    run_ending(T0 + 24 * HOUR + 10 * MINUTE)  # evicts the hour-1 run
    run_ending(T0 + 24 * HOUR + 20 * MINUTE)  # evicts a run of hour 24: slot 0 starts over
    assert history.dropped(T0 + 24 * HOUR + 20 * MINUTE) == 2
    assert history.dropped(T0 + 25 * HOUR) == 1
    assert history.dropped(T0 + 48 * HOUR) == 0


def test_eviction_arrays_exist_only_after_an_eviction() -> None:
    history = RunHistory(capacity=2)
    history.add(T0, NS, 0, T0 + NS)
    history.add(T0 + NS, NS, 0, T0 + 2 * NS)
    assert len(history._drop_counts) == 0
    history.add(T0 + 2 * NS, NS, 0, T0 + 3 * NS)
    assert len(history._drop_counts) == 0  # evictions wait for a reader, or for more runs
    assert len(history) == 2
    assert len(history._drop_counts) == 24


def test_constant_durations() -> None:
    stats = filled([1.0] * 100).stats()
    for value in (stats.p50_seconds, stats.p95_seconds, stats.p99_seconds):
        assert_close(value, 1.0)


def test_uniform_spread_from_1_to_1000_ms() -> None:
    stats = filled([ms / 1000 for ms in range(1, 1001)]).stats()
    assert_close(stats.p50_seconds, 0.5)
    assert_close(stats.p95_seconds, 0.95)
    assert_close(stats.p99_seconds, 0.99)


DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "lognormal": lambda rng: rng.lognormvariate(0.0, 2.0),
    "exponential": lambda rng: rng.expovariate(1 / 30),
    "uniform": lambda rng: rng.uniform(0.001, 5.0),
    "pareto": lambda rng: 0.01 * rng.paretovariate(1.2),
    "bimodal": lambda rng: rng.gauss(0.2, 0.02) if rng.random() < 0.9 else rng.gauss(60, 5),
    "whole range": lambda rng: 2.0 ** rng.uniform(-13.9, 16.9),
}


@pytest.mark.parametrize("draw", DISTRIBUTIONS.values(), ids=DISTRIBUTIONS.keys())
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_exact_nearest_rank(
    draw: Callable[[random.Random], float], seed: int
) -> None:
    rng = random.Random(seed)
    durations = [min(max(draw(rng), 2.0**-13), 2.0**16.9) for _ in range(rng.randint(1, 3000))]
    history = filled(durations)
    stats = history.stats()
    assert stats.runs == len(durations)
    assert_close(stats.p50_seconds, nearest_rank(durations, 0.5))
    assert_close(stats.p95_seconds, nearest_rank(durations, 0.95))
    assert_close(stats.p99_seconds, nearest_rank(durations, 0.99))
    for q in (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0):
        count, value = history.success_percentile(q)
        assert count == len(durations)
        assert_close(value, nearest_rank(durations, q))


def test_stats_and_success_percentile_rank_alike() -> None:
    # Two implementations of one rank rule: with only successes they must agree exactly.
    rng = random.Random(4)
    for size in (1, 2, 3, 19, 20, 21, 99, 100, 101, 1000):
        history = filled([rng.lognormvariate(0.0, 3.0) for _ in range(size)])
        stats = history.stats()
        percentiles = (stats.p50_seconds, stats.p95_seconds, stats.p99_seconds)
        assert percentiles == tuple(history.success_percentile(q)[1] for q in (0.5, 0.95, 0.99))


def test_durations_outside_the_histogram_range_are_clamped() -> None:
    assert filled([0.000_01]).stats().p50_seconds == 2.0**-14  # 10 µs
    assert filled([2.0**-14]).stats().p50_seconds == 2.0**-14
    assert filled([40 * 3600.0]).stats().p99_seconds == 2.0**17  # 40 h
    assert_close(filled([2.0**17]).stats().p50_seconds, 2.0**17)


def test_bucket_edges_are_counted_in_and_out_alike() -> None:
    """Durations on and beside every bucket edge, in float32 and in nanoseconds: after they
    all leave, through capacity and through the window, every bucket is back at zero."""
    history = RunHistory(capacity=500)
    durations_ns: list[int] = []
    for k in range(31 * 8 + 1):
        edge = 2.0 ** (k / 8 - 14)
        for value in (float32(edge), edge, edge * (1 - 1e-7), edge * (1 + 1e-7)):
            durations_ns.extend((math.floor(value * NS), math.ceil(value * NS)))
    for index, duration in enumerate(durations_ns):
        history.add(T0 + index * MINUTE, duration, index % 2, T0 + index * MINUTE + duration)
        assert_histograms_match(history)
    assert history.dropped(T0 + len(durations_ns) * MINUTE) > 0
    assert history.prune(T0 + len(durations_ns) * MINUTE + 3 * WINDOW_NS) is True
    assert history.stats().runs == 0
    assert set(history._all_counts) == set(history._ok_counts) == {0}


def test_success_percentile_excludes_failures() -> None:
    history = RunHistory()
    for index in range(100):
        start = T0 + index * MINUTE
        failed = index % 10 != 0
        history.add(start, (100 if failed else 1) * NS, 3 if failed else 0, start)
    count, p99 = history.success_percentile(0.99)
    assert count == 10
    assert_close(p99, 1.0)
    stats = history.stats()
    assert stats.successes == 10
    assert stats.success_rate == 0.1
    assert_close(stats.p50_seconds, 100.0)


def test_success_percentile_with_only_failures() -> None:
    history = RunHistory()
    history.add(T0, NS, 1, T0 + NS)
    assert history.success_percentile(0.5) == (0, None)
    assert history.stats().success_rate == 0.0


def test_success_rate() -> None:
    history = RunHistory()
    for index, code in enumerate((0, 0, 4, 0)):
        history.add(T0 + index * NS, NS, code, T0 + index * NS + NS)
    stats = history.stats()
    assert (stats.runs, stats.successes, stats.success_rate) == (4, 3, 0.75)


def test_histograms_stay_exact_through_evictions_and_window_drops() -> None:
    rng = random.Random(7)
    history = RunHistory(capacity=400)
    now = T0
    evicted = aged_out = 0
    for _ in range(40):  # phases of bursts (evictions) and of slow runs (window drops)
        step = rng.choice((NS, MINUTE, 10 * MINUTE))
        for _ in range(200):
            now += step
            duration = round(rng.lognormvariate(0, 3) * NS)
            held, dropped = len(history), history.dropped(now)
            history.add(now - duration, duration, rng.choice((0, 0, 0, 1, 9)), now)
            evicted += history.dropped(now) - dropped
            aged_out += held + 1 - len(history) - (history.dropped(now) - dropped)
        assert_histograms_match(history)
    assert evicted > 100
    assert aged_out > 100
    assert history.prune(now + 3 * WINDOW_NS) is True
    assert history.stats().runs == 0
    assert history.dropped(now + 3 * WINDOW_NS) == 0
    assert set(history._all_counts) == set(history._ok_counts) == {0}


@pytest.mark.parametrize(
    # Up to capacity + capacity // 8 runs are held before an eviction.
    ("capacity", "typecode"),
    [(4096, "H"), (58_253, "H"), (58_254, "I"), (100_000, "I")],
)
def test_count_type_fits_the_capacity(capacity: int, typecode: str) -> None:
    history = RunHistory(capacity)
    history.add(T0, NS, 0, T0)
    assert history._all_counts.typecode == history._ok_counts.typecode == typecode


def test_a_full_16_bit_history_does_not_overflow_its_counts() -> None:
    history = RunHistory(capacity=58_253)  # held before an eviction: 65,534
    for index in range(65_536):
        history.add(T0 + index, NS, 0, T0 + index + NS)
        if index == 65_533:
            assert max(history._all_counts) == 65_534
    assert len(history) == 58_253
    assert max(history._all_counts) == 58_253


def test_invalid_arguments() -> None:
    with pytest.raises(InvalidJobError, match="capacity"):
        RunHistory(capacity=0)
    history = RunHistory()
    for q in (-0.1, 1.5, math.nan):
        with pytest.raises(InvalidJobError, match="quantile"):
            history.success_percentile(q)
    history.add(T0, NS, 0, T0 + NS)
    with pytest.raises(OverflowError):
        history.add(T0 + NS, NS, 256, T0 + 2 * NS)
    assert history.records() == [(T0, 1.0, 0)]


def test_prune_skips_work_only_while_nothing_can_leave() -> None:
    # The fast path (one comparison) must agree with a full prune at every step: compare a
    # history pruned often against a copy rebuilt from scratch at each step.
    rng = random.Random(11)
    history = RunHistory(capacity=50)
    now = T0
    for _ in range(600):
        now += rng.choice((NS, 7 * MINUTE, HOUR, 5 * HOUR, WINDOW_NS // 3))
        if rng.random() < 0.5:
            duration = rng.randrange(0, 3 * HOUR)
            history.add(now - duration, duration, rng.choice((0, 1)), now)
        fast_skipped = now < history.quiet_until
        changed = history.prune(now)
        if fast_skipped:
            assert changed is False
        reference = RunHistory(capacity=50)
        for start, seconds, code in history.records():
            reference.add(start, round(seconds * NS), code, now)
        assert reference.prune(now) is False  # nothing held should have left already
        assert_histograms_match(history)
    assert history.quiet_until > now


def test_an_add_keeps_quiet_until_only_while_it_still_holds() -> None:
    # add() keeps what the last prune found while the oldest run and the evictions stay as
    # they were; it must never be later than what a prune from scratch finds.
    rng = random.Random(23)
    history = RunHistory(capacity=20)
    now = T0
    kept = 0
    for _ in range(2000):
        # Now and then a day without runs: a prune empties the history before the next add.
        now += rng.choice((NS, 7 * MINUTE, HOUR, 5 * HOUR, NS, 7 * MINUTE, WINDOW_NS + HOUR))
        duration = rng.randrange(0, 3 * HOUR)
        history.add(now - duration, duration, rng.choice((0, 1)), now)
        quiet = history.quiet_until
        if quiet:
            kept += 1
            fresh = copy.deepcopy(history)
            fresh.quiet_until = 0
            fresh.prune(now)
            assert quiet <= fresh.quiet_until
        if rng.random() < 0.3:
            history.prune(now)
    assert kept > 500  # most adds leave the oldest run where it is
    # A history emptied by a prune, then added to: the new run is the oldest.
    empty = RunHistory()
    empty.add(T0, NS, 0, T0 + NS)
    assert empty.prune(T0 + 2 * WINDOW_NS) is True
    empty.add(T0 + 2 * WINDOW_NS, NS, 0, T0 + 2 * WINDOW_NS + NS)
    assert empty.quiet_until <= T0 + 3 * WINDOW_NS + NS


def test_a_quiet_history_wakes_up_when_an_eviction_count_expires() -> None:
    history = RunHistory(capacity=1)
    history.add(T0, NS, 0, T0 + NS)
    history.add(T0 + 2 * NS, NS, 0, T0 + 3 * NS)  # evicts the first run
    assert history.dropped(T0 + 3 * NS) == 1
    assert history.prune(T0 + 3 * NS) is False
    assert history.quiet_until <= T0 + 25 * HOUR
    assert history.prune(T0 + 25 * HOUR) is True  # both the run and the count left
    assert history.dropped(T0 + 25 * HOUR) == 0
