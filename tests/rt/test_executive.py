"""Slot placement of the cyclic executive and what it runs each cycle."""

from __future__ import annotations

import itertools

import pytest

from mxrc.rt.cycle import CycleInfo
from mxrc.rt.executive import Executive, SlotTask, TaskSpec, place

MS = 1_000_000


def noop(info: CycleInfo) -> None:
    pass


def test_frame_is_lcm_and_each_task_runs_every_k_slots() -> None:
    ex = Executive(MS)
    for name, period in (("control", 1), ("filter", 2), ("supervise", 5), ("log", 10)):
        ex.add(name, period * MS, noop)
    plan = ex.plan
    assert ex.frame_slots == plan.frame_slots == 10
    assert plan.slots_of("control") == list(range(10))
    for name, k in (("filter", 2), ("supervise", 5), ("log", 10)):
        slots = plan.slots_of(name)
        assert len(slots) == 10 // k
        assert all(b - a == k for a, b in itertools.pairwise(slots))
        assert slots[0] == plan.offsets[name] < k


def test_slow_tasks_spread_over_slots() -> None:
    plan = place([TaskSpec(f"t{i}", 10) for i in range(10)])
    assert sorted(plan.offsets.values()) == list(range(10))
    assert max(plan.loads) == 1.0
    plan = place([TaskSpec("a", 2), TaskSpec("b", 2), TaskSpec("c", 4, cost=3.0)])
    assert plan.offsets["a"] != plan.offsets["b"]
    assert max(plan.loads) == 4.0  # c lands on top of one 2-ms task, never both


def test_pinned_offset_is_kept_and_checked() -> None:
    plan = place([TaskSpec("a", 5, offset=3), TaskSpec("b", 5)])
    assert plan.offsets["a"] == 3
    assert plan.offsets["b"] == 0
    with pytest.raises(ValueError, match=r"offset 5 must be in 0\.\.4"):
        place([TaskSpec("a", 5, offset=5)])


def test_period_not_a_multiple_is_rejected_with_the_base() -> None:
    ex = Executive(MS)
    with pytest.raises(ValueError, match=r"'servo': period 1\.5 ms is not a whole multiple of the"):
        ex.add("servo", 1_500_000, noop)
    with pytest.raises(ValueError, match="base cycle 1 ms"):
        ex.add("zero", 0, noop)
    assert ex.frame_slots == 1  # nothing was registered


def test_frame_too_long_and_duplicates_rejected() -> None:
    ex = Executive(MS, max_frame_slots=1000)
    ex.add("a", 997 * MS, noop)
    with pytest.raises(ValueError, match="major frame would be 988027 slots"):
        ex.add("b", 991 * MS, noop)
    with pytest.raises(ValueError, match="registered twice"):
        ex.add("a", 2 * MS, noop)


def test_run_executes_the_slot_of_the_tick() -> None:
    ex = Executive(MS)
    ran: list[tuple[int, str]] = []

    def task(name: str) -> SlotTask:
        def run(info: CycleInfo) -> None:
            ran.append((info.tick, name))

        return run

    for name, period in (("fast", 1), ("slow", 3)):
        ex.add(name, period * MS, task(name))
    info = CycleInfo(MS)
    for tick in (0, 1, 2, 3, 4, 5, 9):  # 6..8 skipped, as after an overrun
        info.tick = tick
        ex.run(info)
        assert ex.slot == tick % 3
    assert ex.cycles == 7
    slow_offset = ex.plan.offsets["slow"]
    expected_slow = [t for t in (0, 1, 2, 3, 4, 5, 9) if t % 3 == slow_offset]
    assert [t for t, n in ran if n == "slow"] == expected_slow
    assert [t for t, n in ran if n == "fast"] == [0, 1, 2, 3, 4, 5, 9]
    with pytest.raises(RuntimeError, match="already running"):
        ex.add("late", MS, noop)


def test_describe_and_status_report_the_frame() -> None:
    ex = Executive(MS)
    ex.add("control", MS, noop)
    ex.add("log", 4 * MS, noop)
    text = ex.describe()
    assert text.splitlines()[0] == "major frame: 4 slots × 1 ms = 4 ms"
    assert "control (1 ms), log (4 ms)" in text
    status = ex.status()
    assert status["frame_slots"] == 4
    assert status["tasks"]["log"] == {"period_ms": 4.0, "offset": ex.plan.offsets["log"]}
