"""Where the processes' memory goes on a NUMA machine: planned from the topology, then set.

Why. On a machine with several NUMA nodes a page on another node than the CPU that uses
it costs a trip over the interconnect on every cache miss, and that trip shares the link
with whatever the other socket is doing. A cycle whose stack, histograms or shared
segments sit on the far node pays for it every cycle, and its wake-up-to-done time
jitters with someone else's load. So the placement is decided here once, from the
node → CPUs map, the RT CPU and nonrt's CPUs (:func:`plan`, pure), and then applied by
each process to itself:

* **mxrc rt** binds (``MPOL_BIND``) to the RT CPU's node in its main thread before it
  creates any other thread (``mxrc rt`` does it before its log writer thread starts;
  :func:`mxrc.rt.process.run` does it itself when called without the outcome): before
  the control law, the segments' mappings and the cycle's histograms are allocated,
  and before the cycle thread is created.
  ``set_mempolicy`` sets the policy of the *calling thread only*, and a new thread
  starts with a copy of its creator's policy (man set_mempolicy(2): "set default NUMA
  memory policy for a thread and its children"), so the cycle thread, created later by
  the main thread, starts bound: its stack, what it allocates, and the pages
  ``mlockall`` faults in come from the RT node. ``/proc/<pid>/task/<tid>/numa_maps``
  prints each thread's own policy on every mapping that has none of its own, which is
  how ``tests/rt/test_numa.py`` shows it for a running ``mxrc rt``, and shows that a
  thread created *before* the call keeps the default. Binding in the cycle thread
  instead would come too late for the histograms the main thread allocates. Pages
  touched before the call (the interpreter's start-up) stay where they are; under
  systemd the unit's ``NUMAPolicy=bind`` covers them from exec on.
* **mxrc nonrt** prefers (``MPOL_PREFERRED``, not bind) the node other than the RT
  node that holds most of its CPUs: its memory stays off the RT node while that node has
  room, and spills elsewhere instead of failing when it has none — an out-of-memory
  kill of the process that holds the safety state is worse than a remote page. With
  no such node (one node, or all its CPUs on the RT node) its policy is left alone.
* **The segments** are created by nonrt (:func:`mxrc.service.controller.create_segments`)
  but used every cycle by rt, so :func:`place_segments` puts them on the RT node:
  nonrt's thread is bound to the RT node around the creation (the header and initial
  contents are first touched there), then each mapping gets an ``mbind`` policy and
  every page is read once, and nonrt's own policy is restored. ``mbind`` on a tmpfs
  (shmem) mapping stores the policy with the file — the kernel's "shared policy": both
  processes' ``numa_maps`` show ``bind:N`` on the segment, and a page anyone allocates
  later obeys it. ``mbind`` alone would not do: :func:`mxrc.rt.shm.create_segment`
  writes the header before it returns the mapping. The pages are read, not zero-filled:
  a read fault on a shared tmpfs mapping allocates the page just the same, and the RT
  process may already be attached and writing (it attaches as soon as the magic is
  there), so writing anything back could undo its write.

One node is fine and says so ("one NUMA node: nothing to bind"). ``rt.numa`` chooses:
``auto`` (the default) places only on two or more nodes; ``always`` binds on one node
too — no page moves, but the policy is set and shows in ``numa_maps``, which checks that
the calls are allowed before the same configuration meets a NUMA machine; ``off``
leaves memory policy to the kernel, ``numactl`` or the unit's ``NUMAPolicy=``.

Failures never stop a process. ``EPERM`` (a seccomp filter), ``ENOSYS`` (a kernel built
without ``CONFIG_NUMA``), ``EINVAL`` (a node outside the process's cpuset) and a missing
libnuma (the raw system calls are used then) each become one :class:`Outcome` with a
:class:`~mxrc.rt.sched.Degradation` naming the fix; mxrc rt shows it in its start line
and ``Cycle.status()["degraded"]``, nonrt in its own start-up lines.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from mxrc.config import Config
from mxrc.rt.cpu import (
    MPOL_BIND,
    MPOL_DEFAULT,
    MPOL_INTERLEAVE,
    MPOL_LOCAL,
    MPOL_PREFERRED,
    Finding,
    bind_memory,
    bind_range,
    format_cpulist,
    memory_policy,
    node_of_cpu,
    parse_cpulist,
    read_nodes,
)
from mxrc.rt.sched import Degradation, allowed_cpus, housekeeping_cpus, rt_cpu_of

T = TypeVar("T")

MODES: Final = ("auto", "always", "off")
_LABELS: Final = {MPOL_BIND: "bind", MPOL_PREFERRED: "prefer", MPOL_INTERLEAVE: "interleave"}


# --- the plan (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """A memory policy to set: an ``MPOL_*`` mode and its nodes."""

    mode: int
    nodes: frozenset[int]

    @property
    def label(self) -> str:
        """The policy as ``/proc/<pid>/numa_maps`` prints it (``bind:1``, ``prefer:0``),
        so what a process says it set can be compared with what the kernel shows."""
        if self.mode == MPOL_DEFAULT:
            return "default"
        if self.mode == MPOL_LOCAL:
            return "local"
        return f"{_LABELS.get(self.mode, str(self.mode))}:{format_cpulist(self.nodes)}"


@dataclass(frozen=True)
class Step:
    """One process's (or the segments') part of the plan: the policy to set, or None to
    leave the policy alone, and the sentence that says why."""

    policy: Policy | None
    sentence: str


@dataclass(frozen=True)
class NumaPlan:
    rt_cpu: int
    rt_node: int | None
    rt: Step
    nonrt: Step
    shm: Step

    def sentences(self) -> tuple[str, str, str]:
        return self.rt.sentence, self.nonrt.sentence, self.shm.sentence


def plan(
    nodes: Mapping[int, frozenset[int]],
    rt_cpu: int,
    nonrt_cpus: Iterable[int],
    mode: str = "auto",
) -> NumaPlan:
    """Where each process's memory and the segments go (see the module docstring).

    ``nodes`` is the node → CPUs map (:func:`mxrc.rt.cpu.read_nodes`), ``mode`` the
    ``rt.numa`` setting. Pure: the same answer for a made-up topology as for a real one.
    """
    if mode not in MODES:
        raise ValueError(f"rt.numa must be one of {', '.join(MODES)}, got {mode!r}")
    nonrt = frozenset(nonrt_cpus)
    rt_node = node_of_cpu(nodes, rt_cpu)
    if mode == "off":
        why = (
            'rt.numa = "off": memory policy left to the kernel (or to numactl, or the '
            "unit's NUMAPolicy=)"
        )
        return NumaPlan(rt_cpu, rt_node, Step(None, why), Step(None, why), Step(None, why))
    if rt_node is None:
        listed = format_cpulist(nodes) or "none"
        why = f"CPU {rt_cpu} is on none of the NUMA nodes ({listed}): nothing bound"
        return NumaPlan(rt_cpu, None, Step(None, why), Step(None, why), Step(None, why))
    one_node = len(nodes) == 1
    if one_node and mode == "auto":
        return NumaPlan(
            rt_cpu,
            rt_node,
            Step(
                None,
                f"one NUMA node: nothing to bind (node {rt_node} holds all memory, local "
                f"to CPU {rt_cpu})",
            ),
            Step(None, "one NUMA node: nothing for nonrt to prefer"),
            Step(None, "one NUMA node: the segments are local to every CPU"),
        )
    bound = Policy(MPOL_BIND, frozenset({rt_node}))
    anyway = ' (one NUMA node, so no page moves; rt.numa = "always" sets it anyway)'
    anyway = anyway if one_node else ""
    rt = Step(bound, f"mxrc rt: memory bound to node {rt_node}, the node of CPU {rt_cpu}{anyway}")
    shm = Step(
        bound,
        f"segments: placed on node {rt_node}, the RT node, before their first touch{anyway}",
    )
    return NumaPlan(rt_cpu, rt_node, rt, _nonrt_step(nodes, rt_node, nonrt), shm)


def _nonrt_step(nodes: Mapping[int, frozenset[int]], rt_node: int, nonrt: frozenset[int]) -> Step:
    on_node = {n: cpus & nonrt for n, cpus in nodes.items() if n != rt_node and cpus & nonrt}
    if on_node:
        # Most nonrt CPUs first (most of its threads' allocations are local there), then
        # the lowest node number, so the choice never depends on dict order.
        other = min(on_node, key=lambda n: (-len(on_node[n]), n))
        return Step(
            Policy(MPOL_PREFERRED, frozenset({other})),
            f"mxrc nonrt: prefers node {other} (its CPUs {format_cpulist(on_node[other])} "
            f"are there), off the RT node {rt_node}; preferred, not bound, so it spills "
            "elsewhere rather than fail when that node is full",
        )
    if len(nodes) == 1:
        return Step(None, "one NUMA node: nothing for nonrt to prefer")
    return Step(
        None,
        f"mxrc nonrt: its CPUs ({format_cpulist(nonrt) or 'none'}) are all on the RT node "
        f"{rt_node}: no other node to prefer, its policy is left alone",
    )


# --- this host -------------------------------------------------------------------------


def host_plan(
    config: Config,
    *,
    rt_cpu: int | None = None,
    nonrt_cpus: frozenset[int] | None = None,
    nodes: Mapping[int, frozenset[int]] | None = None,
) -> NumaPlan:
    """The plan for this host and configuration. Without ``rt_cpu``, it is ``rt.cpu`` as
    :func:`mxrc.rt.sched.rt_cpu_of` resolves it; without ``nonrt_cpus``, nonrt's CPUs are
    what :func:`mxrc.rt.sched.housekeeping_cpus` gives it."""
    if rt_cpu is None:
        rt_cpu = rt_cpu_of(config)
    if nonrt_cpus is None:
        listed = str(config["nonrt.cpus"])
        nonrt_cpus, _why = housekeeping_cpus(
            allowed_cpus(), rt_cpu, parse_cpulist(listed) if listed else frozenset()
        )
    topology = read_nodes() if nodes is None else nodes
    return plan(topology, rt_cpu, nonrt_cpus, str(config["rt.numa"]))


# --- applying it -----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What applying one step did: a phrase for a start line, and the degradation when
    the kernel refused (never an exception: a process runs on with the default policy)."""

    summary: str
    degradation: Degradation | None = None

    @property
    def text(self) -> str:
        """The whole message, for a process without a degraded list of its own."""
        d = self.degradation
        return self.summary if d is None else f"{self.summary}: {d.detail} (fix: {d.fix})"


def _mems_allowed() -> str:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Mems_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _refused(call: str, policy: Policy, exc: OSError, subject: str) -> Outcome:
    """One clear message for each way the kernel says no."""
    nodes = format_cpulist(policy.nodes)
    code = exc.errno
    if code == errno.ENOSYS:
        detail = f"{subject} not placed: the kernel has no NUMA support ({call}: ENOSYS)"
        fix = (
            'nothing on a one-node machine (rt.numa = "auto" stops asking); on a NUMA '
            "machine boot a kernel built with CONFIG_NUMA=y"
        )
    elif code == errno.EPERM:
        detail = f"{subject} not placed: {call} was refused (EPERM), a seccomp filter forbids it"
        fix = (
            f"allow {call} (systemd: SystemCallFilter=@system-service includes it) or "
            f"start the process under `numactl --membind={nodes}`"
        )
    elif code == errno.EINVAL:
        detail = (
            f"{subject} not placed: node {nodes} is not one this process may use ({call}: "
            f"EINVAL; Mems_allowed_list {_mems_allowed()})"
        )
        fix = (
            f"allow node {nodes} (AllowedMemoryNodes= of the unit, or the cpuset's "
            "cpuset.mems), or choose an rt.cpu on an allowed node"
        )
    else:
        detail = f"{subject} not placed: {exc}"
        fix = 'rt.numa = "off" leaves memory policy to the kernel'
    return Outcome(f"{subject} not placed", Degradation("numa", detail, fix))


def apply(step: Step, *, subject: str = "memory", via: str | None = None) -> Outcome:
    """Set the *calling thread's* policy as ``step`` says (threads it creates afterwards
    inherit it; threads that exist already keep theirs)."""
    policy = step.policy
    if policy is None:
        return Outcome(step.sentence)
    try:
        how = bind_memory(policy.nodes, policy.mode, via=via)
    except OSError as exc:
        return _refused("set_mempolicy", policy, exc, subject)
    return Outcome(f"{subject} {policy.label} (set_mempolicy via {how})")


def bind_rt(config: Config) -> Outcome:
    """mxrc rt's step, for its main thread before the cycle thread exists."""
    return apply(host_plan(config, rt_cpu=rt_cpu_of(config)).rt)


def prefer_for_nonrt(config: Config) -> Outcome:
    """nonrt's step, for its main thread before any other thread exists; called after
    the process moved to its CPUs, so those are the CPUs it may use now."""
    return apply(host_plan(config, nonrt_cpus=allowed_cpus()).nonrt)


def mapping_address(buf: mmap.mmap) -> int:
    """Where ``buf`` is mapped (mbind needs the address; :mod:`mmap` does not say). The
    ctypes view exports the buffer, so it is dropped at once: an mmap with an export
    refuses to close."""
    view = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def _bind_mappings(
    buffers: Iterable[mmap.mmap], policy: Policy, via: str | None
) -> tuple[str, int, int]:
    """mbind each mapping, then read one byte of every page so each is allocated now,
    under the policy: (mechanism, mappings, pages)."""
    how, count, pages = "", 0, 0
    for buf in buffers:
        length = len(buf)
        how = bind_range(mapping_address(buf), length, policy.nodes, policy.mode, via=via)
        _touched = buf[:: mmap.PAGESIZE]
        count += 1
        pages += -(-length // mmap.PAGESIZE)
    return how, count, pages


def _restore(saved: tuple[int, frozenset[int]], via: str | None) -> None:
    mode, nodes = saved
    bind_memory([] if mode in (MPOL_DEFAULT, MPOL_LOCAL) else nodes, mode, via=via)


def place_segments(
    step: Step,
    create: Callable[[], T],
    mappings: Callable[[T], Iterable[mmap.mmap]],
    *,
    via: str | None = None,
) -> tuple[T, Outcome]:
    """``create()`` the segments with their pages on ``step``'s node; returns them and
    what was done. The calling thread's policy is bound for the creation and restored
    afterwards, whatever happens (an exception from ``create`` propagates)."""
    policy = step.policy
    if policy is None:
        return create(), Outcome(step.sentence)
    try:
        saved = memory_policy(via=via)
        bind_memory(policy.nodes, policy.mode, via=via)
    except OSError as exc:
        return create(), _refused("set_mempolicy", policy, exc, "segments")
    not_restored: OSError | None = None
    try:
        made = create()
        try:
            how, count, pages = _bind_mappings(mappings(made), policy, via)
        except OSError as exc:
            outcome = _refused("mbind", policy, exc, "segments")
        else:
            outcome = Outcome(
                f"segments {policy.label}: {count} mappings, {pages} pages (mbind via {how})"
            )
    finally:
        try:
            _restore(saved, via)
        except OSError as exc:  # reported below; an exception from create() wins
            not_restored = exc
    if not_restored is not None:
        outcome = Outcome(
            f"{outcome.summary}; this thread's own policy was not restored ({not_restored})",
            outcome.degradation
            or Degradation(
                "numa",
                f"the thread that created the segments stays bound to node "
                f"{format_cpulist(policy.nodes)}: {not_restored}",
                'rt.numa = "off" leaves memory policy to the kernel',
            ),
        )
    return made, outcome


# --- mxrc check ------------------------------------------------------------------------


def _probe(policy: Policy) -> Outcome:
    """Try the RT step in a throwaway thread: the policy dies with it, and this process's
    own threads never see it."""
    result: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: result.append(apply(Step(policy, ""), subject="mxrc rt's memory")),
        name="mxrc-numa-probe",
    )
    thread.start()
    thread.join()
    return result[0]


def plan_findings(p: NumaPlan, *, probe: bool = True) -> list[Finding]:
    """The configured plan as ``mxrc check`` reports it: one finding per step, and, when
    mxrc rt would bind, whether this machine lets it (tried for real, in a thread)."""
    out = [
        Finding("numa_rt", "ok", p.rt.sentence),
        Finding("numa_nonrt", "ok", p.nonrt.sentence),
        Finding("numa_shm", "ok", p.shm.sentence),
    ]
    if probe and p.rt.policy is not None:
        tried = _probe(p.rt.policy)
        d = tried.degradation
        if d is None:
            out.append(Finding("numa_bind", "ok", f"set_mempolicy {p.rt.policy.label} is allowed"))
        else:
            out.append(Finding("numa_bind", "warn", d.detail, d.fix))
    return out
