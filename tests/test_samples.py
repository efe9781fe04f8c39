"""The sample logs in events/ stay valid under the current catalogue and charts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mxrc.catalog import load_catalogue
from mxrc.eventlog import read_records
from mxrc.resources import data_dir
from mxrc.statechart import default_registry

SAMPLES = data_dir("events") / "samples"
MXRC = [sys.executable, "-m", "mxrc"]


@pytest.mark.parametrize("log_dir", sorted(SAMPLES.glob("*/*/eventlog")), ids=str)
def test_every_sample_record_matches_the_catalogue_and_a_known_chart(log_dir: Path) -> None:
    catalogue = load_catalogue()
    records = list(read_records(log_dir))
    assert records
    for record in records:
        assert catalogue.problems(record) == [], record
        default_registry().get(record["chart"], record["chart_hash"])


def test_crash_sample_verifies_and_shows_the_restart_fault() -> None:
    out = subprocess.run([*MXRC, "replay", str(SAMPLES / "crash-restart"), "--verify"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    listing = subprocess.run([*MXRC, "replay", str(SAMPLES / "crash-restart"), "--type",
                              "transition", "--format", "jsonl"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    assert '"cause":"restart"' in listing


def test_overlap_sample_fails_verification_naming_both_nodes() -> None:
    out = subprocess.run([*MXRC, "replay", str(SAMPLES / "two-nodes-overlap"), "--verify"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "node-1 and node-2 were both RUNNING" in out.stdout + out.stderr
