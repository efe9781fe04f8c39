"""The rendered units under a real systemd (252, booted in namespaces for the test):
mxrc.target comes up, the cycle runs SCHED_FIFO on its CPU, a frozen cycle is
restarted by the watchdog and the node comes back in SAFE_MODE, stopping nonrt stops
rt, and a crash loop ends at StartLimitBurst with the hand-off unit run.

Accommodations of the test machine, named here: the units run as root (no ``mxrc``
user exists on a test machine; tools/install creates it in production); the data
directory is created first (tools/install does that too: ReadWritePaths= needs it);
and when the interpreter or the code under test lives below /root, /home or /tmp
(a developer's pyenv, a checkout in /tmp) the units get ``ProtectHome=read-only``
and ``PrivateTmp=no`` appended, since those settings would hide the code from the
service. In production the code is in /opt/mxrc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mxrc
from mxrc.config import load_config
from mxrc.drill.ports import free_ports
from mxrc.eventlog import read_records
from mxrc.systemd.sandbox import relax_for_code_location
from mxrc.systemd.units import host_placement, load_templates, render, unit_values
from tests.configs import TOLERANT_TIMING, Sections, merged, toml_text
from tests.systemd.namespaced import NamespacedSystemd, namespaced_systemd

RT_PRIORITY = 80


def until(what: Callable[[], object], timeout_s: float, why: str) -> float:
    start = time.monotonic()
    while not what():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {why}")
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.fixture
def node() -> Iterator[tuple[NamespacedSystemd, Path]]:
    work = Path(f"/var/lib/mxrc-systemd-test-{os.getpid()}")  # outside /tmp on purpose
    work.mkdir(parents=True, exist_ok=False)
    try:
        (work / "var").mkdir()
        config_path = work / "mxrc.toml"
        api_port, monitor_port = free_ports(2)
        own: Sections = {
            "node": {"data_dir": str(work / "var")},
            "rt": {"shm_prefix": f"mxrc-sd{os.getpid()}", "priority": RT_PRIORITY},
            "api": {"port": api_port},
            "systemd": {
                "user": "root", "group": "root", "watchdog_s": 2.0, "restart_sec": 1.0,
                "start_limit_burst": 3, "start_limit_interval_s": 60.0,
                "monitor_port": monitor_port,
            },
        }  # fmt: skip
        # the faults under test are the RT process's, not the VM's stalls (tests.configs)
        config_path.write_text(toml_text(merged(TOLERANT_TIMING, own)))
        config = load_config(config_path)
        units = render(load_templates(), unit_values(config, config_path, host_placement(config)))
        relax_for_code_location(
            units, [Path(mxrc.__file__).resolve(), Path(sys.executable).resolve(), Path(sys.prefix)]
        )
        units.pop("journald-mxrc.conf")
        with namespaced_systemd(work / "systemd", units) as system:
            yield system, work
    finally:
        for path in sorted(work.rglob("*"), key=lambda p: -len(p.parts)):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
        work.rmdir()


def journal_entries(system: NamespacedSystemd, *args: str) -> list[dict[str, str]]:
    """``journalctl -o json`` entries (``--all``: long fields are not elided)."""
    lines = system.journal(*args, "-o", "json", "--all").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def api(work: Path, path: str, method: str = "GET") -> dict[str, object]:
    info = json.loads((work / "var" / "nonrt.json").read_text())
    token = Path(info["token_file"]).read_text().strip()
    request = urllib.request.Request(
        info["api"] + path, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        result: dict[str, object] = json.loads(r.read())
        return result


def state(work: Path) -> object:
    try:
        return api(work, "/v1/state")["state"]
    except (OSError, ValueError):
        return None


def active(system: NamespacedSystemd, *units: str) -> bool:
    return all(
        system.systemctl("is-active", u, check=False).stdout.strip() == "active" for u in units
    )


def fifo_threads(pid: int) -> dict[int, tuple[int, set[int]]]:
    """SCHED_FIFO threads of ``pid``: tid → (priority, affinity), as the host sees them."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        t = int(tid)
        if os.sched_getscheduler(t) == os.SCHED_FIFO:
            found[t] = (os.sched_getparam(t).sched_priority, os.sched_getaffinity(t))
    return found


def test_units_run_under_a_real_systemd(node: tuple[NamespacedSystemd, Path]) -> None:
    system, work = node
    started = time.monotonic()
    system.systemctl("start", "mxrc.target")
    until(lambda: active(system, "mxrc-nonrt.service", "mxrc-rt.service"), 10, "both active")
    assert time.monotonic() - started <= 10  # systemctl start included

    # the cycle thread: SCHED_FIFO 80 on the RT CPU, from the host's point of view
    rt_pid = system.host_pid("mxrc-rt.service")
    rt_cpu = host_placement(load_config(work / "mxrc.toml")).rt_cpu
    until(lambda: fifo_threads(rt_pid), 5, "a SCHED_FIFO thread in mxrc rt")
    assert (RT_PRIORITY, {rt_cpu}) in fifo_threads(rt_pid).values()
    # every thread inherits the unit's CPUSchedulingPriority; all but the cycle go to 1,
    # so that none shares the cycle's priority on its CPU
    def priorities() -> list[int]:
        return sorted(priority for priority, _ in fifo_threads(rt_pid).values())

    until(lambda: set(priorities()[:-1]) == {1}, 5, "the other threads at SCHED_FIFO 1")
    assert priorities()[-1] == RT_PRIORITY, priorities()

    until(lambda: state(work) == "READY", 15, "the node READY")
    api(work, "/v1/commands/start", "POST")
    until(lambda: state(work) == "RUNNING", 5, "RUNNING")

    # a frozen cycle: the watchdog (2 s) restarts mxrc-rt; the node comes back in SAFE_MODE
    os.kill(rt_pid, signal.SIGSTOP)
    until(lambda: int(system.show("mxrc-rt.service", "NRestarts")["NRestarts"]) >= 1, 15,
          "a watchdog restart")  # fmt: skip
    until(lambda: active(system, "mxrc-rt.service"), 10, "mxrc-rt active again")
    assert "watchdog" in system.journal("-u", "mxrc-rt.service").lower()
    view = api(work, "/v1/state")
    assert view["state"] == "SAFE_MODE", view
    assert str(view["cause"]).startswith("rt_"), view  # rt_lost or rt_restart, journalled

    # journald has the services' lines with their unit, as structured entries sent over
    # the native protocol (stderr is the journal, so the processes switch to it)
    entries = journal_entries(system, "-u", "mxrc-nonrt.service")
    assert any(
        e.get("_SYSTEMD_UNIT") == "mxrc-nonrt.service" and "admin API" in str(e.get("MESSAGE"))
        and e.get("_TRANSPORT") == "journal" and e.get("SYSLOG_IDENTIFIER") == "mxrc-nonrt"
        and e.get("PRIORITY") == "6" and e.get("MXRC_NODE") == "node-1"
        for e in entries
    )
    # field filters: the transition into SAFE_MODE, with its state, token and trace
    into_safe = journal_entries(system, "-u", "mxrc-nonrt.service", "MXRC_RT_STATE=SAFE_MODE")
    fault = [e for e in into_safe if "→ SAFE_MODE" in str(e.get("MESSAGE"))]
    assert fault and fault[0]["ECS_VERSION"] and fault[0]["LOGGER"] == "mxrc.nonrt", into_safe
    went = [e for e in entries if str(e.get("MESSAGE")).startswith("start: READY → RUNNING")]
    assert went and len(went[0]["TRACE_ID"]) == 32 and went[0]["MXRC_LEASE_TOKEN"], went
    # the RT process's own lines, and the cycle's (through the ring, logged by nonrt)
    rt_entries = journal_entries(system, "-u", "mxrc-rt.service")
    rt_start = [e for e in rt_entries if str(e.get("MESSAGE")).startswith("mxrc rt: node")]
    assert rt_start and all(
        e["SYSLOG_IDENTIFIER"] == "mxrc-rt" and e["PRIORITY"] == "6"
        and e["_TRANSPORT"] == "journal" and e["MXRC_NODE"] == "node-1" for e in rt_start
    ), rt_start
    assert any(str(e.get("MESSAGE")).startswith("RT cycle") and e.get("MXRC_RT_CYCLE")
               for e in entries)  # fmt: skip
    # -p err: errors only (the RT process going silent is one), none of the info lines
    errors = journal_entries(system, "-u", "mxrc-nonrt.service", "-p", "err")
    assert errors and all(int(e["PRIORITY"]) <= 3 for e in errors), errors
    assert any("RT process silent" in str(e.get("MESSAGE")) for e in errors), errors
    rt_errors = journal_entries(system, "-u", "mxrc-rt.service", "-p", "err")
    assert all(int(e["PRIORITY"]) <= 3 for e in rt_errors), rt_errors
    assert not any(e.get("MESSAGE") == rt_start[0]["MESSAGE"] for e in rt_errors)

    # the unit metrics exporter sees the same (and promtool accepts what it serves)
    port = load_config(work / "mxrc.toml")["systemd.monitor_port"]
    until(lambda: active(system, "mxrc-monitor.service"), 10, "the monitor active")

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text: str = r.read().decode()
                return text
        except OSError:
            return ""

    expected = (
        'systemd_unit_restart_total{name="mxrc-rt.service"} 1.0',  # the watchdog restart
        'systemd_unit_state{name="mxrc-rt.service",state="active"} 1.0',
        'systemd_unit_state{name="mxrc-nonrt.service",state="failed"} 0.0',
        'mxrc_numa_remote_ratio{name="mxrc-rt.service"} 0.0',  # one NUMA node here
    )
    until(lambda: all(e in scrape() for e in expected), 10, f"the metrics: {expected}")
    metrics = scrape()
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run tools/setup (Debian package prometheus)")
    lint = subprocess.run(["promtool", "check", "metrics"], input=metrics, text=True,
                          capture_output=True, check=False)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # Requires=: stopping nonrt stops rt
    system.systemctl("stop", "mxrc-nonrt.service")
    until(lambda: not active(system, "mxrc-rt.service"), 15, "mxrc-rt stopped with nonrt")


def test_a_planned_restart_of_the_target_comes_back_ready(
    node: tuple[NamespacedSystemd, Path],
) -> None:
    """The operator's planned stop: ``mxrc command stop``, then ``systemctl restart
    mxrc.target``. systemd stops mxrc-rt first (cleanly, the node READY), then nonrt;
    both come back and the node is READY, with no fault journalled and no reset needed."""
    system, work = node
    system.systemctl("start", "mxrc.target")
    until(lambda: active(system, "mxrc-nonrt.service", "mxrc-rt.service"), 10, "both active")
    until(lambda: state(work) == "READY", 15, "the node READY")
    api(work, "/v1/commands/start", "POST")
    until(lambda: state(work) == "RUNNING", 5, "RUNNING")
    api(work, "/v1/commands/stop", "POST")
    until(lambda: state(work) == "READY", 5, "READY again")
    first_nonrt = system.host_pid("mxrc-nonrt.service")
    system.systemctl("restart", "mxrc.target")
    until(lambda: active(system, "mxrc-nonrt.service", "mxrc-rt.service")
          and system.host_pid("mxrc-nonrt.service") not in (0, first_nonrt), 20,
          "both restarted")  # fmt: skip
    until(lambda: state(work) == "READY", 20, "the node READY after the restart")
    api(work, "/v1/commands/start", "POST")  # no reset: start is allowed as it is
    until(lambda: state(work) == "RUNNING", 10, "RUNNING after the restart")
    moves = [
        (r["payload"]["trigger"], r["payload"]["dest"])
        for r in read_records(work / "var" / "eventlog")
        if r["type"] == "transition"
    ]
    assert not [m for m in moves if m[1] == "SAFE_MODE"], moves


def test_a_crash_loop_stops_at_the_burst_and_hands_over(
    node: tuple[NamespacedSystemd, Path],
) -> None:
    system, work = node
    system.systemctl("start", "mxrc.target")
    until(lambda: active(system, "mxrc-nonrt.service", "mxrc-rt.service"), 10, "both active")
    until(lambda: state(work) == "READY", 15, "the node READY")
    for _ in range(6):  # more kills than StartLimitBurst=3 allows restarts
        pid = system.host_pid("mxrc-rt.service")
        if pid:
            os.kill(pid, signal.SIGKILL)
        time.sleep(1.5)
    until(lambda: system.systemctl("is-failed", "mxrc-rt.service", check=False).stdout.strip()
          == "failed", 20, "mxrc-rt failed for good")  # fmt: skip
    restarts = int(system.show("mxrc-rt.service", "NRestarts")["NRestarts"])
    assert restarts <= 3
    until(lambda: "mxrc-failover@" in system.systemctl("list-units", "--all", "--no-legend",
          "mxrc-failover@*").stdout, 10, "the hand-off unit ran")  # fmt: skip
    handed_over = system.journal("-u", "mxrc-failover@*")
    assert "already in SAFE_MODE" in handed_over or "→ SAFE_MODE" in handed_over, handed_over
    # nonrt stays up to say why (its watchdog does not punish it for a dead rt)
    time.sleep(3)
    assert active(system, "mxrc-nonrt.service")
    assert int(system.show("mxrc-nonrt.service", "NRestarts")["NRestarts"]) == 0
    view = api(work, "/v1/state")
    assert view["state"] == "SAFE_MODE" and not view["leader"], view  # stepped down
