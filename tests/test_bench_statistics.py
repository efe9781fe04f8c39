"""The benchmarks' statistical rules, checked against exact arithmetic: comparing two
rare-event counts (deadline misses of the cycle and of cyclictest) by a p-value, not by
which number happens to be larger, once as Poisson counts and once block by block."""

from __future__ import annotations

import sys
from fractions import Fraction
from itertools import product
from math import comb
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))

from benchutil import excess_p_value, paired_excess_p_value


def exact_tail(ours: int, theirs: int, p: Fraction) -> Fraction:
    n = ours + theirs
    return sum(
        (comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(ours, n + 1)), Fraction(0)
    )


@pytest.mark.parametrize(
    ("ours", "theirs", "ours_exposure", "theirs_exposure"),
    [(3, 1, 1, 1), (18, 13, 59_957, 60_000), (46, 36, 1, 1), (5, 9, 2, 3), (0, 4, 1, 1)],
)
def test_the_tail_is_the_exact_binomial_one(
    ours: int, theirs: int, ours_exposure: int, theirs_exposure: int
) -> None:
    p = Fraction(ours_exposure, ours_exposure + theirs_exposure)
    expected = float(exact_tail(ours, theirs, p))
    assert excess_p_value(ours, ours_exposure, theirs, theirs_exposure) == pytest.approx(
        expected, rel=1e-9
    )


def test_equal_counts_are_not_an_excess_and_a_real_one_is() -> None:
    assert excess_p_value(52, 180_000, 52, 180_000) > 0.4
    assert excess_p_value(46, 60_000, 36, 60_000) > 0.05  # the README's once "not met" run
    assert excess_p_value(80, 60_000, 40, 60_000) < 0.001
    # large counts (a loaded machine) stay finite: logs, not factorials
    assert 0.4 < excess_p_value(5_000, 1, 5_000, 1) < 0.6


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="exposures > 0"):
        excess_p_value(1, 0, 1, 1)
    with pytest.raises(ValueError, match="counts must be"):
        excess_p_value(-1, 1, 1, 1)


def brute_force_sign_flip(pairs: list[tuple[int, int]]) -> Fraction:
    differences = [a - b for a, b in pairs]
    observed = sum(differences)
    sums = [sum(s * d for s, d in zip(signs, differences, strict=True)) for signs in
            product((1, -1), repeat=len(differences))]  # fmt: skip
    return Fraction(sum(1 for s in sums if s >= observed), len(sums))


@pytest.mark.parametrize(
    "pairs",
    [
        [(3, 1), (2, 2), (0, 4), (5, 1)],
        [(7, 3), (4, 5), (6, 6), (9, 2), (1, 0), (0, 3), (12, 11)],
        [(0, 2), (1, 3)],
        [(1, 0)],
    ],
)
def test_the_block_test_is_the_exact_sign_flip_one(pairs: list[tuple[int, int]]) -> None:
    assert paired_excess_p_value(pairs) == pytest.approx(float(brute_force_sign_flip(pairs)))


def test_a_burst_in_one_block_is_not_read_as_a_difference_of_rates() -> None:
    burst = [(24, 4), (3, 3), (2, 3), (3, 2), (4, 4), (3, 4)]  # one bad block
    ours = sum(a for a, _ in burst)
    theirs = sum(b for _, b in burst)
    assert excess_p_value(ours, 1, theirs, 1) < 0.01  # the counts alone say "worse"
    assert paired_excess_p_value(burst) > 0.2  # one block of six does not
    # while an excess in every block is one
    assert paired_excess_p_value([(5, 2)] * 8) == pytest.approx(1 / 256)
    assert paired_excess_p_value([(2, 5)] * 8) == 1.0
    assert paired_excess_p_value([(4, 4)] * 3) == 1.0


def test_bad_block_counts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"counts must be ≥ 0, got \(-1, 2\)"):
        paired_excess_p_value([(1, 1), (-1, 2)])


def figures(misses: int, wake_misses: int | None = None) -> dict[str, Any]:
    """The parts of a side's figures that ``comparison`` reads."""
    out: dict[str, Any] = {"samples": 60_000, "skipped_periods": 0, "misses": misses}
    out.update(dict.fromkeys(("p50_us", "p99_us", "p99.9_us", "max_us"), 50.0))
    if wake_misses is not None:
        out["wake_misses"] = wake_misses
    return out


def blocks(pairs: list[tuple[int, int]], p99_us: tuple[float, float] = (50, 50)) -> list[
    dict[str, Any]
]:
    return [
        {"first": "mxrc cycle" if i % 2 == 0 else "cyclictest", "cycle": ours,
         "cycle_wake": ours, "cyclictest": theirs, "cycle_p99_us": p99_us[0],
         "cyclictest_p99_us": p99_us[1]}
        for i, (ours, theirs) in enumerate(pairs)
    ]  # fmt: skip


def test_the_benchmark_reads_its_counts_block_by_block() -> None:
    import cycle_latency

    burst = blocks([(24, 4), (3, 3), (2, 3), (3, 2), (4, 4), (3, 4)])
    report = cycle_latency.comparison(figures(39, 39), figures(20), burst)
    misses = report["misses_comparison"]
    assert not report["targets"]["misses_met"]  # the literal target still says so
    assert misses["p_value_cycle_more"] < 0.05 < misses["p_value_cycle_more_by_block"]
    assert "within the blocks' own variation" in misses["reading"]
    assert (misses["blocks_cycle_more"], misses["blocks_cyclictest_more"]) == (2, 2)

    assert report["p99_by_block"] == {"met": 6, "blocks": 6}

    steady = blocks([(6, 2)] * 6, p99_us=(80, 50))  # p99 over 1.5× in every block
    report = cycle_latency.comparison(figures(36, 30), figures(12), steady)
    misses = report["misses_comparison"]
    assert misses["p_value_cycle_more_by_block"] == pytest.approx(1 / 64, abs=1e-4)
    assert misses["reading"].startswith("the cycle misses more often than cyclictest")
    assert misses["wake_rule"]["cycle"] == 30 and misses["wake_rule"]["cyclictest"] == 12
    assert report["p99_by_block"] == {"met": 0, "blocks": 6}
