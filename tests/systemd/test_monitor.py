"""The unit metrics exporter: ``systemctl show`` parsing and the families, what it says
when systemctl fails, and the real process (the real scrape under a running systemd is
in test_under_systemd.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mxrc.drill.ports import free_ports
from mxrc.systemd.monitor import Placement, UnitFacts, UnitSampler, families, parse_show

#: ``systemctl`` aimed at a container that does not exist: it fails on any machine,
#: with or without systemd as PID 1, and says why on stderr.
FAILING_SYSTEMCTL = ("systemctl", "--machine=mxrc-no-such-machine")

SHOW = """Id=mxrc-nonrt.service
ActiveState=active
NRestarts=2
CPUUsageNSec=1500000000
MemoryCurrent=52428800
MainPID=4242

Id=mxrc-rt.service
ActiveState=failed
NRestarts=3
CPUUsageNSec=[not set]
MemoryCurrent=18446744073709551615
MainPID=0
"""


def test_show_blocks_become_facts_and_unaccounted_values_are_none() -> None:
    nonrt, rt = parse_show(SHOW)
    assert nonrt == UnitFacts("mxrc-nonrt.service", "active", 2, 1_500_000_000, 52428800, 4242)
    assert rt == UnitFacts("mxrc-rt.service", "failed", 3, None, None, 0)


def test_families_are_one_hot_states_counters_and_placement() -> None:
    facts = parse_show(SHOW)
    registry = CollectorRegistry()

    sampler = UnitSampler(["mxrc-nonrt.service", "mxrc-rt.service"])
    sampler.facts = facts  # as a refresh would have left them
    sampler.placement = {"mxrc-nonrt.service": Placement(900, 100, 0.1)}
    registry.register(sampler)
    text = generate_latest(registry).decode()
    assert 'systemd_unit_state{name="mxrc-rt.service",state="failed"} 1.0' in text
    assert 'systemd_unit_state{name="mxrc-rt.service",state="active"} 0.0' in text
    assert 'systemd_unit_restart_total{name="mxrc-rt.service"} 3.0' in text
    assert 'systemd_unit_cpu_seconds_total{name="mxrc-nonrt.service"} 1.5' in text
    assert 'systemd_unit_cpu_seconds_total{name="mxrc-rt.service"}' not in text  # not accounted
    assert 'systemd_unit_memory_bytes{name="mxrc-nonrt.service"} 5.24288e+07' in text
    assert 'mxrc_numa_remote_ratio{name="mxrc-nonrt.service"} 0.1' in text
    assert len(list(families(facts, {}))) == 6


def scrape(sampler: UnitSampler) -> str:
    registry = CollectorRegistry()
    registry.register(sampler)
    return generate_latest(registry).decode()


def test_a_failing_systemctl_is_exported_and_logged_once_until_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sampler = UnitSampler(["mxrc-rt.service"], systemctl=FAILING_SYSTEMCTL)
    with caplog.at_level(logging.INFO, logger="mxrc.monitor"):
        sampler.refresh()
        sampler.refresh()
    assert sampler.error  # systemctl's own words
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and sampler.error in warnings[0].getMessage()
    text = scrape(sampler)
    assert "mxrc_monitor_systemctl_up 0.0" in text
    assert "systemd_unit_state{" not in text

    caplog.clear()
    # /bin/true stands in for a systemctl that works again (exit 0, no units shown)
    sampler.systemctl = ["true"]
    with caplog.at_level(logging.INFO, logger="mxrc.monitor"):
        sampler.refresh()
        sampler.refresh()
    assert sampler.error == ""
    assert [r.getMessage() for r in caplog.records] == [
        "`systemctl show` works again: exporting 0 units"
    ]
    assert "mxrc_monitor_systemctl_up 1.0" in scrape(sampler)


def test_the_monitor_process_logs_what_it_exports_and_whether_systemctl_works() -> None:
    """The real ``mxrc monitor``, wherever it runs: its log and its gauge must agree."""
    (port,) = free_ports(1)
    env = {**os.environ, "NOTIFY_SOCKET": "", "JOURNAL_STREAM": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mxrc", "monitor", "--port", str(port)],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "never served"
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert "exporting 3 units on 127.0.0.1:" in stderr and "stopping" in stderr
    up = "mxrc_monitor_systemctl_up 1.0" in text
    assert up or "mxrc_monitor_systemctl_up 0.0" in text, text
    assert ("`systemctl show` failed" in stderr) is not up, stderr
