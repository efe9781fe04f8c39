"""The control block: nonrt's permission to move, read by the cycle every cycle.

nonrt (which owns the safety statechart) writes three facts; the cycle reads them each
cycle and drives outputs only when all of them say so (:func:`drive_permitted`):

* ``mode`` is RUNNING (the chart state),
* ``deadline_ns`` (the lease deadline, CLOCK_MONOTONIC) is still in the future, so a
  nonrt that hangs or dies stops motion within one lease even though it can no longer
  say so,
* ``token`` (the fencing token) equals the one the cycle was started with, so a stale
  leader's permission is never honoured after failover.

Anything else, including a block the cycle cannot read consistently, means "hold safe
outputs": every failure mode of this module is on the safe side.

With the permission nonrt writes the trace context of the transition that set the mode
(W3C trace id as two words, span id, flags), so the cycle can stamp its ring record of
acting on the mode with it and the command's trace continues into the cycle. The trace
is sticky: a write that does not change the mode (a lease renewal moving the deadline)
keeps the context of the write that did, so a renewal racing a command cannot erase
the command's trace before the cycle has read it (:func:`next_trace`).

Segment body: one cache line of 8-byte words ``seq, mode, token, deadline_ns, trace_hi,
trace_lo, span_id, trace_flags``.
``seq`` is a seqlock: the writer stores an odd value, the three fields, then the next
even value; a reader loads ``seq``, the fields, ``seq`` again, and keeps the snapshot
only if both loads are equal and even (x86-64 TSO assumption: see :mod:`mxrc.rt.shm`).
Every word is a single aligned 8-byte store/load through a ``memoryview`` cast, never
``struct.pack_into``. A writer killed mid-write leaves ``seq`` odd: readers then fail
(safe) until a new writer's next write, which starts from the odd value.

The reader's hot path (:meth:`ControlBlockReader.drive_permitted`) creates no tuple or
other container; like all CPython integer arithmetic it may create transient ints.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum
from pathlib import Path
from typing import Final, NamedTuple

from mxrc.rt.shm import (
    DEFAULT_DIRECTORY,
    Region,
    Segment,
    SegmentKind,
    SegmentLayout,
    attach_segment,
    create_segment,
)

CONTROL_BLOCK_VERSION: Final = 2
READ_ATTEMPTS: Final = 4  # bounded: the cycle must never spin on a busy writer
_FIELDS: Final = (
    "seq:u64", "mode:u64", "token:u64", "deadline_ns:i64",
    "trace_hi:u64", "trace_lo:u64", "span_id:u64", "trace_flags:u64",
)
SEQ_WORD, MODE_WORD, TOKEN_WORD, DEADLINE_WORD = range(4)
TRACE_HI_WORD, TRACE_LO_WORD, SPAN_WORD, FLAGS_WORD = range(4, 8)
#: No trace: what a zeroed block holds, and what W3C calls an invalid context.
NO_TRACE: Final = (0, 0, 0, 0)
TraceWords = tuple[int, int, int, int]


class Mode(IntEnum):
    """The chart state as the cycle sees it. A zeroed block reads INIT: not driving."""

    INIT = 0
    READY = 1
    RUNNING = 2
    SAFE_MODE = 3

    @classmethod
    def from_state(cls, state: str) -> Mode:
        """Map a statechart state name (``"RUNNING"``) to its mode."""
        try:
            return cls[state]
        except KeyError:
            raise ValueError(f"no control-block mode for chart state {state!r}") from None


class ControlState(NamedTuple):
    """A consistent snapshot of the block (``version``: how many writes it has seen)."""

    mode: int
    token: int
    deadline_ns: int
    version: int


# --- the seqlock protocol and the permission rule, as pure functions ---------------------


def seqlock_begin(seq: int) -> int:
    """The odd value a writer stores before writing, given the current ``seq``.

    Normally ``seq + 1``; if ``seq`` is already odd (a previous writer was killed mid-
    write), ``seq + 2``, so readers that saw the dead writer's value still see a change.
    Also used by the data store.
    """
    return seq + 1 + (seq & 1)


def seqlock_stable(before: int, after: int) -> bool:
    """Whether a copy bracketed by these two loads of ``seq`` is consistent."""
    return before == after and not before & 1


def trace_words(traceparent: str | None) -> TraceWords:
    """A W3C traceparent as the block's four words; :data:`NO_TRACE` for None or an
    invalid one (the cycle then stamps no trace, which is honest)."""
    if not traceparent:
        return NO_TRACE
    parts = traceparent.strip().split("-")
    if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return NO_TRACE
    try:
        hi, lo = int(parts[1][:16], 16), int(parts[1][16:], 16)
        span, flags = int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return NO_TRACE
    if (hi == 0 and lo == 0) or span == 0 or not 0 <= flags <= 0xFF:
        return NO_TRACE
    return (hi, lo, span, flags)


def traceparent_of_words(words: TraceWords) -> str | None:
    hi, lo, span, flags = words
    if (hi == 0 and lo == 0) or span == 0:
        return None
    return f"00-{hi:016x}{lo:016x}-{span:016x}-{flags & 0xFF:02x}"


def next_trace(
    previous_mode: int | None, previous: TraceWords, mode: int, given: TraceWords | None
) -> TraceWords:
    """The trace a write stores: the one given; else, when the mode is unchanged, the one
    already there (sticky, see the module docstring); else none."""
    if given is not None and given != NO_TRACE:
        return given
    if previous_mode == mode:
        return previous
    return NO_TRACE


def drive_permitted(
    mode: int, token: int, deadline_ns: int, now_ns: int, expected_token: int
) -> bool:
    """The cycle's rule: drive outputs only if RUNNING, the lease has not expired and the
    fencing token is the one the cycle started with (token 0 is never valid: it is what
    a zeroed block holds)."""
    return (
        mode == Mode.RUNNING
        and deadline_ns > now_ns
        and token == expected_token
        and expected_token != 0
    )


def control_block_layout() -> SegmentLayout:
    text = f"mxrc-controlblock/{CONTROL_BLOCK_VERSION}/" + ",".join(_FIELDS)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return SegmentLayout(
        kind=SegmentKind.CONTROL_BLOCK,
        version=CONTROL_BLOCK_VERSION,
        record_size=8 * len(_FIELDS),
        capacity=1,
        layout_hash=int.from_bytes(digest, "little"),
        body_size=64,
        hash_name="field_table_hash",
    )


# --- writer and reader over a region --------------------------------------------------------


class ControlBlockWriter:
    """nonrt's side. Exactly one writer (the process owning the statechart)."""

    def __init__(self, region: Region) -> None:
        self._q = region.u64()
        self._s = region.i64()
        self._base = region.body_offset // 8
        self._mode: int | None = None
        self._trace: TraceWords = NO_TRACE

    def write(
        self, mode: int, token: int, deadline_ns: int, traceparent: str | None = None
    ) -> None:
        """Publish a new permission atomically (as a set) for the cycle, with the trace
        context of the change (see :func:`next_trace`)."""
        if not 0 <= token < 1 << 64:
            raise ValueError(f"fencing token must be a u64, not {token}")
        if not -(1 << 63) <= deadline_ns < 1 << 63:
            raise ValueError(f"deadline_ns must be an i64, not {deadline_ns}")
        mode = Mode(mode)  # refuse an unknown mode before touching the block
        given = trace_words(traceparent) if traceparent is not None else None
        trace = next_trace(self._mode, self._trace, int(mode), given)
        q = self._q
        base = self._base
        begin = seqlock_begin(q[base + SEQ_WORD])
        q[base + SEQ_WORD] = begin
        q[base + MODE_WORD] = int(mode)
        q[base + TOKEN_WORD] = token
        self._s[base + DEADLINE_WORD] = deadline_ns
        q[base + TRACE_HI_WORD], q[base + TRACE_LO_WORD] = trace[0], trace[1]
        q[base + SPAN_WORD], q[base + FLAGS_WORD] = trace[2], trace[3]
        q[base + SEQ_WORD] = begin + 1
        self._mode, self._trace = int(mode), trace


class ControlBlockReader:
    """The cycle's side (any number of readers; they write nothing)."""

    def __init__(self, region: Region) -> None:
        self._q = region.u64()
        self._s = region.i64()
        self._base = region.body_offset // 8
        #: Reads that found the writer busy (or dead mid-write) every attempt.
        self.failed_reads = 0

    def read(self) -> ControlState | None:
        """A consistent snapshot, or None if none could be had in :data:`READ_ATTEMPTS`
        tries (the caller treats None as "hold safe outputs")."""
        q = self._q
        s = self._s
        seq_word = self._base + SEQ_WORD
        for _attempt in range(READ_ATTEMPTS):
            before = q[seq_word]
            mode = q[seq_word + 1]
            token = q[seq_word + 2]
            deadline = s[seq_word + 3]
            after = q[seq_word]
            if before == after and not before & 1:
                return ControlState(mode, token, deadline, before >> 1)
        self.failed_reads += 1
        return None

    def trace_at(self, version: int) -> TraceWords | None:
        """The trace words written with snapshot ``version`` (from :meth:`read`), or None
        if the block has changed since (the next cycle sees the newer mode and asks
        again) or could not be read consistently."""
        q = self._q
        seq_word = self._base + SEQ_WORD
        expected = version << 1
        for _attempt in range(READ_ATTEMPTS):
            before = q[seq_word]
            if before != expected:
                return None
            hi = q[seq_word + TRACE_HI_WORD]
            lo = q[seq_word + TRACE_LO_WORD]
            span = q[seq_word + SPAN_WORD]
            flags = q[seq_word + FLAGS_WORD]
            if q[seq_word] == before:
                return (hi, lo, span, flags)
        return None

    def drive_permitted(self, now_ns: int, expected_token: int) -> bool:
        """The per-cycle check, without building a snapshot object: same rule as
        :func:`drive_permitted`, applied to a consistent read, False if none."""
        q = self._q
        seq_word = self._base
        for _attempt in range(READ_ATTEMPTS):
            before = q[seq_word]
            mode = q[seq_word + 1]
            token = q[seq_word + 2]
            deadline = self._s[seq_word + 3]
            after = q[seq_word]
            if before == after and not before & 1:
                return drive_permitted(mode, token, deadline, now_ns, expected_token)
        self.failed_reads += 1
        return False


class ControlBlock:
    """The control block's segment: nonrt creates it, the RT process attaches."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment

    @classmethod
    def create(
        cls,
        name: str,
        *,
        directory: Path = DEFAULT_DIRECTORY,
        allow_weak_memory_order: bool = False,
    ) -> ControlBlock:
        segment = create_segment(
            name,
            control_block_layout(),
            directory=directory,
            allow_weak_memory_order=allow_weak_memory_order,
        )
        return cls(segment)

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        directory: Path = DEFAULT_DIRECTORY,
        wait_s: float = 0.0,
        allow_weak_memory_order: bool = False,
    ) -> ControlBlock:
        segment = attach_segment(
            name,
            control_block_layout(),
            directory=directory,
            wait_s=wait_s,
            allow_weak_memory_order=allow_weak_memory_order,
        )
        return cls(segment)

    def writer(self) -> ControlBlockWriter:
        return ControlBlockWriter(self.segment)

    def reader(self) -> ControlBlockReader:
        return ControlBlockReader(self.segment)

    def close(self) -> None:
        self.segment.close()

    def __enter__(self) -> ControlBlock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
