from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxrc.rt import sched
from mxrc.rt.hotplug import Action, PinWatch, cpu_online, decide

ALLOWED = frozenset(os.sched_getaffinity(0))
CPU = max(ALLOWED)
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two allowed CPUs")


@pytest.mark.parametrize(
    ("online", "affinity", "was_online", "action"),
    [
        (True, {3}, True, Action.NONE),  # pinned where it belongs
        (True, {0, 1, 2, 3}, True, Action.REPIN),  # affinity widened from outside
        (True, {1}, True, Action.REPIN),  # moved elsewhere
        (False, {0, 1, 2}, True, Action.WENT_OFFLINE),  # the edge: reported once
        (False, {0, 1, 2}, False, Action.NONE),  # still offline: nothing can be done
        (True, {0, 1, 2, 3}, False, Action.REPIN),  # back online: pin again
        (True, {3}, False, Action.NONE),  # back, and something already re-pinned it
    ],
)
def test_decide(online: bool, affinity: set[int], was_online: bool, action: Action) -> None:
    assert decide(3, online, affinity, was_online) is action


def test_cpu_online_reads_sysfs(tmp_path: Path) -> None:
    (tmp_path / "cpu0").mkdir()  # no online file: not hot-pluggable, online
    (tmp_path / "cpu1").mkdir()
    (tmp_path / "cpu1" / "online").write_text("0\n")
    (tmp_path / "cpu2").mkdir()
    (tmp_path / "cpu2" / "online").write_text("1\n")
    assert cpu_online(0, tmp_path) is True
    assert cpu_online(1, tmp_path) is False
    assert cpu_online(2, tmp_path) is True
    assert cpu_online(7, tmp_path) is False  # no such CPU


@pytest.fixture
def pinned_thread() -> Iterator[int]:
    """A live thread pinned to CPU (as the cycle thread is); yields its tid."""
    ready, done = threading.Event(), threading.Event()
    tids: list[int] = []

    def body() -> None:
        tids.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert ready.wait(5)
    sched.pin_thread(tids[0], CPU)
    try:
        yield tids[0]
    finally:
        done.set()
        thread.join(5)


@needs_two_cpus
def test_lost_affinity_is_pinned_again(pinned_thread: int) -> None:
    tid = pinned_thread
    lines: list[str] = []
    watch = PinWatch(tid, CPU, lines.append)
    assert watch.poll() is Action.NONE and not lines
    os.sched_setaffinity(tid, ALLOWED)  # what the kernel does when the CPU goes away
    assert os.sched_getaffinity(tid) == ALLOWED
    assert watch.poll() is Action.REPIN
    assert os.sched_getaffinity(tid) == {CPU}
    assert len(lines) == 1 and f"re-pinned the cycle thread (tid {tid}) to CPU {CPU}" in lines[0]
    assert watch.poll() is Action.NONE and len(lines) == 1


@needs_two_cpus
def test_offline_then_online_repins_once_back(pinned_thread: int) -> None:
    tid = pinned_thread
    online = {"now": True}
    lines: list[str] = []
    watch = PinWatch(tid, CPU, lines.append, online=lambda cpu: online["now"])
    online["now"] = False
    others = ALLOWED - {CPU}
    os.sched_setaffinity(tid, others)  # the kernel moved it off the offline CPU
    assert watch.poll() is Action.WENT_OFFLINE
    assert watch.poll() is Action.NONE  # no line every second while it stays offline
    assert os.sched_getaffinity(tid) == others  # nothing pinned meanwhile
    assert len(lines) == 1 and f"CPU {CPU} went offline" in lines[0]
    online["now"] = True
    assert watch.poll() is Action.REPIN
    assert os.sched_getaffinity(tid) == {CPU}
    assert len(lines) == 2 and "CPU came back online" in lines[1]


def test_a_refused_pin_is_reported_once() -> None:
    lines: list[str] = []

    def refuse(tid: int, cpu: int) -> None:
        raise ValueError(f"CPU {cpu} is not one this process may run on")

    watch = PinWatch(
        1, 5, lines.append, online=lambda cpu: True, affinity=lambda tid: {0, 1}, pin=refuse
    )
    assert watch.poll() is Action.REPIN
    assert watch.poll() is Action.REPIN
    assert len(lines) == 1 and "could not pin the cycle thread to CPU 5 again" in lines[0]
