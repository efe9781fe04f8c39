"""The ring feed: real ring records decoded into bus events, a real second process
writing the ring the feed reads (``mxrc rt`` itself, and forked writers that lap it),
and silence detection on an injected clock.

Records are produced the way the RT process produces them: CYCLE_STATUS, FAULT and
STOPPED by a real :class:`RtHook` over real segments (control block, ring, data store),
STARTED and CYCLE_HISTOGRAM by staging ``payload_f64`` at the documented word indices
and publishing, as the hook does. Segments live in a fresh directory under /dev/shm
that is removed whatever happens.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from mxrc.rt.control import load_control_law
from mxrc.rt.controlblock import ControlBlock, Mode
from mxrc.rt.cycle import CycleInfo
from mxrc.rt.datastore import DataStoreSegment, Side
from mxrc.rt.executive import Executive
from mxrc.rt.process import (
    DEFAULT_KEYS,
    RING_LAYOUT,
    STATUS_DRIVING,
    STATUS_JOINT_POSITION,
    STATUS_MISSES,
    STATUS_SLOT,
    STATUS_TRACKING_ERROR,
    STATUS_WAKE_P99_US,
    FaultCause,
    RecordType,
    RtHook,
    segment_names,
)
from mxrc.rt.ring import Record, Ring, RingLayout, RingWriter, TraceContext, lap_slack
from mxrc.rt.stats import DeadlineCounter, Histogram
from mxrc.service.events import (
    WAKE_BUCKETS_NS,
    BusEvent,
    CycleHistogram,
    CycleStatus,
    RingDrops,
    RtFault,
    RtLost,
    RtStarted,
    RtStopped,
)
from mxrc.service.ringfeed import (
    CYCLE_HISTOGRAM,
    STARTED_CPU,
    STARTED_PERIOD_NS,
    STARTED_PRIORITY,
    RingFeed,
    decode,
    fault_cause_name,
)
from tests.rt import children

PERIOD_NS = 1_000_000
LAW = "mxrc.rt.plant:SimulatedJoint"
TRACE = TraceContext(bytes(range(1, 17)), bytes(range(0xA1, 0xA9)), 1)
SMALL = RingLayout(capacity=64)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mxrc-test-ringfeed-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unique(tag: str) -> str:
    return f"mxrc-test-{os.getpid()}-{secrets.token_hex(4)}-{tag}"


class HookRig:
    """The RT side in this process: a real :class:`RtHook` over real segments, stepped
    by hand, so each test decides exactly which records it writes."""

    def __init__(self, directory: Path) -> None:
        control, ring, store = segment_names("mxrc-test", f"t{os.getpid()}{secrets.token_hex(3)}")
        self.control = ControlBlock.create(control, directory=directory)
        self.ring = Ring.create(ring, RING_LAYOUT, directory=directory)
        self.store_segment = DataStoreSegment.create(store, DEFAULT_KEYS, directory=directory)
        law = load_control_law(LAW, PERIOD_NS / 1e9)
        executive = Executive(PERIOD_NS)
        executive.add("control_law", PERIOD_NS, law.step)
        self.writer = self.ring.writer()
        self.hook = RtHook(
            law,
            executive,
            self.control.reader(),
            self.writer,
            self.store_segment.store(Side.RT),
            frame_slots=10,
            status_every=1,
        )
        self.hook.wake_latency = Histogram()
        self.hook.deadlines = DeadlineCounter(budget_ns=500_000)
        self.cb = self.control.writer()
        self.nonrt_store = self.store_segment.store(Side.NONRT)
        self.reader = self.ring.reader()
        self.info = CycleInfo(PERIOD_NS)

    def step(self, tick: int) -> list[Record]:
        """Run the hook for one cycle; the records it published."""
        self.info.tick = tick
        self.hook(self.info)
        return self.reader.poll()

    def grant(self, token: int = 7, lease_ns: int = 30_000_000_000) -> None:
        self.cb.write(Mode.RUNNING, token, time.monotonic_ns() + lease_ns)

    def close(self) -> None:
        for segment in (self.store_segment, self.ring, self.control):
            segment.close()


@pytest.fixture
def rig(shm_dir: Path) -> Iterator[HookRig]:
    made = HookRig(shm_dir)
    try:
        yield made
    finally:
        made.close()


def only(records: list[Record], rtype: int) -> Record:
    found = [r for r in records if r.rtype == rtype]
    assert len(found) == 1, f"expected one record of type {rtype}, got {records}"
    return found[0]


def stage_status(writer: RingWriter, cycle: int, t_ns: int) -> None:
    """A CYCLE_STATUS record whose words are a function of ``cycle``, published exactly
    as :meth:`RtHook._publish_status` does (staged in place, then ``publish``)."""
    p = writer.payload_f64
    p[STATUS_SLOT] = cycle % 10
    p[STATUS_WAKE_P99_US] = 12.5
    p[STATUS_MISSES] = cycle // 100
    p[STATUS_TRACKING_ERROR] = cycle * 1e-6
    p[STATUS_DRIVING] = 1.0
    p[STATUS_JOINT_POSITION] = cycle * 1e-3
    writer.publish(RecordType.CYCLE_STATUS, cycle, t_ns)


def stage_started(writer: RingWriter, cpu: int, priority: int, period_ns: int) -> None:
    p = writer.payload_f64
    for i in range(len(p)):
        p[i] = 0.0
    p[STARTED_CPU], p[STARTED_PRIORITY], p[STARTED_PERIOD_NS] = cpu, priority, period_ns
    writer.publish(RecordType.STARTED, 0, time.monotonic_ns())


def stage_histogram(writer: RingWriter, cycle: int, latencies_ns: list[int]) -> list[int]:
    """The CYCLE_HISTOGRAM words of ``latencies_ns``: cumulative counts per bound, the
    total, the sum in ns. Returns the counts."""
    counts = [sum(1 for v in latencies_ns if v <= bound) for bound in WAKE_BUCKETS_NS]
    p = writer.payload_f64
    for i, count in enumerate(counts):
        p[i] = count
    p[len(counts)] = len(latencies_ns)
    p[len(counts) + 1] = sum(latencies_ns)
    writer.publish(CYCLE_HISTOGRAM, cycle, time.monotonic_ns())
    return counts


# --- decode: each record type, as the RT side writes it -----------------------------------


def test_cycle_status_from_the_hook_decodes_to_its_figures(rig: HookRig) -> None:
    for latency in (8_000, 9_000, 15_000, 40_000):
        rig.hook.wake_latency.record(latency)  # type: ignore[union-attr]
    for response in (100_000, 600_000, 700_000):
        rig.hook.deadlines.observe(response)  # type: ignore[union-attr]
    rig.grant()
    record = only(rig.step(13), RecordType.CYCLE_STATUS)
    event = decode(record)
    assert isinstance(event, CycleStatus)
    hist = rig.hook.wake_latency
    assert hist is not None
    assert event.cycle == 13 and event.slot == 3 and event.mono_ns == record.t_ns
    assert event.wake_p99_us == hist.percentile(0.99) / 1000 > 0
    assert event.misses == 2
    assert event.driving is True
    assert event.joint_position == rig.nonrt_store.get("joint_position")
    assert event.tracking_error == rig.nonrt_store.get("tracking_error")
    assert event.traceparent is None  # the cycle had no trace context

    rig.writer.set_trace(TRACE)
    traced = decode(only(rig.step(14), RecordType.CYCLE_STATUS))
    assert isinstance(traced, CycleStatus)
    assert traced.traceparent == TRACE.traceparent
    assert traced.traceparent == "00-0102030405060708090a0b0c0d0e0f10-a1a2a3a4a5a6a7a8-01"


@pytest.mark.parametrize(
    ("why", "cause"),
    [
        ("lease", "lease_expired"),
        ("token", "token_changed"),
        ("mode", "mode_left_running"),
    ],
)
def test_fault_from_the_hook_names_its_cause(rig: HookRig, why: str, cause: str) -> None:
    rig.grant(token=7)
    assert decode(only(rig.step(0), RecordType.CYCLE_STATUS)).driving  # type: ignore[union-attr]
    rig.writer.set_trace(TRACE)
    now = time.monotonic_ns()
    if why == "lease":
        rig.cb.write(Mode.RUNNING, 7, now - 5_000_000)
    elif why == "token":
        rig.cb.write(Mode.RUNNING, 8, now + 30_000_000_000)
    else:
        rig.cb.write(Mode.READY, 7, now + 30_000_000_000)
    records = rig.step(1)
    event = decode(only(records, RecordType.FAULT))
    assert isinstance(event, RtFault)
    assert event.cause == cause
    assert event.cycle == 1
    assert event.expected_token == (0 if why == "mode" else 7)
    assert event.traceparent == TRACE.traceparent
    if why == "lease":
        assert (event.mode, event.token) == (Mode.RUNNING, 7)
        assert -1_000_000_000 < event.lease_left_ns <= -5_000_000  # expired ~5 ms before
    elif why == "token":
        assert (event.mode, event.token) == (Mode.RUNNING, 8)
        assert event.lease_left_ns > 29_000_000_000
    else:
        assert (event.mode, event.token) == (Mode.READY, 7)
    status = decode(only(records, RecordType.CYCLE_STATUS))
    assert isinstance(status, CycleStatus) and status.driving is False  # held that cycle


def test_stopped_from_the_hook_says_whether_it_was_driving(rig: HookRig) -> None:
    rig.grant()
    for tick in range(5):
        rig.step(tick)
    rig.hook.deadlines.observe(900_000)  # type: ignore[union-attr]
    now = time.monotonic_ns()
    rig.hook.finish(5, now)
    record = only(rig.reader.poll(), RecordType.STOPPED)
    event = decode(record)
    assert event == RtStopped(cycle=5, mono_ns=now, was_driving=True, misses=1, cycles=5)


def test_started_and_histogram_records_decode(rig: HookRig) -> None:
    stage_started(rig.writer, cpu=3, priority=80, period_ns=PERIOD_NS)
    latencies = [5_000, 19_000, 20_000, 21_000, 60_000, 150_000, 450_000, 999_000, 2_000_000]
    counts = stage_histogram(rig.writer, 42, latencies)
    started, histogram = rig.reader.poll()
    event = decode(started)
    assert event == RtStarted(
        cycle=0, mono_ns=started.t_ns, cpu=3, priority=80, period_ns=PERIOD_NS
    )
    hist = decode(histogram)
    assert isinstance(hist, CycleHistogram)
    assert hist.cycle == 42 and hist.mono_ns == histogram.t_ns
    assert hist.bounds_ns == WAKE_BUCKETS_NS
    assert hist.counts == tuple(counts) == (3, 4, 5, 6, 7, 8)  # ≤ 20 µs includes 20 µs
    assert hist.total == 9 and hist.sum_ns == sum(latencies)
    assert all(isinstance(c, int) for c in hist.counts)


def test_unknown_types_and_broken_integer_words_decode_to_none(rig: HookRig) -> None:
    rig.writer.write(77, 1, 2, [1.0, 2.0])
    rig.writer.write(RecordType.CYCLE_STATUS, 3, 4, [0.0, 1.0, math.nan, 0.0, 0.0, 0.0])
    rig.writer.write(RecordType.FAULT, 5, 6, [math.inf])
    unknown, nan_misses, inf_cause = rig.reader.poll()
    assert decode(unknown) is None
    assert decode(nan_misses) is None
    assert decode(inf_cause) is None


def test_fault_cause_names() -> None:
    assert [fault_cause_name(c) for c in FaultCause] == [c.name.lower() for c in FaultCause]
    assert fault_cause_name(FaultCause.LEASE_EXPIRED) == "lease_expired"
    assert fault_cause_name(99) == "cause_99"


# --- the feed against a second process ------------------------------------------------------


def _write_session(name: str, directory: Path, statuses: int) -> int:
    """Child: what an RT process's life puts in the ring, plus one record of a type this
    build does not know."""
    ring = Ring.attach(name, SMALL, directory=directory)
    writer = ring.writer()
    stage_started(writer, cpu=1, priority=0, period_ns=PERIOD_NS)
    for cycle in range(statuses):
        stage_status(writer, cycle, time.monotonic_ns())
        stage_histogram(writer, cycle, [10_000] * (cycle + 1))
        if cycle == 2:
            writer.write(200, cycle, time.monotonic_ns(), [1.0])
    writer.write(RecordType.STOPPED, statuses, time.monotonic_ns(), [0.0, 0.0, statuses])
    ring.close()
    return 0


def _write_statuses(name: str, directory: Path, first: int, count: int) -> int:
    """Child: ``count`` CYCLE_STATUS records numbered from ``first``, with no reader
    keeping up."""
    ring = Ring.attach(name, SMALL, directory=directory)
    writer = ring.writer()
    assert writer.published == first
    for cycle in range(first, first + count):
        stage_status(writer, cycle, time.monotonic_ns())
    ring.close()
    return 0


def test_feed_publishes_a_second_process_records_in_order(shm_dir: Path) -> None:
    name = unique("ring")
    events: list[BusEvent] = []
    with children() as kids, Ring.create(name, SMALL, directory=shm_dir) as ring:
        feed = RingFeed(ring.reader(), events.append, silence_s=1.0)
        pid = kids.fork(lambda: _write_session(name, shm_dir, statuses=20))
        deadline = time.monotonic() + 10
        while not any(isinstance(e, RtStopped) for e in events):
            assert time.monotonic() < deadline, f"no STOPPED after {len(events)} events"
            feed.poll()
            time.sleep(0.0005 if events else 0.001)
        assert kids.exit_code(pid) == 0
    assert drops(events) == []  # 63 records fit the 64 slots, however late the reads
    assert isinstance(events[0], RtStarted) and events[0].priority == 0
    statuses = [e for e in events if isinstance(e, CycleStatus)]
    hists = [e for e in events if isinstance(e, CycleHistogram)]
    assert [s.cycle for s in statuses] == list(range(20))
    assert [h.total for h in hists] == list(range(1, 21))
    kinds = [type(e).__name__ for e in events[1:41]]
    assert kinds == ["CycleStatus", "CycleHistogram"] * 20  # histogram right after status
    last = events[-1]
    assert isinstance(last, RtStopped)
    assert last == RtStopped(cycle=20, mono_ns=last.mono_ns, was_driving=False, misses=0, cycles=20)
    assert feed.records == 1 + 40 + 1 + 1 and feed.unknown == 1 and feed.malformed == 0
    assert feed.dropped == 0


def test_overwritten_records_are_published_as_ring_drops_with_the_exact_count(
    shm_dir: Path,
) -> None:
    name = unique("ring")
    events: list[BusEvent] = []
    slack = lap_slack(SMALL.capacity)
    with children() as kids, Ring.create(name, SMALL, directory=shm_dir) as ring:
        feed = RingFeed(ring.reader(), events.append, silence_s=1.0)
        assert feed.poll() == 0 and events == []

        pid = kids.fork(lambda: _write_statuses(name, shm_dir, 0, 1000))
        assert kids.exit_code(pid) == 0
        read = feed.poll()
        lost = 1000 - SMALL.capacity + slack  # everything before the retained window
        assert isinstance(events[0], RingDrops)  # published before the records after the gap
        assert drops(events) == [RingDrops(mono_ns=events[0].mono_ns, new=lost, total=lost)]
        assert cycles(events) == list(range(lost, 1000))
        assert len(events) == 1 + read
        assert read == 1000 - lost == feed.records

        events.clear()
        pid = kids.fork(lambda: _write_statuses(name, shm_dir, 1000, 500))
        assert kids.exit_code(pid) == 0
        read = feed.poll()
        again = 1500 - SMALL.capacity + slack - 1000
        (drop,) = drops(events)
        assert drop == RingDrops(mono_ns=drop.mono_ns, new=again, total=lost + again)
        assert cycles(events) == list(range(1000 + again, 1500))
        assert feed.records + feed.dropped == 1500

        events.clear()
        pid = kids.fork(lambda: _write_statuses(name, shm_dir, 1500, 30))
        assert kids.exit_code(pid) == 0
        assert feed.poll() == 30
        assert not any(isinstance(e, RingDrops) for e in events)  # nothing lost this time
        assert feed.dropped == lost + again


# --- the feed against mxrc rt itself --------------------------------------------------------


RT_MAIN = """
import sys
from pathlib import Path
from mxrc.config import load_config
from mxrc.rt import process
config = load_config(Path(sys.argv[1]))
sys.exit(process.run(config, config.node_id, print_line=lambda line: print(line, flush=True)))
"""


class RealRt:
    """Segments as nonrt creates them and ``mxrc rt`` started on them."""

    def __init__(self, shm_dir: Path, tmp: Path) -> None:
        self.node = f"t{os.getpid()}-{secrets.token_hex(3)}"
        control, ring, store = segment_names("mxrc-test", self.node)
        self.control = ControlBlock.create(control, directory=shm_dir)
        self.ring = Ring.create(ring, RING_LAYOUT, directory=shm_dir)
        self.store = DataStoreSegment.create(store, DEFAULT_KEYS, directory=shm_dir)
        self.config = tmp / "mxrc.toml"
        self.config.write_text(
            f'[node]\nid = "{self.node}"\n[cycle]\nperiod_ms = 1.0\n'
            f'[rt]\nhold_dma_latency = false\nshm_dir = "{shm_dir}"\n'
            'shm_prefix = "mxrc-test"\nstatus_every_cycles = 5\nattach_wait_s = 1.0\n'
        )
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        """``mxrc rt --config FILE``, entered below the command line so that only the
        RT process's own modules are imported (as in ``mxrc.rt_cli``)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RT_MAIN, str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self.proc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                self.proc.communicate(timeout=5)
        for segment in (self.store, self.ring, self.control):
            segment.close()


@pytest.fixture
def real_rt(shm_dir: Path, tmp_path: Path) -> Iterator[RealRt]:
    made = RealRt(shm_dir, tmp_path)
    try:
        yield made
    finally:
        made.close()


def poll_until(feed: RingFeed, found: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        feed.poll()
        time.sleep(0.002)


def test_feed_follows_mxrc_rt_until_its_clean_stop(real_rt: RealRt) -> None:
    events: list[BusEvent] = []
    feed = RingFeed(real_rt.ring.reader(), events.append, silence_s=0.2)
    proc = real_rt.start()

    def statuses() -> list[CycleStatus]:
        return [e for e in events if isinstance(e, CycleStatus)]

    poll_until(feed, lambda: len(statuses()) >= 5 or proc.poll() is not None, "5 statuses")
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    cycles = [s.cycle for s in statuses()]
    assert cycles == sorted(set(cycles))
    assert not any(s.driving for s in statuses())  # INIT: nothing permitted
    assert feed.check_silence(time.monotonic_ns()) is None  # records are flowing

    proc.send_signal(signal.SIGTERM)
    poll_until(feed, lambda: any(isinstance(e, RtStopped) for e in events), "RtStopped")
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    stopped = [e for e in events if isinstance(e, RtStopped)]
    assert len(stopped) == 1 and stopped[0].was_driving is False and stopped[0].cycles > 0
    assert feed.unknown == 0 and feed.malformed == 0 and feed.dropped == 0
    assert feed.check_silence(time.monotonic_ns() + 10_000_000_000) is None  # a clean stop


def test_feed_reports_mxrc_rt_lost_after_sigkill(real_rt: RealRt) -> None:
    events: list[BusEvent] = []
    feed = RingFeed(real_rt.ring.reader(), events.append, silence_s=0.2)
    proc = real_rt.start()
    poll_until(
        feed,
        lambda: sum(isinstance(e, CycleStatus) for e in events) >= 3 or proc.poll() is not None,
        "3 statuses",
    )
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    killed_at = time.monotonic_ns()
    lost: RtLost | None = None
    deadline = time.monotonic() + 5
    while lost is None:
        assert time.monotonic() < deadline, "no RtLost within 5 s of the kill"
        feed.poll()
        lost = feed.check_silence(time.monotonic_ns())
        time.sleep(0.005)
    assert not any(isinstance(e, RtStopped) for e in events)
    assert lost.silence_s >= 0.2
    assert lost.mono_ns - killed_at < 2_000_000_000
    assert feed.check_silence(time.monotonic_ns() + 10_000_000_000) is None  # said once


# --- silence, on an injected clock ----------------------------------------------------------


def last_record(feed: RingFeed) -> int | None:
    return feed.last_record_ns


def cycles(events: list[BusEvent]) -> list[int]:
    return [e.cycle for e in events if isinstance(e, CycleStatus)]


def drops(events: list[BusEvent]) -> list[RingDrops]:
    return [e for e in events if isinstance(e, RingDrops)]


class Clock:
    def __init__(self, now: int = 1_000_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def small_ring(shm_dir: Path) -> Iterator[Ring]:
    with Ring.create(unique("ring"), SMALL, directory=shm_dir) as ring:
        yield ring


def test_silence_is_reported_once_after_records_stop_and_rearmed_when_they_flow(
    small_ring: Ring,
) -> None:
    clock = Clock()
    events: list[BusEvent] = []
    writer = small_ring.writer()
    feed = RingFeed(small_ring.reader(), events.append, silence_s=0.5, clock=clock)
    clock.now += 10_000_000_000
    assert feed.check_silence(clock.now) is None  # never heard from, not expected: quiet
    assert last_record(feed) is None

    stage_status(writer, 1, clock.now)
    assert feed.poll() == 1
    arrived = clock.now
    assert last_record(feed) == arrived and feed.records == 1
    assert feed.check_silence(arrived + 499_999_999) is None
    lost = feed.check_silence(arrived + 500_000_000)
    assert lost == RtLost(mono_ns=arrived + 500_000_000, silence_s=0.5)
    assert feed.check_silence(arrived + 900_000_000) is None  # once per silence
    assert [type(e) for e in events] == [CycleStatus]  # check_silence publishes nothing

    clock.now = arrived + 2_000_000_000
    assert feed.poll() == 0
    assert feed.check_silence(clock.now + 5_000_000_000) is None  # still the same silence
    stage_status(writer, 2, clock.now)
    feed.poll()  # records again: re-armed
    again = clock.now
    assert feed.check_silence(again + 400_000_000) is None
    second = feed.check_silence(again + 700_000_000)
    assert second == RtLost(mono_ns=again + 700_000_000, silence_s=0.7)


def test_expected_rt_is_lost_even_if_it_never_wrote(small_ring: Ring) -> None:
    clock = Clock()
    feed = RingFeed(small_ring.reader(), lambda e: None, silence_s=1.0, clock=clock, expect_rt=True)
    start = clock.now
    assert feed.check_silence(start + 999_999_999) is None
    assert feed.check_silence(start + 1_000_000_000) == RtLost(start + 1_000_000_000, 1.0)
    assert feed.check_silence(start + 5_000_000_000) is None


def test_a_clean_stop_is_not_silence_unless_the_rt_process_is_expected_back(
    small_ring: Ring,
) -> None:
    clock = Clock()
    writer = small_ring.writer()
    feed = RingFeed(small_ring.reader(), lambda e: None, silence_s=1.0, clock=clock)
    stage_status(writer, 1, clock.now)
    writer.write(RecordType.STOPPED, 2, clock.now, [1.0, 0.0, 2.0])
    feed.poll()
    stopped_at = clock.now
    assert feed.check_silence(stopped_at + 60_000_000_000) is None
    clock.now = stopped_at + 3_000_000_000
    feed.expect_rt = True  # a supervisor restarts it: its absence counts from now
    assert feed.check_silence(clock.now + 999_999_999) is None
    assert feed.check_silence(clock.now + 1_000_000_000) == RtLost(clock.now + 1_000_000_000, 1.0)


def test_silence_must_be_positive(small_ring: Ring) -> None:
    with pytest.raises(ValueError, match="silence_s"):
        RingFeed(small_ring.reader(), lambda e: None, silence_s=0.0)


# --- the asyncio loop -----------------------------------------------------------------------


def test_run_polls_on_the_event_loop_until_cancelled(small_ring: Ring) -> None:
    events: list[BusEvent] = []
    writer = small_ring.writer()
    feed = RingFeed(small_ring.reader(), events.append, silence_s=1.0)

    async def scenario() -> None:
        task = asyncio.create_task(feed.run(0.001))
        try:
            for cycle in range(30):
                stage_status(writer, cycle, time.monotonic_ns())
                if cycle % 10 == 9:
                    await asyncio.sleep(0.003)
            async with asyncio.timeout(5):
                while len(events) < 30:
                    await asyncio.sleep(0.001)
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        assert task.cancelled()

    asyncio.run(scenario())
    assert cycles(events) == list(range(30)) and len(events) == 30
    assert feed.records == 30
