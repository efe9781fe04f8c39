"""The unit metrics exporter's pure half: ``systemctl show`` parsing and the families
(the real scrape under a running systemd is in test_under_systemd.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mxrc.systemd.monitor import Placement, UnitFacts, UnitSampler, families, parse_show

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
