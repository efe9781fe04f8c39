"""The cyclic executive: slower tasks placed into the slots of a major frame.

Every task runs at a period that is a whole multiple k of the base cycle. The major
frame is the least common multiple of all k; a task with multiple k runs in the slots
``offset, offset + k, …`` of that frame. Offsets are chosen so slower tasks spread over
different slots instead of piling onto slot 0 — a 10 ms logger and a 10 ms supervisor
placed together would make one cycle in ten twice as long as the rest, and the budget
has to hold for the longest cycle. The plan is computed when tasks are registered, not
while the cycle runs; :meth:`Executive.run` only indexes a precomputed tuple.

A period that is not a whole multiple is refused: rounding it would silently change the
task's rate, and a control law tuned for 3 ms must not run every 2 or 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxrc.rt.cycle import CycleInfo

SlotTask = Callable[["CycleInfo"], None]

MAX_FRAME_SLOTS = 1000


@dataclass(frozen=True)
class TaskSpec:
    """A task as registered: ``multiple`` base cycles per run, ``cost`` its weight."""

    name: str
    multiple: int
    cost: float = 1.0
    offset: int | None = None  # pinned slot within its period, or chosen by placement


@dataclass(frozen=True)
class FramePlan:
    frame_slots: int
    offsets: dict[str, int]
    slots: tuple[tuple[str, ...], ...]  # slot index → task names in run order
    loads: tuple[float, ...]  # slot index → summed cost

    def slots_of(self, name: str) -> list[int]:
        return [i for i, names in enumerate(self.slots) if name in names]


def _ms(ns: int) -> str:
    return f"{ns / 1e6:g} ms"


def multiple_of(period_ns: int, base_ns: int, name: str) -> int:
    """k such that period = k × base, or an error that lists what would be accepted."""
    if period_ns <= 0 or period_ns % base_ns:
        examples = ", ".join(_ms(base_ns * k) for k in (1, 2, 5, 10))
        raise ValueError(
            f"task {name!r}: period {_ms(period_ns)} is not a whole multiple of the base "
            f"cycle {_ms(base_ns)} (e.g. {examples})"
        )
    return period_ns // base_ns


def place(tasks: Sequence[TaskSpec], max_frame_slots: int = MAX_FRAME_SLOTS) -> FramePlan:
    """Choose each task's offset so the heaviest slot of the frame is as light as possible.

    Greedy, fastest tasks first (they have the fewest choices): each task takes the
    offset whose slots currently carry the smallest maximum load, then the smallest
    total, then the lowest offset — deterministic, so the same tasks give the same plan.
    """
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"task {dup!r} is registered twice")
    frame = math.lcm(*(t.multiple for t in tasks)) if tasks else 1
    if frame > max_frame_slots:
        raise ValueError(
            f"major frame would be {frame} slots (lcm of task multiples "
            f"{sorted({t.multiple for t in tasks})}); at most {max_frame_slots} are allowed; "
            "choose periods with a smaller common multiple"
        )
    loads = [0.0] * frame
    members: list[list[str]] = [[] for _ in range(frame)]
    offsets: dict[str, int] = {}
    order = sorted(range(len(tasks)), key=lambda i: (tasks[i].multiple, i))
    for i in order:
        task = tasks[i]
        k = task.multiple
        if task.offset is not None:
            if not 0 <= task.offset < k:
                raise ValueError(
                    f"task {task.name!r}: offset {task.offset} must be in 0..{k - 1} "
                    f"(its period is {k} base cycles)"
                )
            best = task.offset
        else:
            best = min(
                range(k),
                key=lambda o: (max(loads[o::k]), sum(loads[o::k]), o),
            )
        offsets[task.name] = best
        for slot in range(best, frame, k):
            loads[slot] += task.cost
    # Run order within a slot follows registration order (the caller's data flow).
    for task in tasks:
        for slot in range(offsets[task.name], frame, task.multiple):
            members[slot].append(task.name)
    return FramePlan(frame, offsets, tuple(tuple(m) for m in members), tuple(loads))


class Executive:
    """Runs the tasks of the current slot once per base cycle.

    ``run`` is the hook the cycle calls; ``slot`` and ``cycles`` show where the frame is.
    Registration is refused once the cycle has started, because changing the frame
    under a running cycle would shift every task's phase.
    """

    def __init__(self, base_period_ns: int, max_frame_slots: int = MAX_FRAME_SLOTS) -> None:
        if base_period_ns <= 0:
            raise ValueError(f"base period must be positive, got {base_period_ns} ns")
        self.base_period_ns = base_period_ns
        self.max_frame_slots = max_frame_slots
        self.slot = 0
        self.cycles = 0
        self._specs: list[TaskSpec] = []
        self._fns: dict[str, SlotTask] = {}
        self._plan = place([], max_frame_slots)
        self._compiled: tuple[tuple[SlotTask, ...], ...] = ((),)
        self._started = False

    def add(
        self,
        name: str,
        period_ns: int,
        fn: SlotTask,
        *,
        cost: float = 1.0,
        offset: int | None = None,
    ) -> None:
        if self._started:
            raise RuntimeError(f"cannot add task {name!r}: the cycle is already running")
        spec = TaskSpec(name, multiple_of(period_ns, self.base_period_ns, name), cost, offset)
        plan = place([*self._specs, spec], self.max_frame_slots)  # raises before mutating
        self._specs.append(spec)
        self._fns[name] = fn
        self._plan = plan
        self._compiled = tuple(tuple(self._fns[n] for n in names) for names in plan.slots)

    @property
    def plan(self) -> FramePlan:
        return self._plan

    @property
    def frame_slots(self) -> int:
        return self._plan.frame_slots

    def run(self, info: CycleInfo) -> None:
        self._started = True
        slot = info.tick % self._plan.frame_slots
        self.slot = slot
        for fn in self._compiled[slot]:
            fn(info)
        self.cycles += 1

    def describe(self) -> str:
        """The frame as an operator reads it: one line per slot with its tasks."""
        plan = self._plan
        lines = [
            f"major frame: {plan.frame_slots} slots × {_ms(self.base_period_ns)} = "
            f"{_ms(plan.frame_slots * self.base_period_ns)}"
        ]
        periods = {s.name: _ms(s.multiple * self.base_period_ns) for s in self._specs}
        for i, names in enumerate(plan.slots):
            tasks = ", ".join(f"{n} ({periods[n]})" for n in names) or "-"
            lines.append(f"  slot {i:>3}: {tasks}")
        return "\n".join(lines)

    def status(self) -> dict[str, Any]:
        return {
            "frame_slots": self._plan.frame_slots,
            "slot": self.slot,
            "cycles": self.cycles,
            "tasks": {
                s.name: {
                    "period_ms": s.multiple * self.base_period_ns / 1e6,
                    "offset": self._plan.offsets[s.name],
                }
                for s in self._specs
            },
        }
