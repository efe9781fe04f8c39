"""The cycle-latency benchmark runs end to end and prints the JSON it promises.

Only the shape and the internal consistency of the report are asserted: whether the
targets are met depends on the machine, which is what the full benchmark is for.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench" / "cycle_latency.py"


@pytest.mark.slow
def test_cycle_latency_quick() -> None:
    if shutil.which("cyclictest") is None:
        pytest.skip("cyclictest not installed (apt-get install rt-tests)")
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(proc.stdout)  # exactly one JSON object on standard output
    assert report["seconds"] == 5.0 and report["period_us"] == 1000
    cycle, ct = report["cycle"], report["cyclictest"]
    assert "error" not in ct, ct
    for figures in (cycle, ct):
        assert figures["p50_us"] <= figures["p99_us"] <= figures["p99.9_us"] <= figures["max_us"]
        assert figures["misses"] >= 0
        tail = list(figures["wake_at_least_us"].values())
        assert tail == sorted(tail, reverse=True)  # fewer samples past each higher threshold
    assert cycle["wake_at_least_us"]["500"] == cycle["wake_misses"]
    assert ct["wake_at_least_us"]["500"] == ct["misses"]  # the default budget: 500 µs
    assert ct["samples"] == 5000
    # two 2.5 s blocks, each side first once
    assert report["blocks"] == 2
    assert "block 1/2: mxrc cycle then cyclictest" in proc.stderr
    assert "block 2/2: cyclictest then mxrc cycle" in proc.stderr
    assert cycle["samples"] + cycle["skipped_periods"] >= 4990  # ~5000 periods in 5 s
    assert cycle["fault"] is None
    assert report["ratios"]["p99_us"] == pytest.approx(cycle["p99_us"] / ct["p99_us"], abs=1e-3)
    targets = report["targets"]
    assert targets["p99_us_max"] == pytest.approx(1.5 * ct["p99_us"])
    assert report["target_met"] == (targets["p99_met"] and targets["misses_met"])
    comparison = report["misses_comparison"]
    assert 0 <= comparison["p_value_cycle_more"] <= 1 and comparison["reading"]
    # the blocks' counts add up to the totals the targets compare
    blocks = comparison["blocks"]
    assert [b["first"] for b in blocks] == ["mxrc cycle", "cyclictest"]
    assert sum(b["cycle"] for b in blocks) == cycle["misses"]
    assert sum(b["cycle_wake"] for b in blocks) == cycle["wake_misses"]
    assert sum(b["cyclictest"] for b in blocks) == ct["misses"]
    assert 0 <= comparison["p_value_cycle_more_by_block"] <= 1
    assert comparison["wake_rule"]["cycle"] == cycle["wake_misses"]
    for b in blocks:  # each block's own p99s, which bracket the run's
        assert b["cycle_p99_us"] > 0 and b["cyclictest_p99_us"] > 0
    assert min(b["cyclictest_p99_us"] for b in blocks) <= ct["p99_us"]
    assert ct["p99_us"] <= max(b["cyclictest_p99_us"] for b in blocks)
    assert report["p99_by_block"]["blocks"] == 2

    together = report["same_time"]  # the cycle beside cyclictest -p 80 -i 1000, 5 s
    assert "error" not in together, together
    assert f"-m -p 80 -a {report['cpu']} -t 1 -i 1000 " in together["command"]
    beside, reference = together["cycle"], together["cyclictest"]
    assert beside["fault"] is None and beside["samples"] >= 4990
    assert abs(reference["samples"] - beside["samples"]) <= 2  # the same 5 s
    assert beside["wake_misses"] <= beside["misses"]  # the work can only add misses
    assert together["misses_met"] == (beside["misses"] <= reference["misses"])
    assert together["wake_misses_met"] == (beside["wake_misses"] <= reference["misses"])

    paired = report["paired"]  # the cycle and the probe together, 5 s
    assert "error" not in paired, paired
    assert paired["cycle"]["fault"] is None
    assert paired["cycle"]["samples"] + paired["cycle"]["skipped_periods"] >= 4990
    assert paired["probe"]["samples"] >= 19_000  # released every 250 µs while the cycle ran
    verdicts = paired["attribution"]
    assert verdicts["attributed"] == verdicts["misses"] == paired["cycle"]["misses"]
    assert verdicts["platform"] + verdicts["own"] + verdicts["undecided"] == verdicts["attributed"]
    assert paired["own_misses_met"] == (verdicts["own"] == 0)
