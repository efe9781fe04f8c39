"""Short failover drills, one per backend, as a user runs them: tools/partition.py in a
child process, real nodes, a real etcd on loopback ports, the real actuator; the drill
cleans up after itself and the test checks that too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mxrc.replay import open_logs, verify

ROOT = Path(__file__).resolve().parents[2]
TTL_S, RENEW_S = 2.0, 0.5


def leftover_processes(out: Path) -> list[str]:
    """Processes still running with the drill's output directory on their command line."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if str(out) in line]


@pytest.mark.drill
@pytest.mark.parametrize(
    ("backend", "nemeses"),
    [
        ("etcd", "isolate-leader,kill-leader,pause-leader"),
        ("peers", "isolate-leader,kill-leader,pause-leader"),
    ],
)
def test_short_drill_finds_no_violation_and_fails_over_in_time(
    tmp_path: Path, backend: str, nemeses: str
) -> None:
    out = tmp_path / "drill"
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "partition.py"), "--backend", backend,
         "--rounds", "3", "--nemesis", nemeses, "--seed", "7", "--out", str(out)],
        capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["problems"] == []
    assert report["actuator"]["accepted"] > 0  # the robot was really driven
    assert report["actuator"]["stale_writes_rejected"] == 0
    assert len(report["rounds"]) == 3
    for figures in report["rounds"]:
        # every nemesis here cuts off the leader: another node must take over in time
        assert figures["new_leader"] not in (None, figures["target"]), figures
        assert figures["failover_lease_s"] <= TTL_S + RENEW_S + 0.5, figures
        assert figures["target_stopped_s"] <= TTL_S, figures  # it stopped on its own
    assert verify(open_logs([out])).ok
    assert (out / "timeline.html").stat().st_size > 1000
    assert leftover_processes(out) == []
