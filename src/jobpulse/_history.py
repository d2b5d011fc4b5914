"""One job's finished runs of the last 24 hours, in three flat arrays and two histograms.

Runs are stored column-wise (start, duration, outcome code: 13 bytes a run) in the order they
end, so the oldest-ended run is always at the front and keeping the window is a front prune.
Duration percentiles come from log-bucket histograms updated on every add and removal, so the
read path never sorts. The outcome code is the caller's: 0 is success, anything else a failure
category this module knows nothing about.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import Counter
from itertools import accumulate
from typing import NamedTuple

from jobpulse._exceptions import InvalidJobError

__all__ = ["WINDOW_NS", "HistoryStats", "RunHistory"]

WINDOW_NS = 24 * 3600 * 1_000_000_000
_HOUR_NS = 3600 * 1_000_000_000
_HOURS = 24
_FOREVER = 1 << 63
_STEPS = 8  # buckets per doubling of the duration
_LOW_EXP, _HIGH_EXP = -14, 17
_LOW, _HIGH = 2.0**_LOW_EXP, 2.0**_HIGH_EXP
_BUCKETS = (_HIGH_EXP - _LOW_EXP) * _STEPS + 2
_MIDPOINTS = (
    _LOW,
    *(math.pow(2.0, (k - 0.5) / _STEPS + _LOW_EXP) for k in range(1, _BUCKETS - 1)),
    _HIGH,
)
# Shared stand-in for arrays not allocated yet; never written to.
_UNALLOCATED: array[int] = array("B")


def _bucket(seconds: float) -> int:
    # Callers pass the float32 value read back from the array, so that a run's bucket on
    # removal is the bucket it was counted in on add.
    if seconds <= _LOW:
        return 0
    if seconds > _HIGH:
        return _BUCKETS - 1
    return math.ceil((math.log2(seconds) - _LOW_EXP) * _STEPS)


def _quantile(cumulative: list[int], count: int, q: float, offset: int = 0) -> float:
    return _MIDPOINTS[offset + bisect_left(cumulative, max(1, math.ceil(q * count)))]


class HistoryStats(NamedTuple):
    """A summary of the runs a `RunHistory` holds. Durations are in seconds; every field that
    needs at least one run is None when there is none."""

    runs: int
    successes: int
    p50_seconds: float | None
    p95_seconds: float | None
    p99_seconds: float | None
    success_rate: float | None


_NO_RUNS = HistoryStats(0, 0, None, None, None, None)
# A NamedTuple's __new__ is a Python function: the health document's path builds one per
# changed job, from a plain tuple in C.
_new_stats = tuple.__new__


class RunHistory:
    """The finished runs of one job that ended within `WINDOW_NS` (24 h) of the latest `now_ns`,
    at most `capacity` of them: past that the oldest are evicted and counted by `dropped`.

    Not thread-safe: the caller holds its own lock around every call. Times are integer
    nanoseconds (`start_ns` and `now_ns` on the same clock, normally the epoch); durations are
    stored as float32 seconds and reported in seconds. Runs must be added in the order they end;
    small disorder (clock noise between threads) only delays a run's pruning.

    Percentiles are nearest-rank over histograms of 8 buckets per doubling from 2**-14 s
    (61 µs) to 2**17 s (36 h), reported as the bucket's geometric midpoint: within 2**(1/16) - 1
    (about 4.4%) of the exact value inside that range. Shorter runs read as 2**-14 s, longer
    ones as 2**17 s.
    """

    __slots__ = (
        "_all_counts",
        "_buckets",
        "_capacity",
        "_codes",
        "_drop_counts",
        "_drop_hours",
        "_durations",
        "_head",
        "_highest",
        "_limit",
        "_lowest",
        "_ok_counts",
        "_starts",
        "_successes",
        "quiet_until",
    )

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise InvalidJobError(f"history capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        # Evictions wait until this many runs are held, then go in one pass (every reading
        # method evicts down to `capacity` first, so what is read is the same).
        self._limit = capacity + max(capacity // 8, 1)
        self._starts = array("q")
        self._durations = array("f")
        self._codes = array("B")
        self._buckets = array("B")  # each run's histogram bucket (_BUCKETS < 256)
        self._head = 0  # index of the oldest held run; everything before it is dead
        self._successes = 0
        self._all_counts = self._ok_counts = _UNALLOCATED
        # The range of buckets ever used: percentiles scan only these (a job's durations
        # usually span a few doublings of the 250 buckets).
        self._lowest, self._highest = _BUCKETS, -1
        self._drop_counts = self._drop_hours = _UNALLOCATED
        # Before this time `prune` has nothing to do (0: not known, look). Public so that a
        # caller looping over many histories can skip the call.
        self.quiet_until = 0

    def add(self, start_ns: int, duration_ns: int, code: int, now_ns: int) -> None:
        """Append a finished run; `code` 0 is success, 1..255 a failure category. A negative
        duration (a clock step) counts as 0. Then drop the runs that ended before
        `now_ns - WINDOW_NS`, and the oldest runs beyond `capacity` (counted by `dropped`).

        Raises OverflowError, leaving the history unchanged, if `code` is outside 0..255.
        """
        self._codes.append(code)
        self._starts.append(start_ns)
        durations = self._durations
        durations.append(duration_ns / 1e9 if duration_ns > 0 else 0.0)
        seconds = durations[-1]
        bucket = 0 if seconds <= _LOW else _bucket(seconds)  # no call for a run under 61 us
        self._buckets.append(bucket)
        if self._all_counts is _UNALLOCATED:
            # Until an eviction, a bucket can hold `_limit` + 1 runs.
            count_type = "H" if self._limit < 0xFFFF else "I"
            self._all_counts = array(count_type, [0]) * _BUCKETS
            self._ok_counts = array(count_type, [0]) * _BUCKETS
        self._all_counts[bucket] += 1
        if code == 0:
            self._ok_counts[bucket] += 1
            self._successes += 1
        if bucket < self._lowest:
            self._lowest = bucket
        if bucket > self._highest:
            self._highest = bucket
        head = self._head
        # `quiet_until` depends on the oldest run and the evictions only: it holds while
        # neither changes (0: not known, look).
        if len(durations) - 1 == head:
            self.quiet_until = 0
        # The common case in one comparison: the oldest run is still within the window.
        if durations[head] * 1e9 < now_ns - WINDOW_NS - self._starts[head]:
            self.quiet_until = 0
            self._prune_runs(now_ns)
            head = self._head
        held = len(durations) - head
        if held > self._capacity:
            if held > self._limit:
                self._evict()
            elif held == self._capacity + 1 and self.quiet_until:
                # Evictions wait for a reader: the hour they will be counted in must not
                # leave the window unseen (an hour early, for runs added slightly out of
                # the order they ended in).
                end_ns = self._starts[head] + int(durations[head] * 1e9)
                self.quiet_until = min(
                    self.quiet_until, (end_ns // _HOUR_NS + _HOURS - 1) * _HOUR_NS
                )

    def _evict(self) -> None:
        """Evict the oldest runs beyond `capacity`, counting each in the hour it ended."""
        head = self._head
        stop = len(self._starts) - self._capacity
        if stop <= head:
            return
        self.quiet_until = 0  # the oldest run and the evictions change
        if self._drop_counts is _UNALLOCATED:
            self._drop_counts = array("I", [0]) * _HOURS
            self._drop_hours = array("q", [0]) * _HOURS
        # Counted by C loops: a pass costs ~0.1 us a run, where a Python loop over the
        # runs cost 0.3.
        buckets, codes = self._buckets[head:stop], self._codes[head:stop]
        evicted = Counter(buckets)
        all_counts, ok_counts = self._all_counts, self._ok_counts
        for bucket, count in evicted.items():
            all_counts[bucket] -= count
        successes = codes.count(0)
        if successes < len(codes):
            evicted = Counter(b for b, code in zip(buckets, codes, strict=True) if code == 0)
        for bucket, count in evicted.items():
            ok_counts[bucket] -= count
        self._successes -= successes
        hours = Counter(
            (start + int(seconds * 1e9)) // _HOUR_NS
            for start, seconds in zip(
                self._starts[head:stop], self._durations[head:stop], strict=True
            )
        )
        drop_counts, drop_hours = self._drop_counts, self._drop_hours
        for hour, count in hours.items():
            slot = hour % _HOURS
            if drop_hours[slot] != hour:
                drop_hours[slot] = hour
                drop_counts[slot] = 0
            drop_counts[slot] += count
        self._head = stop
        self._compact()

    def prune(self, now_ns: int) -> bool:
        """Drop the runs that ended before `now_ns - WINDOW_NS`, and forget evictions that
        left the window. True if anything was dropped or forgotten.

        Reading the view calls this for every job; until the oldest run or eviction count
        leaves the window it costs one comparison."""
        if now_ns < self.quiet_until:
            return False
        self._evict()
        changed = self._prune_runs(now_ns)
        oldest_hour = now_ns // _HOUR_NS - _HOURS
        counts, hours = self._drop_counts, self._drop_hours
        quiet_until = _FOREVER
        for slot in range(len(counts)):
            if counts[slot]:
                if hours[slot] <= oldest_hour:
                    counts[slot] = 0
                    changed = True
                else:
                    quiet_until = min(quiet_until, (hours[slot] + _HOURS) * _HOUR_NS)
        head = self._head
        if head < len(self._starts):
            # A microsecond early, so float rounding of the duration can never make it late.
            end_ns = self._starts[head] + int(self._durations[head] * 1e9)
            quiet_until = min(quiet_until, end_ns + WINDOW_NS - 1_000)
        self.quiet_until = quiet_until
        return changed

    def __len__(self) -> int:
        self._evict()
        return len(self._starts) - self._head

    def dropped(self, now_ns: int) -> int:
        """How many runs were evicted because of `capacity` and ended within the last 24 h,
        to the hour: evictions are counted per hour of the evicted run's end."""
        self._evict()
        if self._drop_counts is _UNALLOCATED:
            return 0
        oldest_hour = now_ns // _HOUR_NS - _HOURS
        slots = zip(self._drop_counts, self._drop_hours, strict=True)
        return sum(count for count, hour in slots if hour > oldest_hour)

    def stats(self) -> HistoryStats:
        """Run count, successes, p50/p95/p99 duration and success rate of the held runs."""
        self._evict()
        runs = len(self._starts) - self._head
        if runs == 0:
            return _NO_RUNS
        successes = self._successes
        low = self._lowest
        cumulative = list(accumulate(self._all_counts[low : self._highest + 1]))
        # `_quantile` three times, written out (the health document's path): with a run or
        # more, each rank is at least 1.
        return _new_stats(
            HistoryStats,
            (
                runs,
                successes,
                _MIDPOINTS[low + bisect_left(cumulative, math.ceil(0.5 * runs))],
                _MIDPOINTS[low + bisect_left(cumulative, math.ceil(0.95 * runs))],
                _MIDPOINTS[low + bisect_left(cumulative, math.ceil(0.99 * runs))],
                successes / runs,
            ),
        )

    def success_percentile(self, q: float) -> tuple[int, float | None]:
        """(number of successful runs held, their `q`-quantile duration in seconds, or None
        when there is none). `q` is in 0..1; raises InvalidJobError (a ValueError) otherwise."""
        if not 0.0 <= q <= 1.0:
            raise InvalidJobError(f"a quantile is between 0 and 1, not {q}")
        self._evict()
        successes = self._successes
        if successes == 0:
            return 0, None
        low = self._lowest
        cumulative = list(accumulate(self._ok_counts[low : self._highest + 1]))
        return successes, _quantile(cumulative, successes, q, low)

    def records(self, limit: int | None = None) -> list[tuple[int, float, int]]:
        """(start_ns, duration_seconds, code) of every held run, or of the `limit` that
        ended last, oldest-ended first."""
        self._evict()
        head = self._head
        if limit is not None:
            head = max(head, len(self._starts) - limit)
        return list(
            zip(self._starts[head:], self._durations[head:], self._codes[head:], strict=True)
        )

    def _prune_runs(self, now_ns: int) -> bool:
        cutoff = now_ns - WINDOW_NS
        starts, durations = self._starts, self._durations
        head = first = self._head
        while head < len(starts) and durations[head] * 1e9 < cutoff - starts[head]:
            self._forget(head)
            head += 1
        if head == first:
            return False
        self._head = head
        self._compact()
        return True

    def _forget(self, index: int) -> None:
        """Take the run at `index` out of the histograms."""
        bucket = self._buckets[index]
        self._all_counts[bucket] -= 1
        if self._codes[index] == 0:
            self._ok_counts[bucket] -= 1
            self._successes -= 1

    def _compact(self) -> None:
        # Deleting the dead prefix only once it is the larger half keeps pruning O(1) amortized.
        head = self._head
        if head * 2 > len(self._starts):
            del self._starts[:head]
            del self._durations[:head]
            del self._codes[:head]
            del self._buckets[:head]
            self._head = 0
