"""The control block: the permission rule and the seqlock as pure functions, then a
writer in another process hammering it while this one reads — never a torn snapshot —
and a writer SIGKILLed mid-write, which must leave the cycle holding safe outputs.

The hammering writer derives all three fields from one counter ``k`` (:func:`fields_of`),
with values that move every byte of every word, so a snapshot mixing two writes is
caught by :func:`check_state`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from mxrc.rt.controlblock import (
    DEADLINE_WORD,
    NO_TRACE,
    READ_ATTEMPTS,
    SEQ_WORD,
    ControlBlock,
    ControlBlockReader,
    ControlBlockWriter,
    ControlState,
    Mode,
    control_block_layout,
    drive_permitted,
    next_trace,
    seqlock_begin,
    seqlock_stable,
    trace_words,
    traceparent_of_words,
)
from mxrc.rt.shm import LocalRegion, SegmentKind
from tests.rt import CHILD_TIMED_OUT, children, seeded_rng, segment_names, wait_until

MASK64 = (1 << 64) - 1


def fields_of(k: int) -> tuple[int, int, int]:
    """mode, token, deadline_ns of the k-th hammer write; k is recoverable from token."""
    token = ((k << 24) | (k * 0x9E37 & 0xFFFFFF)) & MASK64
    deadline = -(k * 0x1F3D5B79 + 1) if k & 1 else k * 0x1F3D5B79 + (1 << 40)
    return k % 4, token, deadline


def check_state(state: ControlState) -> int:
    k = state.token >> 24
    assert (state.mode, state.token, state.deadline_ns) == fields_of(k), f"torn: {state}"
    return k


def local_block() -> tuple[ControlBlockWriter, ControlBlockReader, LocalRegion]:
    region = LocalRegion(control_block_layout())
    return ControlBlockWriter(region), ControlBlockReader(region), region


# --- pure ----------------------------------------------------------------------------


def test_seqlock_begin_is_always_odd_and_always_moves() -> None:
    for seq in (0, 1, 2, 3, 1000, 1001, (1 << 64) - 3):
        begin = seqlock_begin(seq)
        assert begin % 2 == 1 and begin > seq
    assert seqlock_begin(4) == 5  # normal case
    assert seqlock_begin(5) == 7  # after a writer died mid-write at 5


def test_seqlock_stable_only_for_equal_even_words() -> None:
    assert seqlock_stable(4, 4)
    assert not seqlock_stable(5, 5)
    assert not seqlock_stable(4, 6)
    assert not seqlock_stable(3, 4)


NOW = 1_000_000_000


@pytest.mark.parametrize(
    ("mode", "token", "deadline", "expected", "permitted"),
    [
        (Mode.RUNNING, 7, NOW + 1, 7, True),
        (Mode.RUNNING, 7, NOW, 7, False),  # deadline must be in the future
        (Mode.RUNNING, 7, NOW - 5, 7, False),  # lease expired
        (Mode.RUNNING, 8, NOW + 1, 7, False),  # stale leader's token
        (Mode.RUNNING, 0, NOW + 1, 0, False),  # a zeroed block is never a permission
        (Mode.READY, 7, NOW + 1, 7, False),
        (Mode.SAFE_MODE, 7, NOW + 1, 7, False),
        (Mode.INIT, 7, NOW + 1, 7, False),
        (99, 7, NOW + 1, 7, False),  # garbage mode
    ],
)
def test_drive_permitted_rule(
    mode: int, token: int, deadline: int, expected: int, permitted: bool
) -> None:
    assert drive_permitted(mode, token, deadline, NOW, expected) is permitted


def test_modes_follow_the_chart_state_names() -> None:
    for state in ("INIT", "READY", "RUNNING", "SAFE_MODE"):
        assert Mode.from_state(state).name == state
    with pytest.raises(ValueError, match="FLYING"):
        Mode.from_state("FLYING")


def test_layout_is_one_cache_line() -> None:
    layout = control_block_layout()
    assert layout.kind is SegmentKind.CONTROL_BLOCK
    assert layout.body_size == 64 and layout.total_size == 128


# --- one process -----------------------------------------------------------------------


def test_zeroed_block_reads_init_and_never_permits_driving() -> None:
    _writer, reader, _region = local_block()
    assert reader.read() == ControlState(Mode.INIT, 0, 0, 0)
    assert not reader.drive_permitted(NOW, 0)


def test_write_then_read() -> None:
    writer, reader, _region = local_block()
    writer.write(Mode.RUNNING, (1 << 64) - 1, NOW + 10)
    assert reader.read() == ControlState(Mode.RUNNING, (1 << 64) - 1, NOW + 10, 1)
    assert reader.drive_permitted(NOW, (1 << 64) - 1)
    assert not reader.drive_permitted(NOW + 10, (1 << 64) - 1)
    writer.write(Mode.SAFE_MODE, 5, -(1 << 63))
    assert reader.read() == ControlState(Mode.SAFE_MODE, 5, -(1 << 63), 2)
    assert not reader.drive_permitted(NOW, 5)


@pytest.mark.parametrize(
    ("mode", "token", "deadline"),
    [(7, 1, 1), (Mode.RUNNING, -1, 1), (Mode.RUNNING, 1 << 64, 1), (Mode.RUNNING, 1, 1 << 63)],
)
def test_writer_refuses_out_of_range_values_before_touching_the_block(
    mode: int, token: int, deadline: int
) -> None:
    writer, reader, _region = local_block()
    writer.write(Mode.READY, 3, 4)
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by field
        writer.write(mode, token, deadline)
    assert reader.read() == ControlState(Mode.READY, 3, 4, 1)


def test_writer_dead_mid_write_holds_the_cycle_safe_until_a_new_writer_writes() -> None:
    writer, reader, region = local_block()
    writer.write(Mode.RUNNING, 7, NOW + 100)
    q = region.u64()
    seq_word = region.body_offset // 8 + SEQ_WORD
    q[seq_word] = q[seq_word] + 1  # as a writer killed after its odd store leaves it
    assert reader.read() is None
    assert not reader.drive_permitted(NOW, 7)
    assert reader.failed_reads == 2
    ControlBlockWriter(region).write(Mode.RUNNING, 7, NOW + 100)  # the restarted nonrt
    assert seqlock_stable(q[seq_word], q[seq_word])
    assert reader.drive_permitted(NOW, 7)


def test_reader_gives_up_after_bounded_attempts() -> None:
    writer, reader, region = local_block()
    writer.write(Mode.RUNNING, 7, NOW + 100)
    q = region.u64()
    q[region.body_offset // 8 + SEQ_WORD] = 9  # odd forever: no writer will finish
    started = time.perf_counter()
    for _ in range(1000):
        assert reader.read() is None
    assert reader.failed_reads == 1000
    assert time.perf_counter() - started < 1.0  # READ_ATTEMPTS tries each, no waiting
    assert READ_ATTEMPTS <= 8


# --- real processes -----------------------------------------------------------------------


def _hammer(name: str, limit_s: float) -> int:
    block = ControlBlock.attach(name)
    writer = block.writer()
    deadline = time.monotonic() + limit_s
    k = 1
    while True:
        for _ in range(512):
            mode, token, deadline_ns = fields_of(k)
            writer.write(mode, token, deadline_ns)
            k += 1
        if time.monotonic() > deadline:
            return CHILD_TIMED_OUT


def _word_beyond(q: memoryview, word: int, value: int) -> Callable[[], bool]:
    return lambda: q[word] > value


def hammer_drill(seconds: float) -> None:
    with children() as kids, segment_names("cb") as (name,), ControlBlock.create(name) as block:
        reader = block.reader()
        q = block.segment.u64()
        seq_word = block.segment.body_offset // 8 + SEQ_WORD
        pid = kids.fork(lambda: _hammer(name, seconds + 30))
        wait_until(lambda: q[seq_word] > 100, 10, "the hammer to start")
        reads = failed = 0
        last_k = last_version = 0
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for _ in range(1000):
                state = reader.read()
                if state is None:
                    failed += 1
                    continue
                reads += 1
                k = check_state(state)
                assert k >= last_k and state.version >= last_version, "went back in time"
                last_k, last_version = k, state.version
        kids.kill(pid)
        assert kids.exit_code(pid) == -9
    print(f"control block hammer: {reads} consistent reads, {failed} gave up, up to k={last_k}")
    assert reads > 1000 and last_k > 1000, "the hammer did not overlap the reads"


def test_control_block_is_never_read_torn_under_a_hammering_writer() -> None:
    hammer_drill(seconds=2.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_control_block_hammer_long() -> None:
    hammer_drill(seconds=30.0)


def test_sigkilled_writer_leaves_a_consistent_or_refused_block() -> None:
    rng, seed = seeded_rng("controlblock_sigkill")
    refused = 0
    with children() as kids, segment_names("cb") as (name,), ControlBlock.create(name) as block:
        reader = block.reader()
        q = block.segment.u64()
        seq_word = block.segment.body_offset // 8 + SEQ_WORD
        for _trial in range(20):
            start: int = q[seq_word]
            pid = kids.fork(lambda: _hammer(name, 30.0))
            wait_until(_word_beyond(q, seq_word, start + 100), 10, "the writer to write")
            time.sleep(rng.uniform(0, 0.005))
            kids.kill(pid)
            assert kids.exit_code(pid) == -9
            state = reader.read()
            if state is None:  # killed mid-write: refused, so the cycle holds safe outputs
                refused += 1
                assert q[seq_word] % 2 == 1
                assert not reader.drive_permitted(0, 1)
            else:
                check_state(state)
        ControlBlockWriter(block.segment).write(Mode.RUNNING, 42, 1 << 62)
        assert reader.drive_permitted(0, 42)
        assert q[seq_word + DEADLINE_WORD - SEQ_WORD] == 1 << 62
    print(f"control block sigkill: {refused} of 20 kills landed mid-write (seed {seed})")


# --- trace context written with the mode ---------------------------------------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_trace_words_round_trip_and_refuse_what_is_no_trace() -> None:
    words = trace_words(TRACEPARENT)
    assert words == (0x4BF92F3577B34DA6, 0xA3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)
    assert traceparent_of_words(words) == TRACEPARENT
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"):  # fmt: skip
        assert trace_words(bad) == NO_TRACE
    assert traceparent_of_words(NO_TRACE) is None


def test_the_trace_is_sticky_until_the_mode_changes() -> None:
    given = trace_words(TRACEPARENT)
    assert next_trace(None, NO_TRACE, Mode.RUNNING, given) == given
    assert next_trace(Mode.RUNNING, given, Mode.RUNNING, None) == given  # a renewal
    assert next_trace(Mode.RUNNING, given, Mode.SAFE_MODE, None) == NO_TRACE  # untraced change
    other = trace_words("00-" + "1" * 32 + "-" + "2" * 16 + "-00")
    assert next_trace(Mode.RUNNING, given, Mode.RUNNING, other) == other


def test_the_cycle_reads_the_trace_of_the_version_it_saw() -> None:
    writer, reader, _region = local_block()
    writer.write(Mode.RUNNING, 7, 10**18, TRACEPARENT)
    state = reader.read()
    assert state is not None
    assert reader.trace_at(state.version) == trace_words(TRACEPARENT)
    writer.write(Mode.RUNNING, 7, 2 * 10**18)  # a renewal keeps it ...
    renewed = reader.read()
    assert renewed is not None and reader.trace_at(renewed.version) == trace_words(TRACEPARENT)
    assert reader.trace_at(state.version) is None  # ... and an old snapshot's is gone
    writer.write(Mode.SAFE_MODE, 7, 0)
    held = reader.read()
    assert held is not None and reader.trace_at(held.version) == NO_TRACE
