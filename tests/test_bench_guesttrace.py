"""The CPU trace of the paired run: the timeline's arithmetic on lines of the kernel's
own format, then a real ftrace of a real process that takes a CPU for a known time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))

from guesttrace import FOREIGN_FREE_US, Timeline, parse_line
from tracefs import CpuTrace, tracefs_root

CPU = max(os.sched_getaffinity(0))

# 100.000000-100.000100: the cycle (pid 7); a timer interrupt, then the probe; a virtio
# interrupt on top of a kworker; idle; the cycle again, with a write and its sleeps. (The
# sched_switch lines are cut short: the timeline reads only the line's prefix.)
LINES = """\
# tracer: nop
#
          python-7       [001] d.h1.   100.000000: local_timer_entry: vector=236
          python-7       [001] d.h1.   100.000004: local_timer_exit: vector=236
          python-7       [001] d..2.   100.000005: sched_switch: ==> cyclictest 9
      cyclictest-9       [001] d..2.   100.000012: sched_switch: ==> kworker/1:3 40
     kworker/1:3-40      [001] d.h1.   100.000020: irq_handler_entry: irq=11 name=virtio0
     kworker/1:3-40      [001] d.h1.   100.000050: irq_handler_exit: irq=11 ret=handled
     kworker/1:3-40      [001] ..s1.   100.000050: softirq_entry: vec=9 [action=RCU]
     kworker/1:3-40      [001] ..s1.   100.000053: softirq_exit: vec=9 [action=RCU]
     kworker/1:3-40      [001] d..2.   100.000060: sched_switch: ==> swapper/1 0
          <idle>-0       [001] d..2.   100.000080: sched_switch: ==> python 7
          python-7       [001] .....   100.000090: sys_enter: NR 1 (2, 7ffd, 9, 0, 0, 0)
          python-7       [001] d....   100.000095: page_fault_user: address=0x7f
          python-7       [001] .....   100.000100: sys_enter: NR 230 (1, 1, 7ffd, 0, 0, 0)
          python-7       [001] .....   100.000120: sys_enter: NR 230 (1, 1, 7ffd, 0, 0, 0)
"""
T0 = 100 * 1_000_000_000


def at(us: int) -> int:
    return T0 + us * 1000


def test_the_timeline_gives_each_microsecond_to_whoever_had_the_cpu() -> None:
    timeline = Timeline.from_lines(LINES.splitlines())
    a = timeline.activity(at(0), at(100), cycle_tid=7)
    assert a.cycle_us == 1 + 20  # until the switch, then from the idle's switch back
    assert a.probe_us == 7
    assert a.idle_us == 20
    assert a.others_us == {"kworker/1:3-40": 8 + 7}  # before and after its interrupts
    assert a.interrupts_us == {"local_timer": 4, "virtio0": 30, "softirq_rcu": 3}
    assert a.foreign_us == 15 + 30 + 3  # the timer interrupt is the cycle's and probe's
    # its sleep (the call it makes most) is not counted, a write is; the end is open
    assert timeline.sleep_syscall(7) == 230
    assert (a.cycle_syscalls, a.cycle_page_faults) == ([1], 1)
    # a window is cut exactly, and another task's kernel entries are not the cycle's
    part = timeline.activity(at(30), at(55), cycle_tid=7)
    assert part.interrupts_us == {"virtio0": 20, "softirq_rcu": 3} and part.cycle_us == 0
    assert part.others_us == {"kworker/1:3-40": 2}
    assert timeline.activity(at(0), at(100), cycle_tid=9).probe_us == 0  # pid wins
    assert timeline.covers(at(0), at(120)) and not timeline.covers(at(0), at(121))


def test_a_line_of_another_shape_is_passed_over() -> None:
    assert parse_line("# tracer: nop") is None
    assert parse_line("") is None
    event = parse_line(
        "   tokio-rt-worker-81    [001] d..2.  9297.823466: sched_switch: prev_comm=x"
    )
    assert event is not None
    assert (event.comm, event.pid, event.ts_ns) == ("tokio-rt-worker", 81, 9_297_823_466_000)


BUSY = textwrap.dedent(
    f"""
    import os, sys, time
    os.sched_setaffinity(0, {{{CPU}}})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(70))
    start = time.monotonic_ns()
    while time.monotonic_ns() < start + 30_000_000:
        pass
    print(os.getpid(), start, time.monotonic_ns())
    """
)


def test_a_real_trace_shows_a_process_that_held_the_cpu() -> None:
    tracer = CpuTrace(CPU, 2)
    reason = tracer.unavailable()
    if reason is not None:  # not root, or a kernel without ftrace
        pytest.skip(reason)
    with tracer:
        tracer.start()
        time.sleep(0.05)
        done = subprocess.run(
            [sys.executable, "-c", BUSY], capture_output=True, text=True, timeout=30, check=True
        )
        time.sleep(0.05)
        lines, lost = tracer.stop()
    root = tracefs_root()
    assert root is not None and tracer.instance is None
    assert not (root / "instances" / tracer.name).exists(), "the instance was left behind"
    pid, start, end = map(int, done.stdout.split())
    timeline = Timeline.from_lines(lines)
    assert lost == 0 and timeline.covers(start, end)
    busy = timeline.activity(start, end, cycle_tid=-1)
    mine = [us for key, us in busy.others_us.items() if key.endswith(f"-{pid}")]
    # SCHED_FIFO 70 on its own CPU: nothing of the guest but interrupts ran beside it
    assert mine and mine[0] >= 0.9 * (end - start) / 1000, busy.as_dict()
    assert busy.foreign_us > FOREIGN_FREE_US  # the process itself is foreign to a cycle


def test_a_killed_run_s_instance_is_removed_by_the_next_run() -> None:
    tracer = CpuTrace(CPU, 1, name=f"mxrc-test-{os.getpid()}")
    if (reason := tracer.unavailable()) is not None:
        pytest.skip(reason)
    root = tracefs_root()
    assert root is not None
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "30"])
    stale = root / "instances" / f"mxrc-bench-{gone.pid}"
    running = root / "instances" / f"mxrc-bench-{alive.pid}"
    try:
        stale.mkdir()
        running.mkdir()
        with tracer:
            tracer.start()
            tracer.stop()
        assert tracer.removed_stale == [stale.name]
        assert not stale.exists() and running.exists()  # a live run's is left alone
    finally:
        alive.kill()
        alive.wait()
        for instance in (stale, running):
            if instance.exists():
                instance.rmdir()
