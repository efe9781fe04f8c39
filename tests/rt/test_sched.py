"""The OS calls behind the cycle, each checked against what the kernel reports."""

from __future__ import annotations

import mmap
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxrc.rt import sched
from mxrc.rt.cpu import format_cpulist


def proc_sched(tid: int) -> dict[str, str]:
    """/proc/self/task/<tid>/sched as key → value (policy 1 = FIFO, prio = 99 − rtprio)."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/self/task/{tid}/sched").read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


@pytest.fixture
def idle_thread() -> Iterator[int]:
    """A parked thread; yields its kernel thread id."""
    release = threading.Event()
    ready = threading.Event()
    tid: list[int] = []

    def park() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        release.wait()

    t = threading.Thread(target=park, daemon=True)
    t.start()
    ready.wait()
    yield tid[0]
    release.set()
    t.join()


def test_sleep_until_is_absolute_and_never_early() -> None:
    sleeper = sched.AbsoluteSleeper()
    for offset_ns in (2_000_000, 100_000, -5_000_000):  # the last one is already past
        deadline = time.monotonic_ns() + offset_ns
        sleeper.sleep_until(deadline)
        assert time.monotonic_ns() >= deadline
    assert sleeper.eintr_retries == 0


def test_sleep_retries_after_signals() -> None:
    """Signals aimed at the sleeping thread end clock_nanosleep with EINTR; the sleep must
    resume until the same absolute deadline instead of returning early."""
    sleeper = sched.AbsoluteSleeper()
    handled: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(signum))
    result: dict[str, int] = {}
    started = threading.Event()

    def sleep() -> None:
        deadline = time.monotonic_ns() + 300_000_000
        result["deadline"] = deadline
        started.set()
        sleeper.sleep_until(deadline)
        result["woke"] = time.monotonic_ns()

    t = threading.Thread(target=sleep)
    try:
        t.start()
        started.wait()
        time.sleep(0.02)
        assert t.ident is not None
        for _ in range(10):
            signal.pthread_kill(t.ident, signal.SIGUSR1)
            time.sleep(0.005)
        t.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert sleeper.eintr_retries >= 1
    assert result["woke"] >= result["deadline"]
    assert handled  # the Python-level handler did run (in the main thread)


def test_fifo_is_set_on_the_thread_only(idle_thread: int) -> None:
    degraded = sched.set_fifo(idle_thread, 42)
    if degraded is not None:
        pytest.skip(f"no real-time privilege here: {degraded}")
    assert sched.thread_policy(idle_thread) == ("SCHED_FIFO", 42)
    fields = proc_sched(idle_thread)
    assert fields["policy"] == "1" and fields["prio"] == str(99 - 42)
    assert sched.thread_policy(threading.get_native_id())[0] == "SCHED_OTHER"


def test_pin_thread_sets_the_thread_affinity(idle_thread: int) -> None:
    target = max(os.sched_getaffinity(0))
    sched.pin_thread(idle_thread, target)
    assert os.sched_getaffinity(idle_thread) == {target}
    assert len(os.sched_getaffinity(0)) == len(sched.allowed_cpus())  # process untouched
    with pytest.raises(ValueError, match=r"CPU 4096 is not one this process may run on") as e:
        sched.pin_thread(idle_thread, 4096)
    assert f"online CPUs: {format_cpulist(sched.online_cpus())}" in str(e.value)


def test_a_cpu_outside_the_callers_affinity_can_still_be_pinned(idle_thread: int) -> None:
    """As with ``isolcpus=``, whose CPUs are in no default affinity: the calling thread is
    narrowed to its lowest CPU, and still pins the idle one to the highest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        sched.pin_thread(idle_thread, cpus[-1])
        assert os.sched_getaffinity(idle_thread) == {cpus[-1]}
    finally:
        os.sched_setaffinity(0, before)


def test_rt_cpu_minus_one_is_the_machines_last_online_cpu_for_every_process() -> None:
    # a unit confines nonrt to 0-2 and rt to 3: both resolve -1 to 3
    online = frozenset(range(4))
    assert sched.resolve_rt_cpu(-1, online, frozenset({0, 1, 2})) == 3
    assert sched.resolve_rt_cpu(-1, online, frozenset({3})) == 3
    assert sched.resolve_rt_cpu(2, online, frozenset({3})) == 2  # given: taken as is
    assert sched.resolve_rt_cpu(-1, frozenset(), frozenset({0, 5})) == 5  # online unknown


def test_lock_memory_really_locks() -> None:
    degraded = sched.lock_memory()
    if degraded is not None:
        pytest.skip(f"mlockall not permitted here: {degraded}")
    try:
        during = sched.locked_kib()
    finally:
        sched.unlock_memory()
    assert during > 1024  # at least the interpreter's resident pages
    assert sched.locked_kib() < during


def test_dma_latency_is_zero_while_held() -> None:
    hold = sched.DmaLatencyHold()
    degraded = hold.acquire()
    if degraded is not None:
        pytest.skip(f"cannot hold {sched.DMA_LATENCY_PATH}: {degraded}")
    try:
        assert hold.held
        assert sched.current_dma_latency_us() == 0
    finally:
        hold.release()
    assert not hold.held


def test_missing_dma_latency_file_is_a_degradation(tmp_path: Path) -> None:
    hold = sched.DmaLatencyHold(str(tmp_path / "cpu_dma_latency"))
    degraded = hold.acquire()
    assert degraded is not None and degraded.what == "dma_latency"
    assert "does not exist" in degraded.detail
    assert "processor.max_cstate=1" in degraded.fix
    assert not hold.held


def test_capability_parsing() -> None:
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000800000\n"
    assert sched.effective_capabilities(status) == 1 << sched.CAP_SYS_NICE
    assert sched.has_capability(sched.CAP_SYS_NICE, status)
    assert not sched.has_capability(sched.CAP_IPC_LOCK, status)
    assert sched.locked_kib("VmLck:\t    2048 kB\n") == 2048


def test_fix_texts_name_the_unit_settings() -> None:
    assert "LimitRTPRIO=99" in sched.sched_fifo_fix(80)
    assert "`ulimit -r 99`" in sched.sched_fifo_fix(80)
    assert "LimitMEMLOCK=infinity" in sched.mlockall_fix()


def test_timer_slack_is_per_thread() -> None:
    got: list[int] = []

    def run() -> None:
        sched.set_timer_slack(1)
        got.append(sched.timer_slack_ns())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert got == [1]
    assert sched.timer_slack_ns() != 1  # the calling thread kept its own


def test_thread_faults_count_this_threads_faults() -> None:
    got: list[tuple[int, int]] = []

    def touch() -> None:
        tid = threading.get_native_id()
        before = sched.thread_faults(tid)
        # A fresh anonymous mapping: malloc may hand back heap pages faulted earlier.
        block = mmap.mmap(-1, 8 << 20)
        block[::4096] = b"\1" * len(block[::4096])
        block.close()
        got.append(sched.thread_faults(tid))
        got.append(before)

    t = threading.Thread(target=touch)
    t.start()
    t.join()
    after, before = got
    assert after[0] - before[0] >= 4  # 2048 small pages, or 4 transparent huge pages


def test_nonrt_leaves_the_rt_cpu_alone_unless_there_is_no_other() -> None:
    cpus, why = sched.housekeeping_cpus(frozenset({0, 1, 2, 3}), 3)
    assert cpus == {0, 1, 2} and "but the RT CPU 3" in why
    cpus, why = sched.housekeeping_cpus(frozenset({0}), 0)
    assert cpus == {0} and "shared with the RT cycle" in why
    cpus, why = sched.housekeeping_cpus(frozenset({0, 1, 2, 3}), 3, frozenset({1, 2, 7}))
    assert cpus == {1, 2} and "nonrt.cpus" in why
    cpus, why = sched.housekeeping_cpus(frozenset({0, 1}), 1, frozenset({1}))
    assert cpus == {1} and "shared with the RT CPU" in why
    cpus, why = sched.housekeeping_cpus(frozenset({0, 1}), 1, frozenset({5}))
    assert cpus == {0, 1} and "names no CPU this process may use" in why
