"""The paired benchmark's two pure steps: rebuilding cyclictest's deadlines from its
latencies, and putting each of the cycle's misses down to the platform or the cycle."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))

from stalls import Miss, ProbeSample, Verdict, attribute, cyclictest_samples, stalled_ns

MS = 1_000_000
T0 = 7_000_000_000  # a whole second of CLOCK_MONOTONIC: --secaligned starts there


def literal_cyclictest(latencies: list[int], first: int, interval: int) -> list[int]:
    """cyclictest's loop as it is written: next += interval; while (now > next) next +=."""
    deadlines, nxt = [], first
    for latency in latencies:
        deadlines.append(nxt)
        now = nxt + latency
        nxt += interval
        while now > nxt:
            nxt += interval
    return deadlines


def test_the_deadlines_follow_cyclictest_s_own_skipping_rule() -> None:
    rng = random.Random(11)
    latencies = [
        rng.choice((rng.randrange(5_000, 80_000), rng.randrange(0, 9 * MS), 2 * MS, MS))
        for _ in range(5000)
    ]
    samples = cyclictest_samples(latencies, T0 + MS, MS)
    assert [s.deadline_ns for s in samples] == literal_cyclictest(latencies, T0 + MS, MS)
    assert [s.latency_ns for s in samples] == latencies


def test_a_wake_up_exactly_one_period_late_skips_nothing() -> None:
    samples = cyclictest_samples([10_000, MS, MS + 1, 20_000], T0 + MS, MS)
    # woke at the next deadline itself: not past it, so that deadline is sampled;
    # one ns later and it is skipped
    assert [s.deadline_ns - T0 for s in samples] == [MS, 2 * MS, 3 * MS, 5 * MS]
    assert samples[1].wake_ns == samples[2].deadline_ns


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        cyclictest_samples([10, -1], T0, MS)
    with pytest.raises(ValueError, match="interval"):
        cyclictest_samples([10], T0, 0)
    with pytest.raises(ValueError, match="stall threshold"):
        attribute([], [], BUDGET, 0)


BUDGET = 500_000
THRESHOLD = 100_000
Q = 250_000  # the probe's interval


def probe(first: int, count: int, late: dict[int, int]) -> list[ProbeSample]:
    """A probe released every 250 µs from ``first`` through cyclictest's own rule;
    ``late`` maps a release's number to its latency (else 20 µs)."""
    latencies: list[int] = []
    deadline = first
    while len(latencies) < count:
        number = (deadline - first) // Q
        latencies.append(late.get(number, 20_000))
        wake = deadline + latencies[-1]
        deadline += Q
        while wake > deadline:
            deadline += Q
    return cyclictest_samples(latencies, first, Q)


def test_the_stalled_time_is_the_probe_s_waits_past_the_threshold_clipped() -> None:
    samples = probe(T0, 40, {2: 1_600_000, 20: 99_999, 30: 300_000})
    deadlines = [s.deadline_ns for s in samples]
    # release 2 (T0 + 500 µs) waited 1.6 ms; release 20 is below the threshold
    assert stalled_ns(samples, deadlines, T0, T0 + 10 * MS, THRESHOLD) == 1_900_000
    assert stalled_ns(samples, deadlines, T0 + MS, T0 + 1_500_000, THRESHOLD) == 500_000
    assert stalled_ns(samples, deadlines, T0 + 2_100_000, T0 + 7 * MS, THRESHOLD) == 0
    # with the unseen start of each stall: from the previous wake-up (T0 + 250 µs + 20 µs
    # before release 2; T0 + 7.25 ms + 20 µs before release 30)
    most = stalled_ns(samples, deadlines, T0, T0 + 10 * MS, THRESHOLD, with_gaps=True)
    assert most == 1_900_000 + 230_000 + 230_000


def test_a_stall_that_held_the_probe_off_too_is_the_platform_s() -> None:
    cycle_deadline = T0 + 875_000  # probe releases 125 µs into the cycle's period
    # the vCPU stops from 100 µs before the cycle's release to 2.4 ms after it: the
    # probe's first release inside (T0 + 1 ms) waits to the end; the cycle then works 40 µs
    stall_end = cycle_deadline + 2_400_000
    samples = probe(T0, 40, {4: stall_end - (T0 + MS)})
    miss = Miss(cycle_deadline, stall_end + 40_000 - cycle_deadline)
    result = attribute([miss], samples, BUDGET, THRESHOLD)
    assert [v.miss for v in result.platform] == [miss] and not result.own
    # its own part: at most the 125 µs before the probe's release (not seen) and its
    # 40 µs; at least the 40 µs (the stall may have begun at the probe's last wake-up)
    assert (result.platform[0].own_max_ns, result.platform[0].own_min_ns) == (165_000, 40_000)


def test_a_miss_while_the_probe_ran_on_time_is_the_cycle_s_own() -> None:
    cycle_deadline = T0 + 875_000
    samples = probe(T0, 40, {})  # the probe, at a higher priority, ran every time
    miss = Miss(cycle_deadline, 800_000)  # 800 µs of its own work
    result = attribute([miss], samples, BUDGET, THRESHOLD)
    assert result.own == [Verdict(miss, 800_000, 800_000)] and not result.platform


def test_the_verdict_turns_where_the_bounds_meet_the_budget() -> None:
    cycle_deadline = T0 + 875_000
    # a stall seen from the release at T0 + 1 ms, the probe's last wake-up before at
    # T0 + 770 µs: up to 125 µs more of it (from the cycle's release) went unseen; the
    # response is 800 µs
    for stalled, expected in (
        (300_000, "platform"),  # 800 - 300 fits the budget
        (299_999, "undecided"),  # only with some of the unseen part
        (175_000, "undecided"),  # 800 - 175 - 125 fits it
        (174_999, "own"),  # even with all of the unseen part, more than 500 µs are left
    ):
        samples = probe(T0, 40, {4: stalled})
        result = attribute([Miss(cycle_deadline, 800_000)], samples, BUDGET, THRESHOLD)
        verdicts = {"platform": result.platform, "own": result.own}
        verdicts["undecided"] = result.undecided
        assert [k for k, v in verdicts.items() if v] == [expected], (stalled, result)


def test_a_stall_and_an_overrun_together_are_the_cycle_s_when_the_overrun_alone_misses() -> None:
    cycle_deadline = T0 + 875_000
    # 800 µs of its own work, and a 300 µs stall seen inside the window (with at most
    # 230 µs more unseen before it, from the probe's wake-up at T0 + 1.27 ms): its own
    samples = probe(T0, 40, {6: 300_000})
    result = attribute([Miss(cycle_deadline, 1_100_000)], samples, BUDGET, THRESHOLD)
    assert result.own == [Verdict(Miss(cycle_deadline, 1_100_000), 570_000, 800_000)]


@pytest.mark.parametrize("interval_us", [0, 300, 333, 125])
def test_a_probe_interval_that_does_not_fit_the_period_is_refused_by_name(
    interval_us: int, capsys: pytest.CaptureFixture[str]
) -> None:
    import cycle_latency

    with pytest.raises(SystemExit) as exited:
        cycle_latency.main(["--probe-interval-us", str(interval_us)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--probe-interval-us" in err and f"({interval_us:g} µs)" in err
    pair = cycle_latency.PairedRun(0, 500_000, "none", 100_000, probe_interval_ns=100_000)
    assert (pair.interval_ns, pair.offset_ns) == (100_000, 50_000)
