"""What the machine does to the RT CPU: isolation, tick, RCU, preemption, NUMA, DAMON.

A pinned SCHED_FIFO thread is only as good as the CPU it is pinned to. If the scheduler
still balances other tasks onto it, the timer tick still fires on it, RCU callbacks
still run on it, or the kernel cannot be preempted, wake-ups will be late no matter what
the cycle does — and the symptom (a bad p99.9) does not name the cause. This module
reads each cause from the kernel and returns findings, each with the exact line an
operator changes. A one-socket machine has one NUMA node; that is fine and is said so.

Parsing (``/proc/cmdline``, CPU lists, the preemption string, ``numa_maps``) is pure and
tested against fixture text; the readers below it only fetch text from ``/proc`` and
``/sys``. Memory binding uses ``set_mempolicy`` (a thread's policy) and ``mbind`` (a
mapping's) — libnuma's wrappers when the library is installed, otherwise the raw system
calls through ctypes. What to bind where is decided in :mod:`mxrc.rt.numa`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import json
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# --- pure parsing ----------------------------------------------------------------------

ISOLCPUS_FLAGS = frozenset({"nohz", "domain", "managed_irq"})


def parse_cpulist(text: str) -> frozenset[int]:
    """Kernel CPU-list syntax: ``0-3,5``, ``2-15:2/4`` (used/group-size strides)."""
    cpus: set[int] = set()
    for item in text.strip().split(","):
        part, _, stride = item.strip().partition(":")
        if not part:
            continue
        if "-" in part:
            low_s, high_s = part.split("-", 1)
            low, high = int(low_s), int(high_s)
        else:
            low = high = int(part)
        if high < low:
            raise ValueError(f"bad CPU range {part!r}")
        if stride:
            used_s, group_s = stride.split("/", 1)
            used, group = int(used_s), int(group_s)
            cpus.update(c for c in range(low, high + 1) if (c - low) % group < used)
        else:
            cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """The shortest kernel CPU-list for a set (``{0,1,2,5}`` → ``0-2,5``)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class Cmdline:
    """The isolation-related parameters of a kernel command line."""

    isolcpus: frozenset[int] = frozenset()
    isolcpus_flags: frozenset[str] = frozenset()
    nohz_full: frozenset[int] = frozenset()
    rcu_nocbs: frozenset[int] = frozenset()
    rcu_nocbs_all: bool = False  # bare ``rcu_nocbs``: every CPU (kernel ≥ 5.17)
    irqaffinity: frozenset[int] | None = None
    preempt: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)


def parse_cmdline(text: str) -> Cmdline:
    # Everything after a bare "--" belongs to init, not to the kernel.
    words = text.split()
    if "--" in words:
        words = words[: words.index("--")]
    params: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        params[key] = value.strip('"')
    iso_cpus: frozenset[int] = frozenset()
    iso_flags: set[str] = set()
    if "isolcpus" in params:
        items = params["isolcpus"].split(",")
        while items and items[0] in ISOLCPUS_FLAGS:
            iso_flags.add(items.pop(0))
        iso_cpus = parse_cpulist(",".join(items))
    rcu = params.get("rcu_nocbs")
    return Cmdline(
        isolcpus=iso_cpus,
        isolcpus_flags=frozenset(iso_flags),
        nohz_full=parse_cpulist(params.get("nohz_full", "")),
        rcu_nocbs=parse_cpulist(rcu) if rcu else frozenset(),
        rcu_nocbs_all=rcu == "",
        irqaffinity=parse_cpulist(params["irqaffinity"]) if "irqaffinity" in params else None,
        preempt=params.get("preempt"),
        params=params,
    )


@dataclass(frozen=True)
class Preemption:
    model: str  # "rt", "full", "lazy", "voluntary", "none" or "unknown"
    dynamic: bool  # PREEMPT_DYNAMIC: the model can be chosen at boot with preempt=
    source: str  # where the answer came from


_CONFIG_MODELS = (
    ("CONFIG_PREEMPT_RT", "rt"),
    ("CONFIG_PREEMPT_LAZY", "lazy"),
    ("CONFIG_PREEMPT", "full"),
    ("CONFIG_PREEMPT_VOLUNTARY", "voluntary"),
    ("CONFIG_PREEMPT_NONE", "none"),
)


def parse_kconfig(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def parse_preemption(  # noqa: PLR0911 - one return per source, best first
    debugfs: str | None,
    realtime: str | None,
    uname_version: str,
    cmdline_preempt: str | None,
    kconfig: Mapping[str, str] | None,
) -> Preemption:
    """Best source first: the live debugfs setting, /sys/kernel/realtime, the boot
    parameter, the build's default, and last the words in ``uname -v``."""
    dynamic = (
        "PREEMPT_DYNAMIC" in uname_version or (kconfig or {}).get("CONFIG_PREEMPT_DYNAMIC") == "y"
    )
    if realtime is not None and realtime.strip() == "1":
        return Preemption("rt", dynamic, "/sys/kernel/realtime")
    if debugfs:
        active = re.search(r"\((\w+)\)", debugfs)
        if active:
            return Preemption(active.group(1), True, "/sys/kernel/debug/sched/preempt")
    if "PREEMPT_RT" in uname_version:
        return Preemption("rt", dynamic, "uname -v")
    if dynamic and cmdline_preempt:
        return Preemption(cmdline_preempt, True, "preempt= on the kernel command line")
    if kconfig:
        for key, model in _CONFIG_MODELS:
            if kconfig.get(key) == "y":
                how = "build default" if dynamic else "kernel config"
                return Preemption(model, dynamic, f"{how} ({key}=y)")
    if dynamic:
        return Preemption("unknown", True, "uname -v (PREEMPT_DYNAMIC, mode not readable)")
    if re.search(r"\bPREEMPT\b", uname_version):
        return Preemption("full", False, "uname -v")
    return Preemption("unknown", False, "uname -v")


@dataclass(frozen=True)
class NumaPages:
    pages_by_node: Mapping[int, int]
    bytes_by_node: Mapping[int, int]

    def split(self, local_nodes: Iterable[int]) -> tuple[int, int, float]:
        """(local pages, remote pages, remote fraction of all placed pages)."""
        local_set = set(local_nodes)
        local = sum(n for node, n in self.pages_by_node.items() if node in local_set)
        remote = sum(n for node, n in self.pages_by_node.items() if node not in local_set)
        total = local + remote
        return local, remote, (remote / total if total else 0.0)


_NODE_FIELD = re.compile(r"^N(\d+)=(\d+)$")


def parse_numa_maps(text: str) -> NumaPages:
    """Sum the ``N<node>=<pages>`` fields of every mapping (pages of its own size)."""
    pages: dict[int, int] = {}
    size: dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split()
        page_kib = 4
        counts: list[tuple[int, int]] = []
        for f in fields[2:]:
            m = _NODE_FIELD.match(f)
            if m:
                counts.append((int(m.group(1)), int(m.group(2))))
            elif f.startswith("kernelpagesize_kB="):
                page_kib = int(f.split("=", 1)[1])
        for node, n in counts:
            pages[node] = pages.get(node, 0) + n
            size[node] = size.get(node, 0) + n * page_kib * 1024
    return NumaPages(pages, size)


def node_of_cpu(nodes: Mapping[int, frozenset[int]], cpu: int) -> int | None:
    return next((node for node, cpus in nodes.items() if cpu in cpus), None)


@dataclass(frozen=True)
class Damon:
    """One kdamond: DAMON, the kernel's data-access monitor, possibly reclaiming."""

    index: int
    state: str  # "on" / "off"
    operations: tuple[str, ...]  # "paddr" (all physical memory) or "vaddr"/"fvaddr"
    actions: tuple[str, ...]  # scheme actions, e.g. "pageout"


# --- findings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str
    level: str  # "ok", "info" or "warn"
    detail: str
    fix: str | None = None

    def __str__(self) -> str:
        text = f"[{self.level:>4}] {self.check}: {self.detail}"
        return text + (f"\n       fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Machine:
    """Everything the checks look at, gathered once (fixtures build this directly)."""

    cpus: frozenset[int]
    cmdline: Cmdline
    preemption: Preemption
    nodes: Mapping[int, frozenset[int]]
    kconfig: Mapping[str, str] = field(default_factory=dict)
    sys_isolated: frozenset[int] = frozenset()
    sys_nohz_full: frozenset[int] = frozenset()
    numa_pages: NumaPages | None = None
    damon: tuple[Damon, ...] = ()
    arch: str = "x86_64"


def _rt_kernel_package(arch: str) -> str:
    suffix = {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)
    return f"linux-image-rt-{suffix}"


def _grub_fix(params: str) -> str:
    return (
        f"add `{params}` to GRUB_CMDLINE_LINUX in /etc/default/grub, run `update-grub` and reboot"
    )


def check(machine: Machine, cpu: int) -> list[Finding]:
    """Every finding for running the cycle on ``cpu`` of ``machine``."""
    m = machine
    others = m.cpus - {cpu}
    housekeeping = format_cpulist(others) if others else str(cpu)
    isolate = f"isolcpus=managed_irq,domain,{cpu} irqaffinity={housekeeping}"
    out: list[Finding] = []
    if cpu not in m.cpus:
        out.append(
            Finding(
                "cpu",
                "warn",
                f"CPU {cpu} does not exist here (CPUs: {format_cpulist(m.cpus)})",
                "configure one of the listed CPUs",
            )
        )
        return out
    if not others:
        out.append(
            Finding(
                "isolation",
                "warn",
                f"only one CPU ({cpu}): the cycle shares it with everything else",
                "run on a machine with at least two CPUs",
            )
        )
    isolated = cpu in m.cmdline.isolcpus or cpu in m.sys_isolated
    if isolated:
        out.append(Finding("isolcpus", "ok", f"CPU {cpu} is isolated from the scheduler"))
    else:
        out.append(
            Finding(
                "isolcpus",
                "warn",
                f"CPU {cpu} is not isolated (isolcpus="
                f"{format_cpulist(m.cmdline.isolcpus) or 'none'}): other tasks and "
                "kernel threads are balanced onto it",
                _grub_fix(isolate),
            )
        )
    nohz_built = m.kconfig.get("CONFIG_NO_HZ_FULL") == "y" if m.kconfig else True
    if cpu in m.cmdline.nohz_full or cpu in m.sys_nohz_full:
        out.append(Finding("nohz_full", "ok", f"CPU {cpu} runs without the periodic tick"))
    elif not nohz_built:
        out.append(
            Finding(
                "nohz_full",
                "warn",
                f"the kernel is built without CONFIG_NO_HZ_FULL, so the scheduler tick "
                f"(CONFIG_HZ={m.kconfig.get('CONFIG_HZ', '?')}) interrupts CPU {cpu}",
                f"install a kernel with NO_HZ_FULL (`apt-get install "
                f"{_rt_kernel_package(m.arch)}`), then {_grub_fix(f'nohz_full={cpu}')}",
            )
        )
    else:
        out.append(
            Finding(
                "nohz_full",
                "warn",
                f"CPU {cpu} is not in nohz_full: the scheduler tick interrupts it",
                _grub_fix(f"nohz_full={cpu}"),
            )
        )
    nocb_all = m.kconfig.get("CONFIG_RCU_NOCB_CPU_DEFAULT_ALL") == "y"
    nocb_built = m.kconfig.get("CONFIG_RCU_NOCB_CPU") == "y" if m.kconfig else True
    if m.cmdline.rcu_nocbs_all or cpu in m.cmdline.rcu_nocbs or nocb_all:
        out.append(Finding("rcu_nocbs", "ok", f"RCU callbacks are offloaded from CPU {cpu}"))
    elif not nocb_built:
        out.append(
            Finding(
                "rcu_nocbs",
                "warn",
                f"the kernel is built without CONFIG_RCU_NOCB_CPU: RCU callbacks run on CPU {cpu}",
                f"`apt-get install {_rt_kernel_package(m.arch)}`, then "
                f"{_grub_fix(f'rcu_nocbs={cpu}')}",
            )
        )
    else:
        out.append(
            Finding(
                "rcu_nocbs",
                "warn",
                f"RCU callbacks may run on CPU {cpu}",
                _grub_fix(f"rcu_nocbs={cpu}"),
            )
        )
    out.append(_preemption_finding(m))
    out.extend(_numa_findings(m, cpu))
    out.extend(_damon_findings(m))
    return out


def _preemption_finding(m: Machine) -> Finding:
    p = m.preemption
    rt_pkg = f"`apt-get install {_rt_kernel_package(m.arch)}` and boot it"
    if p.model == "rt":
        return Finding("preemption", "ok", f"PREEMPT_RT kernel ({p.source})")
    if p.model in ("full", "lazy"):
        return Finding(
            "preemption",
            "ok",
            f"preemption model {p.model} ({p.source}); PREEMPT_RT bounds the worst case further",
            f"for the tightest worst case: {rt_pkg}",
        )
    fix = _grub_fix("preempt=full") if p.dynamic else rt_pkg
    if p.dynamic:
        fix += f", or for the tightest worst case {rt_pkg}"
    what = "unknown" if p.model == "unknown" else f"'{p.model}'"
    return Finding(
        "preemption",
        "warn",
        f"preemption model {what} ({p.source}): a kernel code path cannot be interrupted "
        "when the cycle's timer fires, so its length adds to the wake-up latency",
        fix,
    )


def _damon_findings(m: Machine) -> list[Finding]:
    out = []
    for d in m.damon:
        if d.state != "on":
            continue
        ops = "/".join(d.operations) or "?"
        acts = ", ".join(d.actions) or "monitoring only"
        out.append(
            Finding(
                "damon",
                "info",
                f"kdamond.{d.index} is on ({ops}; schemes: {acts}): it samples page-access "
                "bits across memory, and the TLB flushes that follow can interrupt the RT "
                "CPU; memory locked by mlockall is never paged out by it",
                "if wake-up spikes recur at DAMON's sampling interval, stop it: `echo off > "
                f"/sys/kernel/mm/damon/admin/kdamonds/{d.index}/state`",
            )
        )
    return out


def _numa_findings(m: Machine, cpu: int) -> list[Finding]:
    if len(m.nodes) <= 1:
        only = next(iter(m.nodes), 0)
        return [
            Finding(
                "numa",
                "ok",
                f"one NUMA node (node{only}): all memory is local to CPU {cpu}; nothing to bind",
            )
        ]
    node = node_of_cpu(m.nodes, cpu)
    out = [
        Finding(
            "numa",
            "info",
            f"{len(m.nodes)} NUMA nodes; CPU {cpu} is on node {node}: the RT process's "
            "memory should be allocated there",
            f"mxrc rt binds itself there at start (rt.numa, see `mxrc check --config`); "
            f"anything else: start it under `numactl --cpunodebind={node} --membind={node}`",
        )
    ]
    if m.numa_pages is not None and node is not None:
        local, remote, ratio = m.numa_pages.split([node])
        level = "ok" if ratio < 0.05 else "warn"
        out.append(
            Finding(
                "numa_pages",
                level,
                f"{local} pages on node {node}, {remote} on other nodes ({ratio:.1%} remote)",
                None
                if level == "ok"
                else f"bind memory to node {node} before allocating (numactl --membind={node})",
            )
        )
    return out


# --- reading the running machine -------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def read_kconfig() -> dict[str, str]:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return parse_kconfig(f.read())
    except OSError:
        pass
    text = _read(f"/boot/config-{os.uname().release}")
    return parse_kconfig(text) if text else {}


def read_nodes(root: str = "/sys/devices/system/node") -> dict[int, frozenset[int]]:
    nodes: dict[int, frozenset[int]] = {}
    base = Path(root)
    if not base.is_dir():
        return {0: frozenset(range(os.cpu_count() or 1))}  # no NUMA support: one node
    for entry in sorted(base.glob("node[0-9]*")):
        text = _read(str(entry / "cpulist"))
        nodes[int(entry.name[4:])] = parse_cpulist(text or "")
    return nodes or {0: frozenset(range(os.cpu_count() or 1))}


def read_preemption(cmdline: Cmdline, kconfig: Mapping[str, str]) -> Preemption:
    return parse_preemption(
        _read("/sys/kernel/debug/sched/preempt"),
        _read("/sys/kernel/realtime"),
        os.uname().version,
        cmdline.preempt,
        kconfig,
    )


def read_damon(root: str = "/sys/kernel/mm/damon/admin/kdamonds") -> tuple[Damon, ...]:
    found = []
    for entry in sorted(Path(root).glob("[0-9]*")):
        contexts = sorted(entry.glob("contexts/[0-9]*"))
        found.append(
            Damon(
                index=int(entry.name),
                state=(_read(str(entry / "state")) or "").strip(),
                operations=tuple((_read(str(c / "operations")) or "").strip() for c in contexts),
                actions=tuple(
                    (_read(str(a)) or "").strip()
                    for c in contexts
                    for a in sorted(c.glob("schemes/[0-9]*/action"))
                ),
            )
        )
    return tuple(found)


def read_numa_pages(pid: int | str = "self") -> NumaPages | None:
    text = _read(f"/proc/{pid}/numa_maps")
    return parse_numa_maps(text) if text is not None else None


def read_machine(pid: int | str = "self") -> Machine:
    cmdline = parse_cmdline(_read("/proc/cmdline") or "")
    kconfig = read_kconfig()
    present = _read("/sys/devices/system/cpu/online")
    return Machine(
        cpus=parse_cpulist(present) if present else frozenset(range(os.cpu_count() or 1)),
        cmdline=cmdline,
        preemption=read_preemption(cmdline, kconfig),
        nodes=read_nodes(),
        kconfig=kconfig,
        sys_isolated=parse_cpulist(_read("/sys/devices/system/cpu/isolated") or ""),
        sys_nohz_full=parse_cpulist(_read("/sys/devices/system/cpu/nohz_full") or ""),
        numa_pages=read_numa_pages(pid),
        damon=read_damon(),
        arch=platform.machine(),
    )


def audit(cpu: int, pid: int | str = "self") -> list[Finding]:
    return check(read_machine(pid), cpu)


# --- memory policy ---------------------------------------------------------------------

MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
MPOL_BIND = 2
MPOL_INTERLEAVE = 3
MPOL_LOCAL = 4
_MODE_FLAGS = (1 << 15) | (1 << 14) | (1 << 13)  # STATIC_NODES, RELATIVE_NODES, NUMA_BALANCING
_MASK_LONGS = 16  # room for 1024 nodes
_MAXNODE = _MASK_LONGS * 64 + 1  # the kernel reads maxnode - 1 bits
_SYSCALLS = {"x86_64": (238, 239), "aarch64": (237, 236)}  # (set_mempolicy, get_mempolicy)
_MBIND_SYSCALLS = {"x86_64": 237, "aarch64": 235}

_NodeMask = ctypes.c_ulong * _MASK_LONGS
SetPolicy = Callable[[int, Any, int], int]
GetPolicy = Callable[[Any, Any, int, Any, int], int]
Mbind = Callable[[int, int, int, Any, int, int], int]


def _libnuma(use_libnuma: bool) -> ctypes.CDLL | None:
    name = ctypes.util.find_library("numa") if use_libnuma else None
    if not name:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _mempolicy_calls(use_libnuma: bool = True) -> tuple[SetPolicy, GetPolicy, str]:
    """libnuma's set/get_mempolicy when installed, else the raw syscalls via libc."""
    lib = _libnuma(use_libnuma)
    if lib is not None:
        setter, getter = lib.set_mempolicy, lib.get_mempolicy
        setter.argtypes = (ctypes.c_int, ctypes.POINTER(_NodeMask), ctypes.c_ulong)
        setter.restype = ctypes.c_long
        getter.argtypes = (
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(_NodeMask),
            ctypes.c_ulong,
            ctypes.c_void_p,
            ctypes.c_ulong,
        )
        getter.restype = ctypes.c_long
        return setter, getter, "libnuma"
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise OSError(f"set_mempolicy: unsupported architecture {platform.machine()}")
    libc = _libc()
    set_nr, get_nr = numbers

    def set_call(mode: int, mask: Any, maxnode: int) -> int:
        return int(libc.syscall(set_nr, ctypes.c_int(mode), mask, ctypes.c_ulong(maxnode)))

    def get_call(mode: Any, mask: Any, maxnode: int, addr: Any, flags: int) -> int:
        return int(
            libc.syscall(get_nr, mode, mask, ctypes.c_ulong(maxnode), addr, ctypes.c_ulong(flags))
        )

    return set_call, get_call, "syscall"


def _mbind_call(use_libnuma: bool = True) -> tuple[Mbind, str]:
    """libnuma's ``mbind`` when installed, else the raw syscall. Not libnuma's
    ``numa_tonode_memory``: it returns nothing and only prints a failure to stderr, and a
    placement that did not happen must be reported, not printed."""
    lib = _libnuma(use_libnuma)
    if lib is not None:
        fn = lib.mbind
        fn.argtypes = (
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.c_int,
            ctypes.POINTER(_NodeMask),
            ctypes.c_ulong,
            ctypes.c_uint,
        )
        fn.restype = ctypes.c_long

        def lib_call(addr: int, length: int, mode: int, mask: Any, maxnode: int, flags: int) -> int:
            return int(fn(addr, length, mode, mask, maxnode, flags))

        return lib_call, "libnuma"
    number = _MBIND_SYSCALLS.get(platform.machine())
    if number is None:
        raise OSError(f"mbind: unsupported architecture {platform.machine()}")
    libc = _libc()

    def sys_call(addr: int, length: int, mode: int, mask: Any, maxnode: int, flags: int) -> int:
        return int(
            libc.syscall(
                number,
                ctypes.c_void_p(addr),
                ctypes.c_ulong(length),
                ctypes.c_int(mode),
                mask,
                ctypes.c_ulong(maxnode),
                ctypes.c_uint(flags),
            )
        )

    return sys_call, "syscall"


def _node_mask(nodes: Iterable[int]) -> tuple[list[int], Any]:
    wanted = sorted(set(nodes))
    mask = _NodeMask()
    for node in wanted:
        mask[node // 64] |= 1 << (node % 64)
    return wanted, mask


def bind_memory(nodes: Iterable[int], mode: int = MPOL_BIND, *, via: str | None = None) -> str:
    """Set the calling thread's memory policy (inherited by threads it starts later).

    Call it before the cycle thread is created so the thread's stack and everything it
    allocates come from the RT CPU's node. Returns which mechanism was used; ``via``
    ("syscall") forces the raw system call even where libnuma is installed.
    """
    set_call, _get, how = _policy_calls(via)
    wanted, mask = _node_mask(nodes)
    maxnode = _MAXNODE if mode not in (MPOL_DEFAULT, MPOL_LOCAL) else 0
    if set_call(mode, ctypes.byref(mask) if maxnode else None, maxnode) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"set_mempolicy(mode={mode}, nodes={wanted}): {os.strerror(err)}")
    return how


def _policy_calls(via: str | None) -> tuple[SetPolicy, GetPolicy, str]:
    if via not in (None, "libnuma", "syscall"):
        raise ValueError(f"via must be 'libnuma' or 'syscall', got {via!r}")
    return _mempolicy_calls(use_libnuma=via != "syscall")


def bind_range(
    address: int,
    length: int,
    nodes: Iterable[int],
    mode: int = MPOL_BIND,
    *,
    via: str | None = None,
) -> str:
    """Give ``length`` bytes of mapped memory at ``address`` (page-aligned) their own
    policy with ``mbind``; returns the mechanism used, like :func:`bind_memory`.

    Pages already present stay where they are (no ``MPOL_MF_MOVE``: moving pages another
    process maps needs CAP_SYS_NICE); pages allocated later obey the policy. On a tmpfs
    (shmem) mapping the policy is stored with the file, not with this mapping: every
    process that maps it sees it and every page anyone allocates in it obeys it.
    """
    if via not in (None, "libnuma", "syscall"):
        raise ValueError(f"via must be 'libnuma' or 'syscall', got {via!r}")
    call, how = _mbind_call(use_libnuma=via != "syscall")
    wanted, mask = _node_mask(nodes)
    maxnode = _MAXNODE if mode not in (MPOL_DEFAULT, MPOL_LOCAL) else 0
    if call(address, length, mode, ctypes.byref(mask) if maxnode else None, maxnode, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(
            err, f"mbind({length} B, mode={mode}, nodes={wanted}): {os.strerror(err)}"
        )
    return how


def reset_memory_policy() -> None:
    bind_memory([], MPOL_DEFAULT)


def memory_policy(*, via: str | None = None) -> tuple[int, frozenset[int]]:
    """(mode, nodes) of the calling thread's memory policy."""
    _set, get_call, _how = _policy_calls(via)
    mode = ctypes.c_int(0)
    mask = _NodeMask()
    if get_call(ctypes.byref(mode), ctypes.byref(mask), _MAXNODE, None, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"get_mempolicy: {os.strerror(err)}")
    nodes = frozenset(
        i * 64 + bit for i, word in enumerate(mask) for bit in range(64) if word >> bit & 1
    )
    return mode.value & ~_MODE_FLAGS, nodes


def main(argv: list[str] | None = None) -> int:
    """``python -m mxrc.rt.cpu [CPU] [--json]``: print the findings for one CPU."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    cpu = int(args[0]) if args else max(os.sched_getaffinity(0))
    findings = audit(cpu)
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            print(f)
    return 1 if any(f.level == "warn" for f in findings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
