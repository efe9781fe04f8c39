"""The benchmarks' one statistical rule, checked against exact arithmetic: comparing two
rare-event counts (deadline misses of the cycle and of cyclictest) by a p-value, not by
which number happens to be larger."""

from __future__ import annotations

import sys
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))

from benchutil import excess_p_value


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
