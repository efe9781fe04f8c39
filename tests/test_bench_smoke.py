"""The benchmark scripts run, and print one JSON object with the figures the README quotes.

Targets are not asserted here: a busy CI runner's disk says nothing about the code.
What is asserted is the contract: exactly one JSON object on stdout, every figure
present and positive, the baseline measured in the same run, and no benchmark on tmpfs
unless asked for (fsync is free there, so the figures would flatter the log).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "tools" / "bench"


def run_bench(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
    )


def only_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # fails if anything but one JSON document is printed
    assert isinstance(result, dict)
    return result


def positive(section: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = section[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)


def test_eventlog_append_quick(tmp_path: Path) -> None:
    result = only_json(run_bench("eventlog_append.py", "--quick", "--dir", str(tmp_path),
                                 "--allow-tmpfs"))
    assert result["benchmark"] == "eventlog_append"
    positive(result, "record_bytes", "seconds_per_measurement", "rounds")
    positive(result["baseline"], "appends_per_s", "appends", "fsync_p50_us", "fsync_p99_us")
    for name, target in (("single_writer", 0.9), ("concurrent_writers", 10.0)):
        section = result[name]
        positive(section, "appends_per_s", "appends", "fsync_p50_us", "fsync_p99_us",
                 "mean_batch", "ratio")
        assert section["target"] == target
        assert isinstance(section["target_met"], bool)
        expected_ratio = section["appends_per_s"] / result["baseline"]["appends_per_s"]
        assert section["ratio"] == pytest.approx(expected_ratio, rel=0.01)
        assert section["fsync_p99_us"] >= section["fsync_p50_us"]
    assert result["single_writer"]["mean_batch"] == 1.0
    assert result["concurrent_writers"]["threads"] == 16
    positive(result["concurrent_async_tasks"], "appends_per_s", "mean_batch", "ratio")
    assert result["target_met"] == (
        result["single_writer"]["target_met"] and result["concurrent_writers"]["target_met"])
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"


def test_replay_read_quick(tmp_path: Path) -> None:
    result = only_json(run_bench("replay_read.py", "--quick", "--dir", str(tmp_path),
                                 "--allow-tmpfs"))
    assert result["benchmark"] == "replay_read"
    assert result["events"] == 100_000
    positive(result, "segments", "log_bytes", "ratio", "target")
    for name in ("project", "baseline"):
        positive(result[name], "events_per_s", "best_seconds")
        assert len(result[name]["runs_seconds"]) == 3
        assert min(result[name]["runs_seconds"]) == result[name]["best_seconds"]
    expected = result["project"]["events_per_s"] / result["baseline"]["events_per_s"]
    assert result["ratio"] == pytest.approx(expected, rel=0.01)
    assert result["target"] == 0.6
    assert isinstance(result["target_met"], bool)
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"


def ram_backed_directory() -> Path:
    """A writable directory on tmpfs, from the real mount table."""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount_point, fstype, *_ = line.split()
        if fstype == "tmpfs" and os.access(mount_point, os.W_OK) and Path(mount_point).is_dir():
            return Path(mount_point)
    raise AssertionError("this Linux host has no writable tmpfs mount to test the refusal on")


@pytest.mark.parametrize("script", ["eventlog_append.py", "replay_read.py"])
def test_benchmarks_refuse_tmpfs(script: str) -> None:
    proc = run_bench(script, "--quick", "--dir", str(ram_backed_directory()))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "tmpfs" in proc.stderr and "--allow-tmpfs" in proc.stderr


def test_boot_time_benchmark_reports_both_variants() -> None:
    out = run_bench("boot_time.py", "--runs", "1", timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for variant in ("default_dependencies", "default_dependencies_no"):
        assert 0 < result[variant]["min_s"] <= result[variant]["max_s"] < 30
    assert result["ratio_no_default_dependencies"] > 0


def test_logging_overhead_benchmark_measures_both_entrances_in_one_run() -> None:
    result = only_json(run_bench("logging_overhead.py", "--quick", timeout=120))
    assert result["records_per_cycle"] == 10 and result["period_ms"] == 10.0
    positive(result["none"]["exec"], "median_us", "mean_us", "p99_us")
    for entrance in ("stdlib", "cycle_logger"):
        measured = result[entrance]
        positive(measured["exec"], "median_us", "mean_us", "p99_us")
        assert measured["records_logged"] > 0
        low, high = measured["added_exec_us_per_cycle_quartiles"]
        assert low <= measured["added_exec_us_per_cycle"] <= high
        # every record of each entrance reached the file (the queue never filled here)
        assert measured["records_written"] == measured["records_logged"]
    assert result["records_dropped"] == 0
    positive(result["formatter"], "mxrc_orjson_us", "ecs_logging_us")
    assert isinstance(result["target_met"], bool)


def test_tracing_cost_benchmark_reports_each_ratio_against_no_tracing() -> None:
    result = only_json(run_bench("tracing_cost.py", "--quick", timeout=120))
    assert set(result["bus_event_us"]) == {"none", "0", "0.01", "1"}
    positive(result["bus_event_us"], "none", "0", "0.01", "1")
    exported = result["spans_exported"]
    assert exported["0"] == 0 < exported["0.01"] < exported["1"]  # the sampler decided
