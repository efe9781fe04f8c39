"""What the guest kernel ran on one CPU during a time window, from an ftrace text trace.

The paired run (:mod:`stalls`) says how long the higher-priority probe was kept off the
CPU. It cannot say what kept it off: a task of the guest, an interrupt handler, or
nothing the guest can see (the hypervisor not running the vCPU). A scheduler and
interrupt trace of the CPU can. If in a miss's window the guest ran only the cycle, the
probe and their timer interrupts, and the cycle made no system call but its sleep and
took no page fault, then nothing of the guest made the probe late. The cycle, in user space, cannot
hold off a higher-priority thread, because the probe's timer interrupt preempts it at
once. So every microsecond the probe waited there was time in which the vCPU did not
run. That holds for short waits as well, which the paired run's stall threshold leaves
uncounted.

Pure logic over the lines of ``/sys/kernel/tracing/.../trace`` (with ``trace_clock``
``mono``, so timestamps are CLOCK_MONOTONIC); :mod:`tracefs` records them.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: The events the analysis reads; :mod:`tracefs` enables exactly these.
EVENTS = (
    "sched/sched_switch",
    "irq/irq_handler_entry",
    "irq/irq_handler_exit",
    "irq/softirq_entry",
    "irq/softirq_exit",
    "irq_vectors/local_timer_entry",
    "irq_vectors/local_timer_exit",
    "irq_vectors/reschedule_entry",
    "irq_vectors/reschedule_exit",
    "irq_vectors/call_function_entry",
    "irq_vectors/call_function_exit",
    "irq_vectors/call_function_single_entry",
    "irq_vectors/call_function_single_exit",
    "irq_vectors/irq_work_entry",
    "irq_vectors/irq_work_exit",
    "raw_syscalls/sys_enter",
    "exceptions/page_fault_user",
)

#: The timer interrupt that releases the cycle and the probe is theirs, not foreign.
OWN_INTERRUPTS = frozenset({"local_timer"})
PROBE_COMM = "cyclictest"
#: Below this much foreign time (µs) a window counts as "nothing else of the guest ran":
#: a scheduler tick's softirq takes a few µs, a device interrupt tens.
FOREIGN_FREE_US = 10.0

_LINE = re.compile(
    r"^\s*(?P<comm>.*)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+"
    r"(?P<sec>\d+)\.(?P<usec>\d{6}):\s+(?P<event>\w+):\s?(?P<rest>.*)$"
)
_IRQ_NAME = re.compile(r"\bname=(\S+)")
_SOFTIRQ_ACTION = re.compile(r"\baction=(\w+)")
_SYSCALL_NR = re.compile(r"^NR (\d+)")


@dataclass(frozen=True)
class Event:
    """One trace line: when (ns, µs resolution), which task was current, what happened."""

    ts_ns: int
    pid: int
    comm: str
    name: str
    rest: str


def parse_line(line: str) -> Event | None:
    """An event, or None for a comment, a blank line or a line of another shape."""
    m = _LINE.match(line)
    if m is None:
        return None
    ts = int(m["sec"]) * 1_000_000_000 + int(m["usec"]) * 1000
    return Event(ts, int(m["pid"]), m["comm"].strip(), m["event"], m["rest"])


@dataclass(frozen=True)
class Segment:
    """A span of the CPU's time, given to one task or one interrupt (exclusive time:
    a task's span stops while an interrupt runs on top of it)."""

    start_ns: int
    end_ns: int
    label: str  # "task:<pid>:<comm>" or "irq:<name>"


@dataclass
class Activity:
    """The CPU's time within one window, by who had it (µs), and the cycle's kernel
    entries."""

    cycle_us: float = 0.0
    probe_us: float = 0.0
    idle_us: float = 0.0
    others_us: dict[str, float] = field(default_factory=dict)
    interrupts_us: dict[str, float] = field(default_factory=dict)
    cycle_syscalls: list[int] = field(default_factory=list)  # numbers, besides its sleep
    cycle_page_faults: int = 0

    @property
    def foreign_us(self) -> float:
        """Time the guest spent on anything but the cycle, the probe, idling and their
        timer interrupt."""
        irqs = sum(us for name, us in self.interrupts_us.items() if name not in OWN_INTERRUPTS)
        return sum(self.others_us.values()) + irqs

    def as_dict(self) -> dict[str, Any]:
        return {
            "cycle_us": round(self.cycle_us, 1),
            "probe_us": round(self.probe_us, 1),
            "idle_us": round(self.idle_us, 1),
            "foreign_us": round(self.foreign_us, 1),
            "others_us": {k: round(v, 1) for k, v in sorted(self.others_us.items())},
            "interrupts_us": {k: round(v, 1) for k, v in sorted(self.interrupts_us.items())},
            "cycle_syscalls": self.cycle_syscalls,
            "cycle_page_faults": self.cycle_page_faults,
        }


def _interrupt(event: Event) -> tuple[str, bool] | None:
    """(name, entering) for an interrupt entry or exit event, else None."""
    if event.name.endswith("_exit"):
        return "", False
    if not event.name.endswith("_entry"):
        return None
    if event.name == "irq_handler_entry":
        m = _IRQ_NAME.search(event.rest)
        name = m.group(1) if m else "irq"
    elif event.name == "softirq_entry":
        m = _SOFTIRQ_ACTION.search(event.rest)
        name = f"softirq_{m.group(1).lower() if m else '?'}"
    else:
        name = event.name.removesuffix("_entry")  # an interrupt vector: local_timer, …
    return name, True


class Timeline:
    """The CPU's time cut into segments, and the tasks' kernel entries, from a trace of
    that CPU alone."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.segments: list[Segment] = []
        self.syscalls: dict[int, list[tuple[int, int]]] = {}  # pid: [(ts, number)]
        self.page_faults: dict[int, list[int]] = {}
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        stack: list[str] = []  # interrupts, innermost last
        since = 0
        for e in events:
            if self.first_ns is None:
                self.first_ns = since = e.ts_ns
            # Every line names the task current when it was written; so since the last
            # line, the CPU ran that task, or the interrupt on top of it.
            if e.ts_ns > since:
                current = stack[-1] if stack else f"task:{e.pid}:{e.comm}"
                self.segments.append(Segment(since, e.ts_ns, current))
                since = e.ts_ns
            self.last_ns = e.ts_ns
            irq = _interrupt(e)
            if irq is not None:
                name, entering = irq
                if entering:
                    stack.append(f"irq:{name}")
                elif stack:
                    stack.pop()
            elif e.name == "sys_enter" and (m := _SYSCALL_NR.match(e.rest)) is not None:
                self.syscalls.setdefault(e.pid, []).append((e.ts_ns, int(m.group(1))))
            elif e.name == "page_fault_user":
                self.page_faults.setdefault(e.pid, []).append(e.ts_ns)
        self._starts = [s.start_ns for s in self.segments]
        self._sleeps: dict[int, int | None] = {}  # tid: its sleep call, once worked out

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Timeline:
        return cls(e for e in map(parse_line, lines) if e is not None)

    def covers(self, start_ns: int, end_ns: int) -> bool:
        return (
            self.first_ns is not None
            and self.last_ns is not None
            and self.first_ns <= start_ns
            and end_ns <= self.last_ns
        )

    def sleep_syscall(self, tid: int) -> int | None:
        """The system call a cyclic thread makes most: the one it sleeps in, once a
        period (clock_nanosleep, whose number differs between architectures)."""
        if tid not in self._sleeps:
            numbers = Counter(nr for _, nr in self.syscalls.get(tid, []))
            self._sleeps[tid] = numbers.most_common(1)[0][0] if numbers else None
        return self._sleeps[tid]

    def activity(self, start_ns: int, end_ns: int, cycle_tid: int) -> Activity:
        """Who had the CPU within ``[start, end)``; ``cycle_tid`` is the cycle thread.
        The cycle's sleep is not counted among its system calls: a cycle that ends
        late calls it with its next release already past, and it returns at once."""
        out = Activity()
        i = max(0, bisect.bisect_right(self._starts, start_ns) - 1)
        while i < len(self.segments) and self.segments[i].start_ns < end_ns:
            s = self.segments[i]
            i += 1
            us = (min(s.end_ns, end_ns) - max(s.start_ns, start_ns)) / 1000
            if us <= 0:
                continue
            kind, _, rest = s.label.partition(":")
            if kind == "irq":
                out.interrupts_us[rest] = out.interrupts_us.get(rest, 0.0) + us
                continue
            pid_text, _, comm = rest.partition(":")
            pid = int(pid_text)
            if pid == cycle_tid:
                out.cycle_us += us
            elif pid == 0:
                out.idle_us += us
            elif comm == PROBE_COMM:
                out.probe_us += us
            else:
                key = f"{comm}-{pid}"
                out.others_us[key] = out.others_us.get(key, 0.0) + us
        calls = self.syscalls.get(cycle_tid, [])
        sleep = self.sleep_syscall(cycle_tid)
        lo = bisect.bisect_left(calls, (start_ns, -1))
        hi = bisect.bisect_left(calls, (end_ns, -1))
        out.cycle_syscalls = [nr for _, nr in calls[lo:hi] if nr != sleep]
        faults = self.page_faults.get(cycle_tid, [])
        out.cycle_page_faults = bisect.bisect_left(faults, end_ns) - bisect.bisect_left(
            faults, start_ns
        )
        return out
