"""The ring: layout and protocol decisions as pure functions, then the real thing between
real processes — a writer SIGKILLed at random moments never gives a reader a torn
record, and a lapped reader counts exactly what it missed.

Both implementations of the hot paths (C, and the Python reference) run every test: the
one-process tests for each, the cross-process drills with a native writer and a Python
reader and the other way round, and a differential test checks they write the same bytes
and read the same records.

Every record's fields are a pure function of its sequence number (:func:`fields_of`), and
successive laps of a slot hold different values, so any mixture of two writes (or of a
write and the zeros of a fresh slot) fails :func:`check_record`.
"""

from __future__ import annotations

import gc
import itertools
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable

import pytest

from mxrc.rt import ring as ring_module
from mxrc.rt.ring import (
    CONTROL_SIZE,
    SLOT_HEADER_SIZE,
    Record,
    Ring,
    RingLayout,
    RingReader,
    RingWriter,
    SlotState,
    TraceContext,
    classify_slot,
    lap_skip,
    lap_slack,
    resync_after_overwrite,
    seq_complete,
    seq_writing,
)
from mxrc.rt.shm import HEADER_SIZE, LocalRegion, SegmentKind
from tests.rt import CHILD_TIMED_OUT, children, seeded_rng, segment_names, wait_until

VALUES = 8  # float64 values in the default 64-byte payload
MASK64 = (1 << 64) - 1
TABLE = 4096  # bytes fields repeat with this period; any two records of a lap differ


def _trace(j: int) -> TraceContext:
    trace_id = ((j + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835 % (1 << 128)).to_bytes(16, "little")
    span_id = ((j ^ 0xA5A5A5A5A5A5A5A5) & MASK64).to_bytes(8, "little")
    return TraceContext(trace_id, span_id, (j * 7) & 0xFF)


TRACES = [_trace(j) for j in range(TABLE)]
PAYLOADS = [struct.pack(f"<{VALUES}d", *(j + i / 8 for i in range(VALUES))) for j in range(TABLE)]


def fields_of(seq: int) -> tuple[int, int, int, TraceContext, bytes]:
    """rtype, cycle, t_ns, trace context and payload of record ``seq``: the integers
    straight from ``seq``, the rest from tables so the writer's loop stays cheap (and
    spends more of its time inside records, where a kill or a lapping read is riskiest)."""
    t_ns = -(seq * 5 + 2) if seq & 1 else seq * 5 + 2
    return seq & 0xFFFF, seq * 3 + 1, t_ns, TRACES[seq % TABLE], PAYLOADS[seq % TABLE]


def check_record(record: Record) -> None:
    rtype, cycle, t_ns, trace, payload = fields_of(record.seq)
    found = (record.rtype, record.cycle, record.t_ns)
    assert found == (rtype, cycle, t_ns), f"torn record {record.seq}: {found}"
    assert record.trace == trace, f"torn trace context in record {record.seq}"
    assert record.payload == payload, f"torn payload in record {record.seq}"


def stage_and_publish(writer: RingWriter) -> int:
    """Write the next record the way the cycle does: payload staged in place, publish."""
    seq = writer.published
    rtype, cycle, t_ns, trace, payload = fields_of(seq)
    writer.set_trace(trace)
    writer.payload[:] = payload
    return writer.publish(rtype, cycle, t_ns)


def local_ring(capacity: int) -> tuple[LocalRegion, RingLayout]:
    layout = RingLayout(capacity)
    return LocalRegion(layout.segment_layout()), layout


@pytest.fixture(params=[True, False], ids=["native", "python"])
def native(request: pytest.FixtureRequest) -> bool:
    """Run a one-process test against the C hot paths and against the Python ones."""
    return bool(request.param)


def pair(region: LocalRegion, layout: RingLayout, native: bool) -> tuple[RingWriter, RingReader]:
    return RingWriter(region, layout, native=native), RingReader(region, layout, native=native)


# A cross-process drill exercises one implementation's writer against the other's reader.
CROSSED = [
    pytest.param(True, False, id="native-writer-python-reader"),
    pytest.param(False, True, id="python-writer-native-reader"),
]


# --- pure layout and protocol ------------------------------------------------------------


def test_layout_geometry_is_cache_line_aligned_and_consistent() -> None:
    layout = RingLayout(capacity=1024, payload_size=64)
    assert layout.record_size == 128
    assert RingLayout(16, payload_size=8).record_size == 128  # 64 + 8 rounds up to 128
    assert RingLayout(16, payload_size=128).record_size == 192
    assert struct.calcsize(layout.fields_format) == SLOT_HEADER_SIZE - 8 + 64
    assert struct.calcsize(layout.row_format) == layout.record_size
    assert layout.slot_offset(0) == CONTROL_SIZE
    assert layout.slot_offset(5) == CONTROL_SIZE + 5 * 128
    assert layout.slot_offset(1024 + 5) == layout.slot_offset(5)  # wraps
    assert layout.body_size == CONTROL_SIZE + 1024 * 128 + CONTROL_SIZE
    seg = layout.segment_layout()
    assert seg.kind is SegmentKind.RING
    assert (seg.record_size, seg.capacity) == (128, 1024)
    assert seg.total_size == HEADER_SIZE + layout.body_size
    assert seg.total_size % 64 == 0


def test_layout_hash_distinguishes_record_formats_but_not_capacity() -> None:
    assert RingLayout(64, 64).layout_hash == RingLayout(4096, 64).layout_hash
    assert RingLayout(64, 64).layout_hash != RingLayout(64, 72).layout_hash


@pytest.mark.parametrize(("capacity", "payload"), [(0, 64), (3, 64), (100, 64), (64, 7), (64, 0)])
def test_layout_rejects_bad_geometry(capacity: int, payload: int) -> None:
    with pytest.raises(ValueError, match=r"capacity|payload_size"):
        RingLayout(capacity, payload)


def test_sequence_words_are_odd_while_writing_and_even_and_nonzero_when_complete() -> None:
    for index in (0, 1, 2, 1000, 1 << 40):
        assert seq_writing(index) % 2 == 1
        assert seq_complete(index) % 2 == 0 and seq_complete(index) > 0
        assert seq_writing(index) < seq_complete(index) < seq_writing(index + 1)


@pytest.mark.parametrize(
    ("before", "after", "state"),
    [
        (seq_complete(10), seq_complete(10), SlotState.READY),
        (0, 0, SlotState.NOT_YET),  # fresh slot
        (seq_complete(10 - 16), seq_complete(10 - 16), SlotState.NOT_YET),  # previous lap
        (seq_writing(10), seq_writing(10), SlotState.NOT_YET),  # being written
        (seq_writing(10), seq_complete(10), SlotState.NOT_YET),  # finished during the copy
        (seq_complete(10), seq_writing(10 + 16), SlotState.OVERWRITTEN),  # overwrite began
        (seq_complete(10), seq_complete(10 + 16), SlotState.OVERWRITTEN),
        (seq_writing(10 + 16), seq_writing(10 + 16), SlotState.OVERWRITTEN),
        (seq_complete(10 + 16), seq_complete(10 + 16), SlotState.OVERWRITTEN),
        (seq_complete(10 - 16), seq_complete(10 + 16), SlotState.OVERWRITTEN),
    ],
)
def test_classify_slot(before: int, after: int, state: SlotState) -> None:
    assert classify_slot(10, before, after) is state


def test_lap_arithmetic() -> None:
    assert lap_slack(16) == 1 and lap_slack(1024) == 64 and lap_slack(2) == 1
    # Not lapped: within the ring, or exactly at its oldest slot.
    assert lap_skip(90, 100, 16) == (90, 0)
    assert lap_skip(84, 100, 16) == (84, 0)
    assert lap_skip(100, 100, 16) == (100, 0)
    # Lapped: records 10..83 are overwritten; resume clear of the writer (slack 1).
    assert lap_skip(10, 100, 16) == (85, 75)
    assert lap_skip(0, 1 << 40, 1024) == ((1 << 40) - 1024 + 64, (1 << 40) - 1024 + 64)
    # Found overwritten mid-poll: at least that record is lost.
    assert resync_after_overwrite(90, 100, 16) == (91, 1)
    assert resync_after_overwrite(50, 100, 16) == (85, 35)


def test_trace_context_round_trips_a_w3c_traceparent() -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    trace = TraceContext.from_traceparent(header)
    assert trace.trace_id == bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert trace.span_id == bytes.fromhex("00f067aa0ba902b7")
    assert trace.flags == 1
    assert trace.traceparent == header
    with pytest.raises(ValueError, match="traceparent"):
        TraceContext.from_traceparent("01-abc-def-00")


# --- one process, a private region: the protocol end to end ----------------------------


def test_records_round_trip_with_trace_and_payload(native: bool) -> None:
    region, layout = local_ring(64)
    writer, reader = pair(region, layout, native)
    assert reader.poll() == []
    for _ in range(40):
        stage_and_publish(writer)
    records = reader.poll()
    assert [r.seq for r in records] == list(range(40))
    for record in records:
        check_record(record)
    assert records[3].f64() == tuple(3 + i / 8 for i in range(VALUES))
    assert records[3].trace == TRACES[3]
    assert reader.poll() == []
    assert (reader.received, reader.dropped, reader.position) == (40, 0, 40)


def test_write_convenience_pads_payloads(native: bool) -> None:
    region, layout = local_ring(8)
    writer, reader = pair(region, layout, native)
    writer.write(7, 1, 2, b"abc")
    writer.write(7, 2, 3, [1.5, -2.0])
    first, second = reader.poll()
    assert first.payload == b"abc" + bytes(61)
    assert second.f64() == (1.5, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="exceeds"):
        writer.write(7, 3, 4, bytes(65))
    with pytest.raises(ValueError, match="exceed"):
        writer.write(7, 3, 4, [0.0] * 9)


def test_poll_respects_max_records_and_wraps_around_the_ring(native: bool) -> None:
    region, layout = local_ring(16)
    writer, reader = pair(region, layout, native)
    got: list[Record] = []
    for _round in range(10):  # 10 × 7 records through a 16-slot ring, read 3 at a time
        for _ in range(7):
            stage_and_publish(writer)
        for _poll in range(10):
            batch = reader.poll(max_records=3)
            assert len(batch) <= 3
            got.extend(batch)
    assert [r.seq for r in got] == list(range(70))
    for record in got:
        check_record(record)
    assert reader.dropped == 0


def test_a_lapped_reader_counts_exactly_the_records_it_missed(native: bool) -> None:
    region, layout = local_ring(16)
    writer, reader = pair(region, layout, native)
    for _ in range(100):
        stage_and_publish(writer)
    records = reader.poll()
    # 0..83 overwritten, 84 is skipped as slack (the writer's next victim): 85..99 remain.
    assert [r.seq for r in records] == list(range(85, 100))
    assert (reader.dropped, reader.received, reader.laps) == (85, 15, 1)
    for _ in range(5):
        stage_and_publish(writer)
    assert [r.seq for r in reader.poll()] == list(range(100, 105))
    assert reader.dropped + reader.received == writer.published


def test_new_reader_starts_at_oldest_retained_or_at_head(native: bool) -> None:
    region, layout = local_ring(16)
    writer = RingWriter(region, layout, native=native)
    for _ in range(40):
        stage_and_publish(writer)
    assert RingReader(region, layout, native=native).position == 40 - 16 + lap_slack(16)
    late = RingReader(region, layout, from_oldest=False, native=native)
    assert late.poll() == []
    stage_and_publish(writer)
    assert [r.seq for r in late.poll()] == [40]
    assert late.dropped == 0


def test_restarted_writer_resumes_after_the_last_published_record(native: bool) -> None:
    region, layout = local_ring(16)
    first = RingWriter(region, layout, native=native)
    for _ in range(20):
        stage_and_publish(first)
    # Simulate a writer killed between its odd store and its even store of record 20.
    q = region.u64()
    q[(region.body_offset + layout.slot_offset(20)) // 8] = seq_writing(20)
    reader = RingReader(region, layout, native=native)
    assert [r.seq for r in reader.poll()][-1] == 19  # record 20 is not visible
    second = RingWriter(region, layout, native=native)
    assert second.published == 20
    stage_and_publish(second)
    (record,) = reader.poll()
    assert record.seq == 20
    check_record(record)


def test_a_field_out_of_range_publishes_nothing(native: bool) -> None:
    region, layout = local_ring(16)
    writer, reader = pair(region, layout, native)
    stage_and_publish(writer)
    with pytest.raises(OverflowError if native else struct.error):
        writer.publish(1 << 16, 0, 0)  # rtype is a u16
    assert writer.published == 1
    assert [r.seq for r in reader.poll()] == [0]
    stage_and_publish(writer)  # rewrites the slot the failed publish left odd
    (record,) = reader.poll()
    check_record(record)


class _HookedBuffer(bytearray):
    """A region buffer that lets the writer run *inside* the reader's copy of a run,
    exactly once — the interleaving a second CPU produces at random, made deterministic."""

    hook: Callable[[], None] | None = None
    copy_first = False

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        hook, self.hook = self.hook, None
        if hook is None or not isinstance(key, slice):
            return super().__getitem__(key)
        if self.copy_first:  # writer overwrites after the copy, before the second loads
            data = super().__getitem__(key)
            hook()
            return data
        hook()  # writer overwrites after the reader's first loads, before its copy
        return super().__getitem__(key)


class _HookedRegion:
    def __init__(self, layout: RingLayout) -> None:
        self._buf = _HookedBuffer(layout.segment_layout().total_size)
        self._view = memoryview(self._buf)
        self._q = self._view.cast("Q")
        self._i = self._view.cast("q")
        self._f = self._view.cast("d")

    @property
    def buf(self) -> _HookedBuffer:
        return self._buf

    @property
    def body_offset(self) -> int:
        return HEADER_SIZE

    def u64(self) -> memoryview:
        return self._q

    def i64(self) -> memoryview:
        return self._i

    def f64(self) -> memoryview[float]:
        return self._f


@pytest.mark.parametrize("copy_first", [False, True])
@pytest.mark.parametrize("overwrites", [1, 5, 16, 40])
def test_writer_lapping_the_reader_during_its_copy_is_detected(
    copy_first: bool, overwrites: int
) -> None:
    layout = RingLayout(16)
    region = _HookedRegion(layout)
    # The hook runs inside the Python reader's slicing copy; the C reader copies slot by
    # slot where no hook can reach, and is raced by the cross-process drills instead.
    writer, reader = RingWriter(region, layout), RingReader(region, layout, native=False)
    for _ in range(16):  # ring full; the reader is exactly one lap behind the next write
        stage_and_publish(writer)

    def lap_the_reader() -> None:
        for _ in range(overwrites):
            stage_and_publish(writer)

    region.buf.hook = lap_the_reader
    region.buf.copy_first = copy_first
    records = reader.poll()
    records += reader.poll()
    seqs = [r.seq for r in records]
    for record in records:
        check_record(record)
    assert seqs == sorted(set(seqs))
    assert reader.dropped > 0 and reader.laps >= 1
    assert reader.dropped + reader.received == writer.published == 16 + overwrites
    # The overwritten records 0..overwrites-1 (of the first lap) were never returned.
    assert not set(seqs) & set(range(min(overwrites, 16)))


def test_publish_in_steady_state_retains_no_memory_and_creates_no_objects(native: bool) -> None:
    region, layout = local_ring(256)
    writer = RingWriter(region, layout, native=native)
    staged = writer.payload_f64
    publish = writer.publish
    for i in range(1000):  # warm-up: specialisation, caches
        staged[0] = i * 0.5
        publish(1, i, i)
    gc.collect()
    objects = len(gc.get_objects())
    blocks = sys.getallocatedblocks()
    for i in range(20_000):
        staged[0] = i * 0.5
        publish(1, i, i)
    assert sys.getallocatedblocks() - blocks < 16
    assert len(gc.get_objects()) - objects < 16
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(20_000):
            staged[0] = i * 0.5
            publish(1, i, i)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # what the ring's code allocated and kept (a thread of an earlier test waking up
    # meanwhile allocates too, but not in mxrc/rt/ring.py)
    in_ring = [tracemalloc.Filter(True, ring_module.__file__)]
    kept = sum(d.size_diff for d in after.filter_traces(in_ring).compare_to(
        before.filter_traces(in_ring), "filename"))  # fmt: skip
    assert kept < 512, f"publish retained {kept} bytes"


# --- the C hot paths against the Python reference ----------------------------------------


def test_the_installed_package_runs_the_native_ring() -> None:
    """The build hook compiled the C module: a silent fall-back to the slower Python
    ring would otherwise pass every other test here."""
    assert ring_module.NATIVE_MISSING is None, ring_module.NATIVE_MISSING
    assert ring_module.implementation() == "native"
    region, layout = local_ring(16)
    assert RingWriter(region, layout).native and RingReader(region, layout).native
    assert not RingWriter(region, layout, native=False).native


def test_both_writers_write_the_same_bytes() -> None:
    rng, seed = seeded_rng("both_writers")
    regions = [local_ring(16)[0] for _ in range(2)]
    layout = RingLayout(16)
    writers = [RingWriter(regions[0], layout, native=True)]
    writers.append(RingWriter(regions[1], layout, native=False))
    for step in range(100):  # six laps of the ring, every way of staging a record
        how, cut = rng.randrange(4), rng.randrange(65)
        seq = writers[0].published
        rtype, cycle, t_ns, trace, payload = fields_of(seq)
        for writer in writers:
            if how == 0:
                writer.set_trace(trace)
                writer.payload[:] = payload
                writer.publish(rtype, cycle, t_ns)
            elif how == 1:
                hi, lo = struct.unpack(">QQ", trace.trace_id)
                (span,) = struct.unpack(">Q", trace.span_id)
                writer.set_trace_words(hi, lo, span, trace.flags | 0x100)  # flags wrap to u8
                writer.publish(rtype, (1 << 64) - 1 - cycle, -t_ns)
            elif how == 2:
                writer.write(rtype, cycle, t_ns, payload[:cut], trace)
            else:
                writer.write(rtype, cycle, t_ns, [seq * 0.25, -1.5, float("inf")])
        assert writers[0].published == writers[1].published == step + 1
        assert bytes(regions[0].buf) == bytes(regions[1].buf), f"step {step} (seed {seed})"


def test_both_readers_return_the_same_records_and_counts() -> None:
    rng, seed = seeded_rng("both_readers")
    region, layout = local_ring(32)
    writer = RingWriter(region, layout)
    readers = [RingReader(region, layout, native=flag) for flag in (True, False)]
    q = region.u64()
    for _step in range(300):
        for _ in range(rng.choice([0, 1, 5, 31, 70])):  # sometimes laps both readers
            stage_and_publish(writer)
        if rng.random() < 0.1:  # a slot taken by a later lap under the readers' feet
            victim = writer.published - rng.randrange(1, 33)
            word = (region.body_offset + layout.slot_offset(victim)) // 8
            saved = q[word]
            q[word] = seq_writing(victim + 32)
        else:
            word = -1
        limit = rng.choice([1, 3, 16, 4096])
        results = [reader.poll(limit) for reader in readers]
        if word >= 0:
            q[word] = saved
        assert results[0] == results[1], f"seed {seed}"
        assert all(type(record) is Record for record in results[0])
        for record in results[0]:
            check_record(record)
        counts = [(r.position, r.received, r.dropped, r.laps) for r in readers]
        assert counts[0] == counts[1], f"seed {seed}"
    assert readers[0].dropped > 0 and readers[0].laps > 0


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_reader_waits_at_a_record_being_written_and_skips_one_overwritten(
    native: bool,
) -> None:
    region, layout = local_ring(16)
    writer = RingWriter(region, layout)
    for _ in range(12):
        stage_and_publish(writer)
    q = region.u64()

    def slot_word(index: int) -> int:
        return (region.body_offset + layout.slot_offset(index)) // 8

    q[slot_word(6)] = seq_writing(6)  # as if its writer were killed mid-write
    reader = RingReader(region, layout, native=native)
    assert [r.seq for r in reader.poll()] == list(range(6))
    assert (reader.position, reader.dropped, reader.laps) == (6, 0, 0)
    q[slot_word(6)] = seq_complete(6)
    q[slot_word(9)] = seq_writing(9 + 16)  # a later lap is taking record 9's slot
    assert [r.seq for r in reader.poll()] == [6, 7, 8, 10, 11]
    assert (reader.dropped, reader.laps) == (1, 1)


def test_the_native_writer_refuses_a_geometry_that_does_not_fit() -> None:
    from mxrc.rt import _ring_native

    region, _ = local_ring(16)
    args = (region.u64(), 128, 64, 16, 128, bytearray(64), bytearray(16), bytearray(8), 0)
    _ring_native.Writer(*args)
    too_many = (*args[:3], 1 << 20, *args[4:])
    with pytest.raises(ValueError, match=r"1048576 x 128 bytes.*region of \d+ bytes"):
        _ring_native.Writer(*too_many)
    with pytest.raises(ValueError, match="trace_id must be 16 bytes"):
        _ring_native.Writer(*args[:6], bytearray(15), *args[7:])
    with pytest.raises(ValueError, match="writable"):
        _ring_native.Writer(memoryview(bytes(len(region.buf))).cast("Q"), *args[1:])
    writer = _ring_native.Writer(*args)
    with pytest.raises(ValueError, match="fit a byte"):
        writer.flags = 256


# --- real processes, real shared memory ---------------------------------------------------


def _write_until_killed(name: str, layout: RingLayout, limit_s: float, native: bool) -> int:
    ring = Ring.attach(name, layout)
    writer = ring.writer(native=native)
    deadline = time.monotonic() + limit_s
    while True:
        for _ in range(256):
            stage_and_publish(writer)
        if time.monotonic() > deadline:
            return CHILD_TIMED_OUT


def _drain_checked(reader: RingReader, last: int, until: float, pause_s: float = 0.0) -> int:
    """Poll until ``until`` (monotonic), checking every record; returns the last seq."""
    while time.monotonic() < until:
        for record in reader.poll():
            check_record(record)
            assert record.seq > last, f"record {record.seq} after {last}"
            last = record.seq
        if pause_s:
            time.sleep(pause_s)
    return last


def _catch_up_checked(reader: RingReader, last: int, head: int, timeout: float = 10.0) -> int:
    """Poll (checking every record) until the reader has dealt with every published
    record; bounded in time, not in polls, so a descheduled test does not fail."""
    deadline = time.monotonic() + timeout
    while reader.position < head:
        assert time.monotonic() < deadline, f"reader stuck at {reader.position} < {head}"
        for record in reader.poll():
            check_record(record)
            assert record.seq > last, f"record {record.seq} after {last}"
            last = record.seq
    assert reader.poll() == [], "records beyond the killed writer's head"
    return last


def _word_beyond(q: memoryview, word: int, value: int) -> Callable[[], bool]:
    return lambda: q[word] > value


def sigkill_drill(
    trials: int, writer_native: bool, reader_native: bool, *, require_mid_record_kill: bool = False
) -> None:
    rng, seed = seeded_rng("sigkill_drill")
    layout = RingLayout(capacity=64)
    died_mid_write = died_unpublished = 0
    with children() as kids, segment_names("ring") as (name,), Ring.create(name, layout) as ring:
        reader = ring.reader(native=reader_native)
        q = ring.segment.u64()
        head_word = ring.segment.body_offset // 8
        last = -1
        kills = 0
        # A kill lands inside a record a few % of the time (about 1 % with the C writer,
        # whose window is shortest): when one is required, go on (to 5x) until it has.
        while kills < trials or (
            require_mid_record_kill and died_mid_write == 0 and kills < 5 * trials
        ):
            kills += 1
            start: int = q[head_word]
            pid = kids.fork(lambda: _write_until_killed(name, layout, 20.0, writer_native))
            wait_until(_word_beyond(q, head_word, start + 64), 10.0, "the writer to start")
            # Read while it writes: sometimes keeping up, sometimes pausing long enough
            # to be lapped (64 slots are a few hundred µs of writing), so reads overlap
            # overwrites of the very slots being copied.
            pause = rng.choice([0.0, 0.0, 50e-6, 200e-6, 1e-3])
            last = _drain_checked(reader, last, time.monotonic() + rng.uniform(0, 0.02), pause)
            kids.kill(pid)
            assert kids.exit_code(pid) == -9, f"writer exited by itself (seed {seed})"
            head = q[head_word]
            word = q[(ring.segment.body_offset + layout.slot_offset(head)) // 8]
            died_mid_write += word == 2 * head + 1
            died_unpublished += word == 2 * head + 2
            last = _catch_up_checked(reader, last, head)
            assert last < head  # the record being written when killed was never returned
        assert reader.received + reader.dropped == q[head_word]
    print(
        f"sigkill drill: {kills} kills, {died_mid_write} mid-record, {died_unpublished} "
        f"between record and head, {reader.received} records checked, {reader.dropped} "
        f"dropped in {reader.laps} laps (seed {seed})"
    )
    assert reader.received > 0 and reader.laps > 0, f"the drill never lapped (seed {seed})"
    if require_mid_record_kill:
        assert died_mid_write > 0, f"no kill landed inside a record (seed {seed})"


@pytest.mark.parametrize(("writer_native", "reader_native"), CROSSED)
def test_sigkilled_writer_never_yields_a_torn_record(
    writer_native: bool, reader_native: bool
) -> None:
    sigkill_drill(50, writer_native, reader_native)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("writer_native", "reader_native"), CROSSED)
def test_sigkill_drill_many_trials(writer_native: bool, reader_native: bool) -> None:
    sigkill_drill(400, writer_native, reader_native, require_mid_record_kill=True)


def overlap_drill(seconds: float, writer_native: bool, reader_native: bool) -> None:
    """A 4-slot ring: the writer is always overwriting the slots the reader is copying,
    so the window of every write is hit over and over (the SIGKILL drill hits it once
    per kill)."""
    layout = RingLayout(capacity=4)
    with children() as kids, segment_names("ring") as (name,), Ring.create(name, layout) as ring:
        reader = ring.reader(native=reader_native)
        pid = kids.fork(lambda: _write_until_killed(name, layout, seconds + 30, writer_native))
        q = ring.segment.u64()
        head_word = ring.segment.body_offset // 8
        wait_until(_word_beyond(q, head_word, 1000), 10, "the writer to start")
        _drain_checked(reader, -1, time.monotonic() + seconds)
        kids.kill(pid)
        assert kids.exit_code(pid) == -9
    print(
        f"overlap drill: {reader.received} records checked, {reader.dropped} dropped in "
        f"{reader.laps} laps"
    )
    assert reader.received > 1000 and reader.laps > 50, "the drill barely overlapped"


@pytest.mark.parametrize(("writer_native", "reader_native"), CROSSED)
def test_reader_racing_the_writer_over_a_tiny_ring_never_sees_a_torn_record(
    writer_native: bool, reader_native: bool
) -> None:
    overlap_drill(1.5, writer_native, reader_native)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("writer_native", "reader_native"), CROSSED)
def test_overlap_drill_long(writer_native: bool, reader_native: bool) -> None:
    overlap_drill(30.0, writer_native, reader_native)


def _write_exactly(name: str, layout: RingLayout, count: int, native: bool) -> int:
    ring = Ring.attach(name, layout)
    writer = ring.writer(native=native)
    for _ in range(count):
        stage_and_publish(writer)
    ring.close()
    return 0


def lapping_drill(count: int, writer_native: bool, reader_native: bool) -> None:
    rng, seed = seeded_rng("lapping_drill")
    layout = RingLayout(capacity=256)
    with children() as kids, segment_names("ring") as (name,), Ring.create(name, layout) as ring:
        reader = ring.reader(native=reader_native)
        pid = kids.fork(lambda: _write_exactly(name, layout, count, writer_native))
        seqs: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = reader.poll(max_records=rng.choice([1, 7, 64, 4096]))
            for record in batch:
                check_record(record)
            seqs.extend(r.seq for r in batch)
            if reader.position == count:
                break
            time.sleep(rng.choice([0.0, 20e-6, 200e-6, 2e-3]))
        assert kids.exit_code(pid, timeout=30) == 0
    gaps = seqs[0] + sum(b - a - 1 for a, b in itertools.pairwise(seqs))
    gaps += count - 1 - seqs[-1]
    print(
        f"lapping drill: {count} written, {reader.received} read, {reader.dropped} dropped "
        f"in {reader.laps} laps (seed {seed})"
    )
    assert seqs == sorted(set(seqs)), f"records out of order or repeated (seed {seed})"
    assert reader.received == len(seqs)
    assert reader.dropped == gaps, f"dropped {reader.dropped}, missing {gaps} (seed {seed})"
    assert reader.received + reader.dropped == count
    assert reader.dropped > 0 and reader.received > 0, f"no lapping happened (seed {seed})"


@pytest.mark.parametrize(("writer_native", "reader_native"), CROSSED)
def test_lapped_reader_reports_drops_exactly_across_processes(
    writer_native: bool, reader_native: bool
) -> None:
    lapping_drill(30_000, writer_native, reader_native)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("writer_native", "reader_native"), CROSSED)
def test_lapping_drill_long(writer_native: bool, reader_native: bool) -> None:
    lapping_drill(1_000_000, writer_native, reader_native)
