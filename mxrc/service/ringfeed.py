"""The RT process's ring as bus events.

The ring is the only way the cycle talks (it may never block, so it cannot call
anything), and its records are raw: a type number, a cycle number, a CLOCK_MONOTONIC
time, a trace context and eight float64 words. :func:`decode` gives each record kind its
meaning once, as a pure function, so the controller, metrics and health read named
fields and never payload indices. :class:`RingFeed` drains the ring on the event loop
and adds the two facts no single record carries: records lost because nonrt fell a lap
behind (:class:`RingDrops`), and the RT process having gone quiet (:class:`RtLost`).

Reading never affects the writer (see :mod:`mxrc.rt.ring`), so a slow or stalled loop
costs records, counted exactly, never a cycle.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Final

from mxrc.rt.process import (
    FAULT_CAUSE,
    FAULT_EXPECTED_TOKEN,
    FAULT_LEASE_LEFT_NS,
    FAULT_MODE,
    FAULT_TOKEN,
    MODE_ACTED_NS,
    MODE_DRIVING,
    MODE_NEW,
    MODE_PREVIOUS,
    MODE_SLOT,
    MODE_TOKEN,
    STATUS_DRIVING,
    STATUS_JOINT_POSITION,
    STATUS_MISSES,
    STATUS_SLOT,
    STATUS_TRACKING_ERROR,
    STATUS_WAKE_P99_US,
    STOPPED_CYCLES,
    STOPPED_MISSES,
    STOPPED_WAS_DRIVING,
    FaultCause,
    RecordType,
)
from mxrc.rt.ring import Record, RingReader
from mxrc.service.events import (
    WAKE_BUCKETS_NS,
    BusEvent,
    CycleHistogram,
    CycleStatus,
    RingDrops,
    RtFault,
    RtLost,
    RtModeApplied,
    RtStarted,
    RtStopped,
)

#: Record type of the cumulative wake-up latency histogram the cycle publishes right
#: after each CYCLE_STATUS. The RT side's ``RecordType.CYCLE_HISTOGRAM`` when it declares
#: one; 5 (its value there) otherwise.
CYCLE_HISTOGRAM: Final = int(getattr(RecordType, "CYCLE_HISTOGRAM", 5))

# STARTED payload words (float64): the CPU the cycle runs on, its SCHED_FIFO priority
# (0 when it could not get one), the period in ns — in the order the RT side documents.
STARTED_CPU, STARTED_PRIORITY, STARTED_PERIOD_NS = 0, 1, 2

_ZERO_TRACE: Final = bytes(16)

#: Ring polls per :meth:`RingFeed.poll`, of up to :data:`POLL_RECORDS` each. One is
#: normally enough; the bound keeps a writer that outruns the loop from holding it.
MAX_POLLS: Final = 4
POLL_RECORDS: Final = 4096


def _int(value: float) -> int:
    """A payload word that holds an integer. NaN or ±inf in one is a broken record, not a
    number to guess at: ``ValueError``, which :func:`decode` turns into "undecodable"."""
    if not math.isfinite(value):
        raise ValueError(f"non-finite integer word {value!r}")
    return int(value)


def _traceparent(record: Record) -> str | None:
    """The W3C traceparent of the command behind this record, or None when the cycle
    had no trace context (an all-zero trace id is "no trace" in W3C terms)."""
    if record.trace_id == _ZERO_TRACE:
        return None
    return record.trace.traceparent


#: RT fault causes that are the cycle obeying nonrt (it left RUNNING), not a fault.
EXPECTED_RT_CAUSES: Final = frozenset({"mode_left_running"})


def fault_cause_name(cause: int) -> str:
    """``FaultCause`` as the name the log and metrics use (``lease_expired``); a cause
    this build does not know keeps its number, so it is still visible."""
    try:
        return FaultCause(cause).name.lower()
    except ValueError:
        return f"cause_{cause}"


def _status(record: Record, p: tuple[float, ...]) -> BusEvent | None:
    return CycleStatus(
        cycle=record.cycle,
        slot=_int(p[STATUS_SLOT]),
        mono_ns=record.t_ns,
        wake_p99_us=p[STATUS_WAKE_P99_US],
        misses=_int(p[STATUS_MISSES]),
        tracking_error=p[STATUS_TRACKING_ERROR],
        driving=p[STATUS_DRIVING] >= 0.5,
        joint_position=p[STATUS_JOINT_POSITION],
        traceparent=_traceparent(record),
    )


def _histogram(record: Record, p: tuple[float, ...]) -> BusEvent | None:
    n = len(WAKE_BUCKETS_NS)
    if len(p) < n + 2:
        return None
    return CycleHistogram(
        cycle=record.cycle,
        mono_ns=record.t_ns,
        bounds_ns=WAKE_BUCKETS_NS,
        counts=tuple(_int(v) for v in p[:n]),
        total=_int(p[n]),
        sum_ns=p[n + 1],
    )


def _fault(record: Record, p: tuple[float, ...]) -> BusEvent | None:
    return RtFault(
        cycle=record.cycle,
        mono_ns=record.t_ns,
        cause=fault_cause_name(_int(p[FAULT_CAUSE])),
        mode=_int(p[FAULT_MODE]),
        token=_int(p[FAULT_TOKEN]),
        lease_left_ns=_int(p[FAULT_LEASE_LEFT_NS]),
        expected_token=_int(p[FAULT_EXPECTED_TOKEN]),
        traceparent=_traceparent(record),
    )


def _mode_applied(record: Record, p: tuple[float, ...]) -> BusEvent | None:
    return RtModeApplied(
        cycle=record.cycle,
        mono_ns=record.t_ns,
        slot=_int(p[MODE_SLOT]),
        mode=_int(p[MODE_NEW]),
        previous_mode=_int(p[MODE_PREVIOUS]),
        driving=p[MODE_DRIVING] >= 0.5,
        token=_int(p[MODE_TOKEN]),
        acted_ns=_int(p[MODE_ACTED_NS]),
        traceparent=_traceparent(record),
    )


def _started(record: Record, p: tuple[float, ...]) -> BusEvent | None:
    return RtStarted(
        cycle=record.cycle,
        mono_ns=record.t_ns,
        cpu=_int(p[STARTED_CPU]),
        priority=_int(p[STARTED_PRIORITY]),
        period_ns=_int(p[STARTED_PERIOD_NS]),
    )


def _stopped(record: Record, p: tuple[float, ...]) -> BusEvent | None:
    return RtStopped(
        cycle=record.cycle,
        mono_ns=record.t_ns,
        was_driving=p[STOPPED_WAS_DRIVING] >= 0.5,
        misses=_int(p[STOPPED_MISSES]),
        cycles=_int(p[STOPPED_CYCLES]),
    )


_DECODERS: Final[dict[int, Callable[[Record, tuple[float, ...]], BusEvent | None]]] = {
    RecordType.STARTED: _started,
    RecordType.CYCLE_STATUS: _status,
    RecordType.FAULT: _fault,
    RecordType.STOPPED: _stopped,
    CYCLE_HISTOGRAM: _histogram,
    RecordType.MODE_APPLIED: _mode_applied,
}


def decode(record: Record) -> BusEvent | None:
    """The bus event a ring record stands for; None for a type this build does not know
    (a newer RT process) or a record whose integer words are not numbers.

    Pure: the same record always gives the same event, so a replayed or duplicated
    record can be reasoned about without the feed's state.
    """
    decoder = _DECODERS.get(record.rtype)
    if decoder is None:
        return None
    try:
        return decoder(record, record.f64())
    except (ValueError, OverflowError, IndexError):
        return None


class RingFeed:
    """Drains one :class:`RingReader` into ``publish`` and watches for silence.

    Figures (read at any time, e.g. by health checks): ``records`` read so far,
    ``last_record_ns`` (``clock()`` when records last arrived, None before the first),
    ``dropped`` (records the writer overwrote before they were read, exact),
    ``unknown`` (records of a type this build does not know) and ``malformed``
    (records of a known type that did not decode).

    Silence: :meth:`check_silence` returns one :class:`RtLost` when nothing arrived for
    ``silence_s`` — counted from the last record, or from when ``expect_rt`` was set if
    nothing arrived yet — and is re-armed by the next record. It is a separate call, not
    part of :meth:`poll`, so whoever acts on a lost RT process decides when to look (and
    publishes the event itself). After a STOPPED record the quiet is expected and is not
    reported, unless ``expect_rt`` says the RT process should be back.
    """

    def __init__(
        self,
        reader: RingReader,
        publish: Callable[[BusEvent], None],
        *,
        silence_s: float,
        clock: Callable[[], int] = time.monotonic_ns,
        expect_rt: bool = False,
    ) -> None:
        if not silence_s > 0:
            raise ValueError(f"silence_s must be > 0, not {silence_s!r}")
        self.reader = reader
        self.publish = publish
        self.silence_s = silence_s
        self._silence_ns = round(silence_s * 1e9)
        self.clock = clock
        self.records = 0
        self.last_record_ns: int | None = None
        self.unknown = 0
        self.malformed = 0
        self._dropped_seen = reader.dropped
        self._expect_since: int | None = None
        self._stopped = False  # the last record was STOPPED: the quiet is a clean stop
        self._lost = False  # RtLost returned; nothing more until records flow again
        self.expect_rt = expect_rt

    @property
    def expect_rt(self) -> bool:
        """Whether the RT process should be running even before (or after) it said so."""
        return self._expect_since is not None

    @expect_rt.setter
    def expect_rt(self, value: bool) -> None:
        if value and self._expect_since is None:
            self._expect_since = self.clock()
        elif not value:
            self._expect_since = None

    @property
    def dropped(self) -> int:
        return self.reader.dropped

    def poll(self) -> int:
        """Publish what the ring holds now; how many records were read. Never waits."""
        reader = self.reader
        publish = self.publish
        count = 0
        for _ in range(MAX_POLLS):
            batch = reader.poll(POLL_RECORDS)
            dropped = reader.dropped
            if dropped > self._dropped_seen:
                # Before the batch: the lost records were older than what follows them.
                publish(RingDrops(self.clock(), dropped - self._dropped_seen, dropped))
                self._dropped_seen = dropped
            for record in batch:
                event = decode(record)
                if event is None:
                    if record.rtype in _DECODERS:
                        self.malformed += 1
                    else:
                        self.unknown += 1
                    continue
                publish(event)
            if batch:
                count += len(batch)
                self._stopped = batch[-1].rtype == RecordType.STOPPED
            if len(batch) < POLL_RECORDS:
                break
        if count:
            self.records += count
            self.last_record_ns = self.clock()
            self._lost = False
        return count

    def check_silence(self, now_ns: int) -> RtLost | None:
        """One :class:`RtLost` per silence (see the class docstring), else None."""
        if self._lost:
            return None
        last, expected = self.last_record_ns, self._expect_since
        if last is None:
            since = expected  # nothing yet: only silent if the RT process is expected
        elif self._stopped:
            since = None if expected is None else max(last, expected)
        else:
            since = last
        if since is None:
            return None
        quiet = now_ns - since
        if quiet < self._silence_ns:
            return None
        self._lost = True
        return RtLost(mono_ns=now_ns, silence_s=quiet / 1e9)

    async def run(self, interval_s: float) -> None:
        """Poll every ``interval_s`` until cancelled."""
        while True:
            self.poll()
            await asyncio.sleep(interval_s)
