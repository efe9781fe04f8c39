"""CPU isolation, preemption and NUMA findings: fixture text, then this machine for real."""

from __future__ import annotations

import ctypes.util
import os
import threading
from pathlib import Path

import pytest

from mxrc.rt import cpu
from mxrc.rt.cpu import (
    Cmdline,
    Machine,
    NumaPages,
    Preemption,
    check,
    format_cpulist,
    parse_cmdline,
    parse_cpulist,
    parse_kconfig,
    parse_numa_maps,
    parse_preemption,
)

DEBIAN_RT_CMDLINE = (
    "BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-rt-amd64 root=UUID=0f1e ro quiet "
    "isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1 "
    'preempt=full systemd.unit="multi-user.target" -- nohz_full=0 init-arg'
)

NUMA_MAPS = """\
55d0c8a00000 default file=/usr/bin/python3.11 mapped=120 N0=100 N1=20 kernelpagesize_kB=4
7f3a00000000 bind:0 anon=512 dirty=512 N0=512 kernelpagesize_kB=4
7f3b00000000 default anon=3 dirty=3 N1=3 kernelpagesize_kB=2048
7f3c00000000 default
7ffd1c000000 default stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4
"""


def test_cpulist_syntax() -> None:
    assert parse_cpulist("0-3,5") == {0, 1, 2, 3, 5}
    assert parse_cpulist(" 7\n") == {7}
    assert parse_cpulist("") == frozenset()
    assert parse_cpulist("0-7:2/4") == {0, 1, 4, 5}
    with pytest.raises(ValueError, match="bad CPU range"):
        parse_cpulist("5-2")
    assert format_cpulist({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert parse_cpulist(format_cpulist({3, 9, 10, 11})) == {3, 9, 10, 11}


def test_cmdline_isolation_parameters() -> None:
    c = parse_cmdline(DEBIAN_RT_CMDLINE)
    assert c.isolcpus == {2, 3}
    assert c.isolcpus_flags == {"managed_irq", "domain"}
    assert c.nohz_full == {2, 3}  # the nohz_full=0 after "--" belongs to init
    assert c.rcu_nocbs == {2, 3} and not c.rcu_nocbs_all
    assert c.irqaffinity == frozenset({0, 1})
    assert c.preempt == "full"
    bare = parse_cmdline("ro rcu_nocbs isolcpus=4")
    assert bare.rcu_nocbs_all and bare.isolcpus == {4} and bare.isolcpus_flags == frozenset()
    none = parse_cmdline("ro quiet")
    assert none.isolcpus == frozenset() and none.irqaffinity is None and none.preempt is None


def test_preemption_sources_in_priority_order() -> None:
    dyn = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"
    assert parse_preemption("none voluntary (full) lazy\n", None, dyn, "none", {}) == Preemption(
        "full", True, "/sys/kernel/debug/sched/preempt"
    )
    assert parse_preemption(None, "1\n", "#1 SMP PREEMPT_RT", None, {}).model == "rt"
    assert parse_preemption(None, None, "#1 SMP PREEMPT_RT Debian", None, {}).model == "rt"
    from_cmdline = parse_preemption(None, None, dyn, "voluntary", {})
    assert from_cmdline.model == "voluntary" and "command line" in from_cmdline.source
    kconfig = parse_kconfig(
        "CONFIG_PREEMPT_DYNAMIC=y\nCONFIG_PREEMPT_NONE=y\n# CONFIG_PREEMPT is not set\n"
    )
    built = parse_preemption(None, None, dyn, None, kconfig)
    assert built == Preemption("none", True, "build default (CONFIG_PREEMPT_NONE=y)")
    assert parse_preemption(None, None, dyn, None, None).model == "unknown"
    assert parse_preemption(None, None, "#1 SMP PREEMPT Mon", None, None).model == "full"
    assert parse_preemption(None, None, "#1 SMP Mon", None, None).model == "unknown"


def test_numa_maps_local_and_remote_pages() -> None:
    pages = parse_numa_maps(NUMA_MAPS)
    assert pages.pages_by_node == {0: 645, 1: 23}
    assert pages.bytes_by_node[1] == 20 * 4096 + 3 * 2048 * 1024
    local, remote, ratio = pages.split([0])
    assert (local, remote) == (645, 23)
    assert ratio == pytest.approx(23 / 668)
    assert NumaPages({}, {}).split([0]) == (0, 0, 0.0)


def machine(**changes: object) -> Machine:
    base: dict[str, object] = {
        "cpus": frozenset(range(4)),
        "cmdline": parse_cmdline(DEBIAN_RT_CMDLINE),
        "preemption": Preemption("rt", False, "/sys/kernel/realtime"),
        "nodes": {0: frozenset(range(4))},
        "kconfig": {"CONFIG_NO_HZ_FULL": "y", "CONFIG_RCU_NOCB_CPU": "y"},
    }
    base.update(changes)
    return Machine(**base)  # type: ignore[arg-type]


def test_a_well_isolated_cpu_has_no_warnings() -> None:
    findings = check(machine(), 3)
    assert [f.check for f in findings] == [
        "isolcpus", "nohz_full", "rcu_nocbs", "preemption", "numa"
    ]  # fmt: skip
    assert all(f.level == "ok" for f in findings), findings
    assert "one NUMA node (node0)" in findings[-1].detail


def test_an_unisolated_cpu_gets_the_exact_boot_parameters() -> None:
    m = machine(
        cmdline=Cmdline(),
        preemption=Preemption("voluntary", True, "build default (CONFIG_PREEMPT_VOLUNTARY=y)"),
    )
    by_check = {f.check: f for f in check(m, 3)}
    iso = by_check["isolcpus"]
    assert iso.level == "warn"
    assert iso.fix == (
        "add `isolcpus=managed_irq,domain,3 irqaffinity=0-2` to GRUB_CMDLINE_LINUX in "
        "/etc/default/grub, run `update-grub` and reboot"
    )
    assert by_check["nohz_full"].fix is not None and "`nohz_full=3`" in by_check["nohz_full"].fix
    assert by_check["rcu_nocbs"].fix is not None and "`rcu_nocbs=3`" in by_check["rcu_nocbs"].fix
    pre = by_check["preemption"]
    assert pre.level == "warn"
    assert pre.fix is not None and pre.fix.startswith("add `preempt=full`")
    assert "linux-image-rt-amd64" in pre.fix


def test_missing_kernel_features_point_to_the_rt_kernel() -> None:
    m = machine(cmdline=Cmdline(), kconfig={"CONFIG_HZ": "250"}, arch="aarch64")
    by_check = {f.check: f for f in check(m, 1)}
    assert "without CONFIG_NO_HZ_FULL" in by_check["nohz_full"].detail
    assert "CONFIG_HZ=250" in by_check["nohz_full"].detail
    assert "linux-image-rt-arm64" in (by_check["nohz_full"].fix or "")
    assert "without CONFIG_RCU_NOCB_CPU" in by_check["rcu_nocbs"].detail


def test_two_nodes_name_the_cpu_node_and_remote_ratio() -> None:
    m = machine(
        cpus=frozenset(range(8)),
        nodes={0: frozenset(range(4)), 1: frozenset(range(4, 8))},
        numa_pages=parse_numa_maps(NUMA_MAPS),
    )
    by_check = {f.check: f for f in check(m, 5)}
    numa = by_check["numa"]
    assert "CPU 5 is on node 1" in numa.detail
    assert numa.fix is not None and "numactl --cpunodebind=1 --membind=1" in numa.fix
    pages = by_check["numa_pages"]
    assert pages.level == "warn" and "23 pages on node 1, 645 on other nodes" in pages.detail
    assert "96.6% remote" in pages.detail


def test_nonexistent_cpu_is_reported() -> None:
    findings = check(machine(), 9)
    assert len(findings) == 1 and findings[0].level == "warn" and "CPU 9" in findings[0].detail


# --- this machine, for real ------------------------------------------------------------


def test_read_this_machine() -> None:
    m = cpu.read_machine()
    assert m.cpus >= set(os.sched_getaffinity(0))
    assert m.nodes and all(m.nodes.values())
    assert set().union(*m.nodes.values()) >= m.cpus
    assert m.preemption.model in {"rt", "full", "lazy", "voluntary", "none", "unknown"}
    assert m.numa_pages is not None and sum(m.numa_pages.pages_by_node.values()) > 0
    target = max(os.sched_getaffinity(0))
    node = cpu.node_of_cpu(m.nodes, target)
    assert node is not None
    local, remote, ratio = m.numa_pages.split([node])
    assert local > 0 and 0.0 <= ratio <= 1.0
    if len(m.nodes) == 1:
        assert remote == 0  # one node: everything is local by construction


def test_audit_this_machine() -> None:
    target = max(os.sched_getaffinity(0))
    findings = cpu.audit(target)
    checks = [f.check for f in findings]
    for name in ("isolcpus", "nohz_full", "rcu_nocbs", "preemption", "numa"):
        assert name in checks
    assert all(f.fix for f in findings if f.level == "warn"), findings
    numa = next(f for f in findings if f.check == "numa")
    if len(cpu.read_nodes()) == 1:
        assert "one NUMA node" in numa.detail


def test_cli_prints_findings(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cpu.main([str(max(os.sched_getaffinity(0)))])
    out = capsys.readouterr().out
    assert "isolcpus" in out and "preemption" in out
    assert rc == (1 if "[warn]" in out else 0)


@pytest.mark.parametrize("via", ["libnuma", "syscall"])
def test_bind_memory_for_real(via: str) -> None:
    if via == "libnuma" and ctypes.util.find_library("numa") is None:
        pytest.skip("libnuma is not installed (apt-get install libnuma1)")
    node = cpu.node_of_cpu(cpu.read_nodes(), max(os.sched_getaffinity(0)))
    assert node is not None
    seen: dict[str, object] = {}

    def in_thread() -> None:  # the policy is per thread: keep it off the test runner's
        seen["how"] = cpu.bind_memory([node], via=via)
        seen["bound"] = cpu.memory_policy(via=via)
        block = bytearray(4 << 20)  # allocated under the policy
        block[::4096] = b"\1" * len(block[::4096])
        try:
            cpu.bind_memory([1023], via=via)
        except OSError as exc:
            seen["bad_node"] = exc
        cpu.reset_memory_policy()
        seen["reset"] = cpu.memory_policy(via=via)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen["how"] == via
    assert seen["bound"] == (cpu.MPOL_BIND, frozenset({node}))
    assert isinstance(seen["bad_node"], OSError) and "set_mempolicy" in str(seen["bad_node"])
    assert seen["reset"] == (cpu.MPOL_DEFAULT, frozenset())


def test_running_damon_is_reported_with_how_to_stop_it() -> None:
    m = machine(damon=(cpu.Damon(0, "on", ("paddr",), ("pageout",)), cpu.Damon(1, "off", (), ())))
    damon = [f for f in check(m, 3) if f.check == "damon"]
    assert len(damon) == 1 and damon[0].level == "info"
    assert "kdamond.0 is on (paddr; schemes: pageout)" in damon[0].detail
    assert damon[0].fix == (
        "if wake-up spikes recur at DAMON's sampling interval, stop it: "
        "`echo off > /sys/kernel/mm/damon/admin/kdamonds/0/state`"
    )


def test_read_damon_from_a_sysfs_tree(tmp_path: Path) -> None:
    ctx = tmp_path / "0" / "contexts" / "0"
    (ctx / "schemes" / "0").mkdir(parents=True)
    (tmp_path / "0" / "state").write_text("on\n")
    (ctx / "operations").write_text("paddr\n")
    (ctx / "schemes" / "0" / "action").write_text("pageout\n")
    (tmp_path / "nr_kdamonds").write_text("1\n")
    assert cpu.read_damon(str(tmp_path)) == (cpu.Damon(0, "on", ("paddr",), ("pageout",)),)
    assert cpu.read_damon(str(tmp_path / "absent")) == ()


def test_check_takes_cpu_and_priority_from_the_config(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "mxrc.toml"
    config.write_text("[rt]\ncpu = 0\npriority = 17\n")
    run = subprocess.run(
        [sys.executable, "-m", "mxrc", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode in (0, 1), run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("CPU 0: "), run.stdout
    assert "SCHED_FIFO priority 17" in run.stdout or "< 17" in run.stdout, run.stdout
    # --cpu still wins over the file
    override = subprocess.run(
        [sys.executable, "-m", "mxrc", "check", "--config", str(config), "--cpu", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert override.stdout.strip().splitlines()[-1].startswith("CPU 1: "), override.stdout
