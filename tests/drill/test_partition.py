"""Short failover drills, one per backend, as a user runs them: tools/partition.py in a
child process, real nodes in network namespaces (as root; and once through loopback
proxies), a real etcd, the real actuator; the drill cleans up after itself and the test
checks that too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mxrc.replay import open_logs, verify

ROOT = Path(__file__).resolve().parents[2]
TTL_S = 2.0  # tools/partition.py's default


def leftovers(out: Path, network_name: str) -> list[str]:
    """Processes still running with the drill's output directory on their command line,
    and the drill's network namespaces or interfaces, if any are still there."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    found = [line for line in ps.stdout.splitlines() if str(out) in line]
    if network_name:
        for command in (["ip", "-o", "link"], ["ip", "netns", "list"]):
            listed = subprocess.run(command, capture_output=True, text=True, check=False)
            found += [line for line in listed.stdout.splitlines() if network_name in line]
    return found


@pytest.mark.drill
@pytest.mark.parametrize(
    ("backend", "network"),
    [("etcd", "auto"), ("peers", "auto"), ("peers", "proxies")],
)
def test_short_drill_finds_no_violation_and_fails_over_in_time(
    tmp_path: Path, backend: str, network: str
) -> None:
    out = tmp_path / "drill"
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "partition.py"), "--backend", backend,
         "--rounds", "3", "--nemesis", "isolate-leader,kill-leader,pause-leader",
         "--seed", "7", "--network", network, "--out", str(out)],
        capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["problems"] == []
    assert report["actuator"]["accepted"] > 0  # the robot was really driven
    assert report["actuator"]["stale_writes_rejected"] == 0
    assert len(report["rounds"]) == 3
    for figures in report["rounds"]:
        # every nemesis here cuts off the leader: another node must take over (how fast
        # is a figure of the soak, tools/soak, not something to time in a test) ...
        assert figures["new_leader"] not in (None, figures["target"]), figures
        assert figures["failover_lease_s"] > 0, figures
        # ... and the target stops driving by itself, at its lease deadline at the latest
        # (renewal start + TTL - margin, so before the TTL even counted from the fault)
        assert figures["target_stopped_s"] <= TTL_S, figures
    assert verify(open_logs([out])).ok
    assert (out / "timeline.html").stat().st_size > 1000
    assert leftovers(out, report["network_name"]) == []
