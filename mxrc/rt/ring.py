"""The telemetry/event ring: the cycle writes, nonrt polls, nobody ever waits.

Single producer (the cycle thread), any number of readers, overwrite-oldest. The writer
never looks at readers, so a stalled or dead nonrt can never delay a cycle; a reader
that falls more than ``capacity`` records behind is *lapped*, notices, and counts exactly
the records it missed (:attr:`RingReader.dropped`).

Segment body (after the 64-byte segment header)::

    +0    head        u64  records published so far (index of the next record)
    +64   slot[0]     record_size bytes (a multiple of 64: one record never shares a
    ...                cache line with its neighbour, which the writer is writing)

Slot (``record_size`` = ``align_up(64 + payload_size)``; 128 for the default 64)::

    +0  seq        u64   2n+1 while record n is being written, 2n+2 once complete
    +8  index      u64   n again (lets the reader decode whole runs with iter_unpack)
    +16 rtype      u16   +18 trace_flags u8   +19 5 bytes reserved (zero)
    +24 cycle      u64   +32 t_ns i64 (CLOCK_MONOTONIC)
    +40 trace_id   16 bytes (W3C)   +56 span_id 8 bytes
    +64 payload    payload_size bytes (raw; ``payload_f64`` views it as float64)

Per-slot seqlock. The writer of record ``n`` stores ``seq = 2n+1``, the fields, then
``seq = 2n+2``, then ``head = n+1``. A reader that wants record ``n`` loads ``seq``,
copies the fields, loads ``seq`` again, and accepts only if both loads gave ``2n+2``.
On x86-64 (stores ordered with stores, loads with loads; see :mod:`mxrc.rt.shm`), if any
field byte the reader copied came from a later write of that slot, that write's
``2(n+capacity)+1`` store was visible first, so the second load cannot still see
``2n+2``: a torn record is never returned, also when the writer is SIGKILLed mid-write
(the slot stays odd and ``head`` never advances past it).

Lapping. ``head`` tells the reader how far the writer is: with ``head - next >
capacity`` the records before ``head - capacity`` are gone. A slot found overwritten
while reading (the writer lapped us during the poll) is gone too, and so is everything
before the re-read ``head - capacity``. The reader then resumes :func:`lap_slack` records
further on, clear of the slots the writer is about to take. Every index it skips is
counted once in ``dropped``, and it never skips an index it returns, so ``received +
dropped`` equals the number of records published since the reader started: the drop
count is exact, whatever the interleaving.

Allocation on the writer's hot path (:meth:`RingWriter.publish`), as far as CPython
permits: no ``struct.Struct`` is built (precompiled once), no bytes/bytearray/tuple/list
is created (fields are packed with ``pack_into`` straight from preallocated buffers; the
payload is staged in a preallocated ``bytearray`` that the cycle fills in place through
:attr:`RingWriter.payload_f64`), no syscall is made. What CPython still does: arithmetic
on counters above 256 creates short-lived ``int`` objects (and the caller's floats are
objects). Those come from pymalloc's pools, are freed at once by reference counting and
are not GC-tracked, so ``publish`` can never trigger a garbage-collection pass. The
convenience :meth:`RingWriter.write` and the reader allocate freely (nonrt side).

Two implementations of the hot paths. The writer's publish and the reader's copy-and-decode
of a run also exist in C (``_ring_native.c``, built at install), used whenever the module
is importable: CPython's per-record overhead (a Python frame, attribute loads, four C
calls to publish; a GC-tracked tuple per decoded record, which makes every collection
during a large poll walk all of them) held the ring to about 10x ``multiprocessing.Queue``.
The Python code here is the reference: both implementations write the same bytes and
return the same records (tested against each other), and ``native=False`` selects this
one. :func:`implementation` says which one a process runs, for its start-up line.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import repeat
from pathlib import Path
from typing import Final, NamedTuple

from mxrc.rt.shm import (
    DEFAULT_DIRECTORY,
    Region,
    Segment,
    SegmentKind,
    SegmentLayout,
    align_up,
    attach_segment,
    create_segment,
)

RING_LAYOUT_VERSION: Final = 1
_TRACE_WORDS: Final = struct.Struct(">QQ")
_SPAN_WORD: Final = struct.Struct(">Q")
CONTROL_SIZE: Final = 64  # the head counter's cache line
SLOT_HEADER_SIZE: Final = 64
MAX_RUNS_PER_POLL: Final = 64
# Records copied per run: 32 KiB at the default record size, small enough for the copy
# to come from the allocator's heap instead of a fresh (page-faulting) mmap.
MAX_RUN_RECORDS: Final = 256
TRACE_ID_SIZE: Final = 16
SPAN_ID_SIZE: Final = 8
_ZERO_TRACE_ID: Final = bytes(TRACE_ID_SIZE)
_ZERO_SPAN_ID: Final = bytes(SPAN_ID_SIZE)

NATIVE_SOURCE: Final = Path(__file__).with_name("_ring_native.c")


def stale_native(built_from: str, source: Path = NATIVE_SOURCE) -> str | None:
    """Why a C module built from ``built_from`` (its source's SHA-256) must not be used
    with the ``source`` beside it, or None. After an edit of the C file a source tree
    still holds the module built before it, which may speak an older slot protocol: the
    Python ring, which is always the current one, is used until it is rebuilt."""
    try:
        current = hashlib.sha256(source.read_bytes()).hexdigest()
    except FileNotFoundError:  # an install without the source: nothing to compare
        return None
    if built_from == current:
        return None
    return (f"the C module was built from another version of {source.name} than the one "
            "beside it; rebuild it with tools/setup (or pip install -e .)")


_NativeWriter: type[_ring_native.Writer] | None = None
_native_read_run: Callable[..., tuple[int, int, int]] | None = None
try:
    from mxrc.rt import _ring_native
except ImportError as exc:  # installed with MXRC_PURE_PYTHON=1, or a source tree not built
    NATIVE_MISSING: str | None = str(exc)
else:
    NATIVE_MISSING = stale_native(_ring_native.SOURCE_SHA256)
    if NATIVE_MISSING is None:
        _NativeWriter, _native_read_run = _ring_native.Writer, _ring_native.read_run


def implementation() -> str:
    """Which hot paths this process runs: ``native``, or ``python`` and why."""
    return "native" if NATIVE_MISSING is None else f"python ({NATIVE_MISSING})"


def _use_native(native: bool | None) -> bool:
    """``None``: native when built. ``True`` insists (and says why it cannot)."""
    if native is False:
        return False
    if NATIVE_MISSING is not None and native:
        raise RuntimeError(f"the ring's native module is not available: {NATIVE_MISSING}")
    return NATIVE_MISSING is None


def _fields_format(payload_size: int) -> str:
    # Everything after the seq word, in slot order (the seq word is never packed: it is
    # only ever written as one aligned 8-byte store).
    return f"<QHB5xQq{TRACE_ID_SIZE}s{SPAN_ID_SIZE}s{payload_size}s"


@dataclass(frozen=True)
class RingLayout:
    """Pure geometry of a ring: offsets and sizes, no memory involved."""

    capacity: int
    payload_size: int = 64

    def __post_init__(self) -> None:
        if self.capacity < 2 or self.capacity & (self.capacity - 1):
            raise ValueError(f"ring capacity must be a power of two ≥ 2, not {self.capacity}")
        if not 8 <= self.payload_size <= 4096 or self.payload_size % 8:
            raise ValueError(
                f"ring payload_size must be a multiple of 8 in 8..4096, not {self.payload_size}"
            )

    @property
    def record_size(self) -> int:
        return align_up(SLOT_HEADER_SIZE + self.payload_size)

    @property
    def body_size(self) -> int:
        # One spare cache line after the last slot: the reader's copy of a run reaches
        # 8 bytes past the slot it ends on.
        return CONTROL_SIZE + self.capacity * self.record_size + CONTROL_SIZE

    @property
    def fields_format(self) -> str:
        """What the writer packs at slot offset 8 (index .. payload)."""
        return _fields_format(self.payload_size)

    @property
    def row_format(self) -> str:
        """What the reader unpacks per record from a run copied starting at the first
        slot's offset 8: the fields, the slot's padding, and the next slot's sequence
        word (so rows are exactly ``record_size`` apart)."""
        pad = self.record_size - SLOT_HEADER_SIZE - self.payload_size + 8
        return f"{self.fields_format}{pad}x"

    @property
    def layout_hash(self) -> int:
        """Identifies the record format, so a peer built with another one is refused
        even when the sizes happen to agree."""
        text = f"mxrc-ring/{RING_LAYOUT_VERSION}/{self.fields_format}/{self.record_size}"
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")

    def slot_offset(self, index: int) -> int:
        """Offset of record ``index``'s slot from the start of the body."""
        return CONTROL_SIZE + (index & (self.capacity - 1)) * self.record_size

    def segment_layout(self) -> SegmentLayout:
        return SegmentLayout(
            kind=SegmentKind.RING,
            version=RING_LAYOUT_VERSION,
            record_size=self.record_size,
            capacity=self.capacity,
            layout_hash=self.layout_hash,
            body_size=self.body_size,
            hash_name="record_format_hash",
        )


# --- the protocol, as pure functions (the hot paths inline the common case) -----------


def seq_writing(index: int) -> int:
    """Slot sequence word while record ``index`` is being written (odd)."""
    return 2 * index + 1


def seq_complete(index: int) -> int:
    """Slot sequence word once record ``index`` is complete (even, never 0)."""
    return 2 * index + 2


class SlotState(Enum):
    READY = "ready"  # both loads saw record index complete: the copy is consistent
    NOT_YET = "not_yet"  # record index has not been completed (yet)
    OVERWRITTEN = "overwritten"  # a later record took (or is taking) the slot


def classify_slot(index: int, before: int, after: int) -> SlotState:
    """Decide what a reader's copy of record ``index`` is worth, from the slot's sequence
    word loaded before and after copying the fields."""
    want = seq_complete(index)
    if before == want and after == want:
        return SlotState.READY
    if before < want and after <= want:
        return SlotState.NOT_YET
    return SlotState.OVERWRITTEN


def lap_slack(capacity: int) -> int:
    """How far ahead of the oldest retained record a lapped reader resumes.

    Resuming exactly at ``head - capacity`` would start on the slot the writer is about
    to overwrite, and a reader slower than the writer could chase it record by record;
    skipping a sixteenth of the ring gets it clear in one step. Those records count as
    dropped too (the reader never delivers them), so the count stays exact.
    """
    return max(1, capacity // 16)


def lap_skip(next_index: int, head: int, capacity: int) -> tuple[int, int]:
    """Where a reader at ``next_index`` resumes given the writer's ``head``, and how many
    records it drops: none unless records before ``head - capacity`` (overwritten) are
    still ahead of it."""
    if next_index >= head - capacity:
        return next_index, 0
    resume = head - capacity + lap_slack(capacity)
    return resume, resume - next_index


def resync_after_overwrite(index: int, head: int, capacity: int) -> tuple[int, int]:
    """Record ``index`` was found overwritten mid-poll (``head`` re-read after the
    discovery): it is lost, and the reader resumes clear of the writer."""
    resume = max(index + 1, head - capacity + lap_slack(capacity))
    return resume, resume - index


_new_tuple = tuple.__new__  # builds a Record from a decoded row without a Python call

# --- trace context and records ----------------------------------------------------------


class TraceContext(NamedTuple):
    """W3C trace context carried by every record, so a telemetry sample can be joined to
    the command (and its log record) that caused it."""

    trace_id: bytes = _ZERO_TRACE_ID
    span_id: bytes = _ZERO_SPAN_ID
    flags: int = 0

    @classmethod
    def from_traceparent(cls, header: str) -> TraceContext:
        parts = header.strip().split("-")
        if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16:
            raise ValueError(f"not a W3C traceparent: {header!r}")
        return cls(bytes.fromhex(parts[1]), bytes.fromhex(parts[2]), int(parts[3], 16))

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{self.flags:02x}"


class Record(NamedTuple):
    """One decoded ring record. ``seq`` numbers records from 0 since the ring was
    created (the reader checks it against the slot's sequence word)."""

    seq: int
    rtype: int
    trace_flags: int
    cycle: int
    t_ns: int
    trace_id: bytes
    span_id: bytes
    payload: bytes

    @property
    def trace(self) -> TraceContext:
        return TraceContext(self.trace_id, self.span_id, self.trace_flags)

    def f64(self) -> tuple[float, ...]:
        """The payload read as little-endian float64 values."""
        return struct.unpack(f"<{len(self.payload) // 8}d", self.payload)


# --- writer and reader over a region ------------------------------------------------------


class _SlotView:
    """Where the head counter and the slots are, resolved once into plain attributes so
    the hot paths of writer and reader do no lookups through the layout."""

    def __init__(self, region: Region, layout: RingLayout) -> None:
        self.layout = layout
        self._buf = region.buf
        self._q = region.u64()
        base = region.body_offset
        self._head_word = base // 8
        self._slots = base + CONTROL_SIZE
        self._mask = layout.capacity - 1
        self._rs = layout.record_size


class RingWriter(_SlotView):
    """The single producer. Exactly one writer per ring (the cycle thread).

    A restarted writer resumes at the published ``head``: a record its predecessor was
    killed in the middle of is simply rewritten (readers never saw it: ``head`` had not
    moved past it and its slot was odd).

    :attr:`publish` is the native writer's method when the C module is built (and
    ``native`` is not ``False``), else :meth:`publish_python`; both write the same bytes.
    """

    def __init__(self, region: Region, layout: RingLayout, *, native: bool | None = None) -> None:
        super().__init__(region, layout)
        self._pack = struct.Struct(layout.fields_format).pack_into
        self._payload = bytearray(layout.payload_size)
        #: Staging area for the next record's payload; fill it in place (no allocation).
        self.payload = memoryview(self._payload)
        #: The same staging area as float64 values: ``writer.payload_f64[i] = x``.
        self.payload_f64 = self.payload.cast("d")
        # Updated in place (set_trace_words), so a new trace context costs no allocation.
        self._trace_id = bytearray(TRACE_ID_SIZE)
        self._span_id = bytearray(SPAN_ID_SIZE)
        self._trace_flags = 0
        self._pack_trace = _TRACE_WORDS.pack_into
        self._pack_span = _SPAN_WORD.pack_into
        self._next: int = self._q[self._head_word]
        self._native: _ring_native.Writer | None = None
        #: Write one record from the staged payload and trace; returns its index.
        self.publish: Callable[[int, int, int], int] = self.publish_python
        if _use_native(native):
            assert _NativeWriter is not None  # _use_native said so
            self._native = _NativeWriter(
                self._q,
                self._slots,
                self._head_word * 8,
                layout.capacity,
                self._rs,
                self._payload,
                self._trace_id,
                self._span_id,
                self._next,
            )
            self.publish = self._native.publish

    @property
    def native(self) -> bool:
        """Whether :attr:`publish` is the C implementation."""
        return self._native is not None

    @property
    def published(self) -> int:
        """Records published so far (the index the next record gets)."""
        return self._next if self._native is None else self._native.next

    def set_trace(self, trace: TraceContext) -> None:
        """Trace context for the records that follow (it changes per command/span, not
        per cycle, so it is set once instead of passed on every publish)."""
        if len(trace.trace_id) != TRACE_ID_SIZE or len(trace.span_id) != SPAN_ID_SIZE:
            raise ValueError("trace_id must be 16 bytes and span_id 8 bytes")
        if not 0 <= trace.flags <= 0xFF:
            raise ValueError(f"trace flags must fit a byte, not {trace.flags}")
        self._trace_id[:] = trace.trace_id
        self._span_id[:] = trace.span_id
        self._set_flags(trace.flags)

    def _set_flags(self, flags: int) -> None:
        self._trace_flags = flags
        if self._native is not None:
            self._native.flags = flags

    def set_trace_words(self, trace_hi: int, trace_lo: int, span_id: int, flags: int) -> None:
        """:meth:`set_trace` from the control block's words (big-endian halves of the
        W3C ids), in place: the cycle calls it on the cycle thread."""
        self._pack_trace(self._trace_id, 0, trace_hi, trace_lo)
        self._pack_span(self._span_id, 0, span_id)
        self._set_flags(flags & 0xFF)

    def publish_python(self, rtype: int, cycle: int, t_ns: int) -> int:
        """:attr:`publish` in Python (the reference for the C one).

        The cycle's hot path: four C calls, no allocation beyond transient ints (see the
        module docstring). Never blocks, whatever the readers do. A field out of range
        (``rtype`` beyond u16...) raises ``struct.error`` with nothing published: the
        slot is left odd, and the next publish rewrites it. (The C writer raises
        ``OverflowError`` before touching the slot.)
        """
        n = self._next
        off = self._slots + (n & self._mask) * self._rs
        q = self._q
        word = off >> 3
        q[word] = n + n + 1
        self._pack(
            self._buf,
            off + 8,
            n,
            rtype,
            self._trace_flags,
            cycle,
            t_ns,
            self._trace_id,
            self._span_id,
            self._payload,
        )
        q[word] = n + n + 2
        following = n + 1
        self._next = following
        q[self._head_word] = following
        return n

    def write(
        self,
        rtype: int,
        cycle: int,
        t_ns: int,
        payload: bytes | bytearray | Sequence[float] = b"",
        trace: TraceContext | None = None,
    ) -> int:
        """Stage ``payload`` (bytes, zero-padded; or floats) and ``trace``, then publish.

        Convenient and allocating: for tests, tools and non-cycle code.
        """
        if trace is not None:
            self.set_trace(trace)
        if isinstance(payload, bytes | bytearray):
            if len(payload) > len(self._payload):
                raise ValueError(
                    f"payload of {len(payload)} bytes exceeds payload_size {len(self._payload)}"
                )
            self._payload[: len(payload)] = payload
            self._payload[len(payload) :] = bytes(len(self._payload) - len(payload))
        else:
            values = self.payload_f64
            if len(payload) > len(values):
                raise ValueError(f"{len(payload)} values exceed the payload's {len(values)}")
            for i in range(len(values)):
                values[i] = float(payload[i]) if i < len(payload) else 0.0
        return self.publish(rtype, cycle, t_ns)


class RingReader(_SlotView):
    """A non-blocking consumer for nonrt: :meth:`poll` returns what is there, now.

    Readers write nothing to the ring, so any number may read one ring, and a reader can
    never slow the writer down; the price is that a slow reader loses records, which it
    counts exactly in :attr:`dropped`.

    Reads are batched by runs of contiguous slots. The C reader loads each slot's sequence
    word, copies the slot, loads the word again, and decodes it if both were as expected.
    The Python one, to make as few calls as it can, loads every slot's
    sequence word (one C call), copies the whole run (one ``memcpy``), loads the words
    again and decodes with ``iter_unpack``. Loads stay in program order on x86-64, so
    each slot's before/after pair brackets its copy exactly as in the one-record
    protocol; a run whose words are all as expected is accepted in one list comparison,
    otherwise slots are judged one by one with :func:`classify_slot`.
    """

    def __init__(
        self,
        region: Region,
        layout: RingLayout,
        *,
        from_oldest: bool = True,
        native: bool | None = None,
    ) -> None:
        """``from_oldest``: start with the oldest retained record (a restarted consumer
        sees recent history) instead of with the next one to be published. The oldest
        :func:`lap_slack` slots are left out, as the writer is about to overwrite them.
        Records gone before the reader started are not counted as dropped. ``native``:
        as for :class:`RingWriter` (the C reader checks each slot as it copies it)."""
        super().__init__(region, layout)
        self.native = _use_native(native)
        self._row = struct.Struct(layout.row_format)
        head: int = self._q[self._head_word]
        oldest = head - layout.capacity + lap_slack(layout.capacity)
        self._next = max(0, oldest) if from_oldest else head
        #: Records lost because the writer lapped this reader (exact).
        self.dropped = 0
        #: Times the reader found itself lapped (before a poll or during one).
        self.laps = 0
        #: Records returned by :meth:`poll` so far.
        self.received = 0

    @property
    def position(self) -> int:
        """Index of the next record this reader will return (or count as dropped)."""
        return self._next

    def available(self) -> int:
        """Records published but not yet consumed (may exceed what is still retained)."""
        head: int = self._q[self._head_word]
        return head - self._next

    def poll(self, max_records: int = 4096) -> list[Record]:
        """Up to ``max_records`` complete records in order; never waits.

        Increments :attr:`dropped` by every record skipped because the writer lapped
        this reader (before or during the poll). Bounded work: at most
        :data:`MAX_RUNS_PER_POLL` contiguous runs are read, so a writer that keeps
        lapping a slow reader cannot keep a poll going.
        """
        capacity = self.layout.capacity
        out: list[Record] = []
        n = self._next
        for _run in range(MAX_RUNS_PER_POLL):
            head: int = self._q[self._head_word]
            n, lost = lap_skip(n, head, capacity)
            if lost:
                self.dropped += lost
                self.laps += 1
            if n >= head or len(out) >= max_records:
                break
            run = min(
                head - n, max_records - len(out), capacity - (n & self._mask), MAX_RUN_RECORDS
            )
            n, stop = self._read_run(n, run, out)
            if stop:
                break
        self.received += len(out)
        self._next = n
        return out

    def _read_run(self, n: int, count: int, out: list[Record]) -> tuple[int, bool]:
        """Read records ``n .. n+count-1`` (contiguous slots); returns where to resume
        and whether to stop this poll."""
        if self.native:
            assert _native_read_run is not None  # _use_native said so
            ready, before, after = _native_read_run(
                self._q,
                self._slots,
                self._rs,
                self.layout.capacity,
                self.layout.payload_size,
                n,
                count,
                out,
                Record,
            )
            if ready == count:
                return n + count, False
            return self._stopped_at(n + ready, before, after)
        return self._read_run_python(n, count, out)

    def _read_run_python(self, n: int, count: int, out: list[Record]) -> tuple[int, bool]:
        stride = self._rs >> 3
        first_word = (self._slots >> 3) + (n & self._mask) * stride
        words = self._q[first_word : first_word + count * stride : stride]
        try:
            before = words.tolist()
            start = self._slots + (n & self._mask) * self._rs + 8
            block = self._buf[start : start + count * self._rs]
            after = words.tolist()
        finally:
            words.release()
        expected = list(range(n + n + 2, 2 * (n + count) + 2, 2))
        if before == expected and after == expected:  # the common case, all in C
            out.extend(map(_new_tuple, repeat(Record, count), self._row.iter_unpack(block)))
            return n + count, False
        rows = [_new_tuple(Record, row) for row in self._row.iter_unpack(block)]
        for i in range(count):
            if classify_slot(n + i, before[i], after[i]) is SlotState.READY:
                out.append(rows[i])
                continue
            return self._stopped_at(n + i, before[i], after[i])
        return n + count, False  # pragma: no cover - some slot differed from expected

    def _stopped_at(self, index: int, before: int, after: int) -> tuple[int, bool]:
        """Record ``index`` was not complete across its copy: wait for it, or count it
        (and what the writer is about to take) as lost and resume clear of the writer."""
        if classify_slot(index, before, after) is SlotState.NOT_YET:
            return index, True  # cannot happen below head; be conservative
        head: int = self._q[self._head_word]
        resume, lost = resync_after_overwrite(index, head, self.layout.capacity)
        self.dropped += lost
        self.laps += 1
        return resume, False


# --- segments --------------------------------------------------------------------------


class Ring:
    """A ring in a shared-memory segment: create (or attach), then take a writer or
    readers from it; closing unmaps (and unlinks, for the creator)."""

    def __init__(self, segment: Segment, layout: RingLayout) -> None:
        self.segment = segment
        self.layout = layout

    @classmethod
    def create(
        cls,
        name: str,
        layout: RingLayout,
        *,
        directory: Path = DEFAULT_DIRECTORY,
        allow_weak_memory_order: bool = False,
    ) -> Ring:
        segment = create_segment(
            name,
            layout.segment_layout(),
            directory=directory,
            allow_weak_memory_order=allow_weak_memory_order,
        )
        return cls(segment, layout)

    @classmethod
    def attach(
        cls,
        name: str,
        layout: RingLayout,
        *,
        directory: Path = DEFAULT_DIRECTORY,
        wait_s: float = 0.0,
        allow_weak_memory_order: bool = False,
    ) -> Ring:
        segment = attach_segment(
            name,
            layout.segment_layout(),
            directory=directory,
            wait_s=wait_s,
            allow_weak_memory_order=allow_weak_memory_order,
        )
        return cls(segment, layout)

    def writer(self, *, native: bool | None = None) -> RingWriter:
        return RingWriter(self.segment, self.layout, native=native)

    def reader(self, *, from_oldest: bool = True, native: bool | None = None) -> RingReader:
        return RingReader(self.segment, self.layout, from_oldest=from_oldest, native=native)

    def close(self) -> None:
        self.segment.close()

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
