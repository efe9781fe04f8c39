"""Histogram percentiles against a reference computed from the raw samples."""

from __future__ import annotations

import gc
import math
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxrc.rt.stats import DeadlineCounter, Histogram, percentile_from_bins

QS = (0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0)


def reference(samples: list[int], q: float, bin_ns: int, limit_ns: int) -> int:
    """Nearest rank on the sorted samples, truncated to a bin edge below the limit."""
    ordered = sorted(max(0, s) for s in samples)
    value = ordered[max(1, math.ceil(round(q * len(ordered), 9))) - 1]
    return value // bin_ns * bin_ns if value < limit_ns else max(ordered)


def test_percentiles_match_reference_on_latency_like_data() -> None:
    rng = random.Random(7)
    # Mostly 20-60 µs, a tail to 2 ms, a few beyond the 10 ms limit (hypervisor stalls).
    samples = [int(rng.gauss(35_000, 8_000)) for _ in range(20_000)]
    samples += [rng.randrange(100_000, 2_000_000) for _ in range(300)]
    samples += [rng.randrange(10_000_000, 40_000_000) for _ in range(5)]
    rng.shuffle(samples)
    h = Histogram(bin_ns=1_000, limit_ns=10_000_000)
    for s in samples:
        h.record(s)
    assert h.count == len(samples)
    assert h.overflow == 5
    assert h.max_ns == max(samples)
    for q in QS:
        assert h.percentile(q) == reference(samples, q, 1_000, 10_000_000), q


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(st.integers(min_value=-5, max_value=3_000), min_size=1, max_size=300),
    q=st.sampled_from(QS),
)
def test_percentiles_property(samples: list[int], q: float) -> None:
    h = Histogram(bin_ns=10, limit_ns=2_000)
    for s in samples:
        h.record(s)
    assert h.percentile(q) == reference(samples, q, 10, 2_000)


def test_p99_rank_is_exact_not_float_rounded() -> None:
    # 1000 samples 0..999 µs: p99 is the 990th smallest (989 µs), p99.9 the 999th.
    h = Histogram()
    for us in range(1000):
        h.record(us * 1_000 + 500)
    assert h.percentile(0.99) == 989_000
    assert h.percentile(0.999) == 998_000
    assert h.percentile(0.5) == 499_000


def test_count_at_least_and_summary() -> None:
    h = Histogram()
    for v in (100_000, 499_999, 500_000, 750_000, 20_000_000):
        h.record(v)
    assert h.count_at_least(500_000) == 3
    summary = h.summary()
    assert summary["samples"] == 5
    assert summary["max_us"] == 20_000.0
    assert summary["p50_us"] == 500.0
    h.reset()
    assert h.count == 0 and h.count_at_least(0) == 0 and h.summary() == {"samples": 0}


def test_recording_allocates_nothing() -> None:
    h = Histogram()
    record = h.record
    values = [(i * 7919) % 20_000_000 for i in range(50_000)]
    was_enabled = gc.isenabled()
    gc.disable()
    tracemalloc.start()
    try:
        before_count = gc.get_count()[0]
        before_bytes = tracemalloc.get_traced_memory()[0]
        for v in values:
            record(v)
        grown = tracemalloc.get_traced_memory()[0] - before_bytes
        tracked = gc.get_count()[0] - before_count
    finally:
        tracemalloc.stop()
        if was_enabled:
            gc.enable()
    assert tracked == 0  # no container objects created per sample
    assert grown < 1024  # 50 000 samples, fixed-size storage


def test_bad_geometry_rejected() -> None:
    with pytest.raises(ValueError, match="multiple"):
        Histogram(bin_ns=3, limit_ns=10)
    with pytest.raises(ValueError, match="percentile"):
        percentile_from_bins([1], 1, 0, 0, 0.0)


def test_deadline_counter_budget_is_inclusive() -> None:
    d = DeadlineCounter(budget_ns=500_000)
    assert not d.observe(500_000)
    assert d.observe(500_001)
    assert not d.observe(10)
    assert d.misses == 1 and d.worst_ns == 500_001


def test_the_miss_log_keeps_the_latest_misses_oldest_first() -> None:
    d = DeadlineCounter(budget_ns=500_000, log_size=4)
    for i in range(10):
        d.observe(400_000 + i * 50_000, deadline_ns=1_000_000 * i)  # misses from i = 3
    assert d.misses == 7
    assert d.recent_misses() == [(1_000_000 * i, 400_000 + i * 50_000) for i in range(6, 10)]
    assert DeadlineCounter(budget_ns=1).recent_misses() == []
    with pytest.raises(ValueError, match="miss log size"):
        DeadlineCounter(budget_ns=1, log_size=0)


def test_merged_blocks_equal_one_histogram() -> None:
    rng = random.Random(3)
    samples = [rng.randrange(0, 12_000_000) for _ in range(5000)]
    whole, first, second = Histogram(), Histogram(), Histogram()
    for i, s in enumerate(samples):
        whole.record(s)
        (first if i < 1234 else second).record(s)
    first.merge(second)
    assert first.counts == whole.counts
    assert (first.count, first.overflow, first.max_ns, first.min_ns, first.sum_ns) == (
        whole.count, whole.overflow, whole.max_ns, whole.min_ns, whole.sum_ns
    )  # fmt: skip
    for q in QS:
        assert first.percentile(q) == reference(samples, q, 1_000, 10_000_000)
    with pytest.raises(ValueError, match="different bins"):
        first.merge(Histogram(bin_ns=2_000))
