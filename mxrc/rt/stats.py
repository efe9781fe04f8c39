"""Latency histograms and deadline-miss counts that cost nothing per sample.

The cycle records two numbers every millisecond for as long as the controller runs, so
keeping samples is out of the question (a day is 86 million of them) and so is any
per-sample allocation that could wake the garbage collector. A histogram with fixed
bins — 1 µs wide up to a bound, plus one overflow bin — has a fixed size, answers any
percentile within one bin width, and uses the same convention as ``cyclictest -h``
(latency truncated to whole bins) so the two can be compared bin for bin.
"""

from __future__ import annotations

import bisect
import itertools
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

PERCENTILES: Mapping[str, float] = {"p50": 0.50, "p99": 0.99, "p99.9": 0.999}


class Histogram:
    """Counts of non-negative values (ns) in ``bin_ns``-wide bins below ``limit_ns``.

    Values at or above the limit land in the overflow bin; the exact maximum is kept so
    a percentile that falls there still has an honest answer.
    """

    def __init__(self, bin_ns: int = 1_000, limit_ns: int = 10_000_000) -> None:
        if bin_ns <= 0 or limit_ns < bin_ns or limit_ns % bin_ns:
            raise ValueError(
                f"limit_ns ({limit_ns}) must be a positive multiple of bin_ns ({bin_ns})"
            )
        self.bin_ns = bin_ns
        self.limit_ns = limit_ns
        self.nbins = limit_ns // bin_ns
        # array('Q') holds machine integers: incrementing a bin creates no tracked object.
        self.counts = array("Q", bytes(8 * self.nbins))
        self.overflow = 0
        self.count = 0
        self.max_ns = 0
        self.min_ns = -1
        self.sum_ns = 0

    def record(self, value_ns: int) -> None:
        value_ns = max(value_ns, 0)
        index = value_ns // self.bin_ns
        if index < self.nbins:
            self.counts[index] += 1
        else:
            self.overflow += 1
        self.count += 1
        self.sum_ns += value_ns
        self.max_ns = max(self.max_ns, value_ns)
        if self.min_ns < 0 or value_ns < self.min_ns:
            self.min_ns = value_ns

    def reset(self) -> None:
        for i in range(self.nbins):
            self.counts[i] = 0
        self.overflow = self.count = self.max_ns = self.sum_ns = 0
        self.min_ns = -1

    def merge(self, other: Histogram) -> None:
        """Add another histogram of the same geometry (runs measured in blocks)."""
        if (other.bin_ns, other.limit_ns) != (self.bin_ns, self.limit_ns):
            raise ValueError("histograms with different bins cannot be merged")
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.overflow += other.overflow
        self.count += other.count
        self.sum_ns += other.sum_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        if other.min_ns >= 0 and (self.min_ns < 0 or other.min_ns < self.min_ns):
            self.min_ns = other.min_ns

    def count_at_least(self, threshold_ns: int) -> int:
        """How many samples were ≥ ``threshold_ns`` (exact when it is a bin edge)."""
        first = -(-threshold_ns // self.bin_ns)
        return sum(self.counts[first:]) + self.overflow

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile, truncated to its bin's lower edge (ns)."""
        return self.percentiles([q])[0]

    def percentiles(self, qs: Sequence[float]) -> list[int]:
        used = min(self.nbins, self.max_ns // self.bin_ns + 1)  # bins past the max are empty
        return percentiles_from_bins(
            self.counts[:used], self.bin_ns, self.overflow, self.max_ns, qs
        )

    def summary(self) -> dict[str, float | int]:
        """p50/p99/p99.9/max/mean in µs plus the sample count.

        Called from outside the cycle thread, where every microsecond it holds the GIL
        may be a microsecond the woken cycle waits: one cumulative pass (in C) over the
        bins up to the maximum, not one Python loop per percentile.
        """
        out: dict[str, float | int] = {"samples": self.count}
        if self.count == 0:
            return out
        values = self.percentiles(list(PERCENTILES.values()))
        for name, value in zip(PERCENTILES, values, strict=True):
            out[f"{name}_us"] = value / 1000
        out["max_us"] = self.max_ns / 1000
        out["min_us"] = self.min_ns / 1000
        out["mean_us"] = round(self.sum_ns / self.count / 1000, 3)
        out["overflow"] = self.overflow
        return out


def percentiles_from_bins(
    counts: Iterable[int], bin_ns: int, overflow: int, max_ns: int, qs: Sequence[float]
) -> list[int]:
    """Nearest-rank percentiles of a binned distribution, each a bin's lower edge.

    Rank k = ceil(q·n) (1-based), the usual definition: p99 of 1000 samples is the
    990th smallest. A rank that falls in the overflow bin answers the exact maximum.
    Shared with the benchmark, which feeds it cyclictest's histogram.
    """
    for q in qs:
        if not 0.0 < q <= 1.0:
            raise ValueError(f"percentile must be in (0, 1], got {q}")
    cumulative = list(itertools.accumulate(counts))
    total = (cumulative[-1] if cumulative else 0) + overflow
    if total == 0:
        return [0 for _ in qs]
    out = []
    for q in qs:
        exact_q = Fraction(repr(q))  # 0.999 as 999/1000, so the rank has no rounding error
        rank = max(1, math.ceil(exact_q * total))
        index = bisect.bisect_left(cumulative, rank)
        out.append(index * bin_ns if index < len(cumulative) else max_ns)
    return out


def percentile_from_bins(
    counts: Iterable[int], bin_ns: int, overflow: int, max_ns: int, q: float
) -> int:
    return percentiles_from_bins(counts, bin_ns, overflow, max_ns, [q])[0]


#: How many of the latest misses :class:`DeadlineCounter` keeps, with their times.
MISS_LOG_SIZE = 1024


@dataclass
class DeadlineCounter:
    """Counts cycles whose response (wake-up latency + execution) exceeded the budget.

    A control cycle has met its deadline when its outputs are written, not when it
    wakes, so the budget is compared with the time from the release (the absolute
    deadline it slept until) to the end of its work.

    The latest :data:`MISS_LOG_SIZE` misses are also kept with their deadlines
    (CLOCK_MONOTONIC ns), in machine-integer arrays written in place: a count says how
    often the cycle was late, but only the times let someone match each miss with what
    else happened on the machine then (a host stall seen by another probe, a journal
    entry, an interrupt storm).
    """

    budget_ns: int
    misses: int = 0
    worst_ns: int = 0
    log_size: int = MISS_LOG_SIZE
    _log_deadline: array[int] = field(init=False, repr=False)
    _log_response: array[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.log_size <= 0:
            raise ValueError(f"miss log size must be positive, got {self.log_size}")
        self._log_deadline = array("q", bytes(8 * self.log_size))
        self._log_response = array("q", bytes(8 * self.log_size))

    def observe(self, response_ns: int, deadline_ns: int = 0) -> bool:
        self.worst_ns = max(self.worst_ns, response_ns)
        if response_ns > self.budget_ns:
            slot = self.misses % self.log_size
            self._log_deadline[slot] = deadline_ns
            self._log_response[slot] = response_ns
            self.misses += 1
            return True
        return False

    def recent_misses(self) -> list[tuple[int, int]]:
        """The kept misses, oldest first, as ``(deadline_ns, response_ns)``."""
        kept = min(self.misses, self.log_size)
        first = self.misses - kept
        return [
            (self._log_deadline[i % self.log_size], self._log_response[i % self.log_size])
            for i in range(first, self.misses)
        ]
