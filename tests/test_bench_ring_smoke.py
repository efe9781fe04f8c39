"""The ring benchmark runs end to end and reports what it claims to report.

Only the shape and internal consistency of the result are checked, not the figures: the
numbers depend on the machine, and the benchmark is how they are measured, not this test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ring_benchmark_quick_run_prints_one_consistent_json_object() -> None:
    with subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "bench" / "ring_throughput.py"), "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as bench:
        try:
            stdout, stderr = bench.communicate(timeout=120)
        finally:
            bench.kill()
    assert bench.returncode == 0, stderr
    report = json.loads(stdout)  # exactly one JSON document on stdout
    for transport in ("ring", "ring_python", "queue", "pipe"):
        figures = report[transport]
        assert figures["msgs_per_s"] > 0
        assert figures["latency_samples"] > 0
        assert 0 < figures["latency_p50_us"] <= figures["latency_p99_us"]
        assert figures["latency_p99_us"] <= figures["latency_max_us"]
    assert report["queue"]["dropped"] == report["pipe"]["dropped"] == 0
    assert report["ring"]["implementation"] == "native"  # ring_python is the reference
    ratio = report["ring"]["msgs_per_s"] / report["queue"]["msgs_per_s"]
    assert math.isclose(report["ratios"]["ring_vs_queue_msgs_per_s"], ratio, rel_tol=0.01)
    assert isinstance(report["target_met"], bool) and "20" in report["target"]
    if abs(ratio - 20) > 0.5:  # away from the rounding boundary
        assert report["target_met"] is (ratio >= 20)
    leftovers = [p.name for p in Path("/dev/shm").glob(f"mxrc-bench-{bench.pid}-*")]
    assert leftovers == [], "the benchmark left shared memory segments behind"
